"""What the exported encoders share (``onnx-int8``/``onnx-fp32``: :mod:`env.onnx_embedder`;
``torch`` served from a TorchScript trace: :mod:`env.traced_embedder`): the export of an SBERT
model's transformer from its local files, and the sentence-transformers pipeline around it
(tokenisation, pooling, L2 normalisation) without importing sentence-transformers or transformers.

An export directory holds the exported network, the tokenizer (``tokenizer.json`` and its config)
and ``export.json`` (:data:`META_FILE`: pooling, width, ``max_seq_length``, lower-casing, inputs).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import UserError
from env.model_cache import slug

#: The export's description, written last (its presence marks a complete export).
META_FILE = "export.json"
#: The transformer's inputs, in the order of the exported network's arguments.
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def export_name(model_id: str, label: str, files_hash: str) -> str:
    """Directory name of an export: ``<model>-<label>-<hash>`` (label: ``int8-b16``, ``fp32``, ``torchscript``)."""
    return f"{slug(model_id)}-{label}-{files_hash[:16]}"


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def pooling_config(model_path: Path) -> tuple[str, int]:
    """``(mode, dim)`` of the model's Pooling module (``mean`` or ``cls``).

    Raises:
        UserError: the model is not a Transformer followed by a mean or CLS Pooling.
    """
    try:
        modules = read_json(model_path / "modules.json")
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        pooling = next(m for m in modules if m["type"].endswith("Pooling"))
        config = read_json(model_path / pooling["path"] / "config.json")
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        raise UserError(f"{model_path}: not a sentence-transformers model an exported encoder runs ({exc})") from None
    if kinds[:2] != ["Transformer", "Pooling"] or any(k not in ("Transformer", "Pooling", "Normalize") for k in kinds):
        raise UserError(f"{model_path}: an exported encoder runs Transformer, Pooling (and Normalize) models, "
                        f"not {' -> '.join(kinds)}")
    if isinstance(config.get("pooling_mode"), str):  # newer configs name the mode
        modes = [config["pooling_mode"].lower().removesuffix("_token").removesuffix("_tokens")]
    else:
        modes = [key.removeprefix("pooling_mode_").removesuffix("_token").removesuffix("_tokens")
                 for key, on in config.items() if key.startswith("pooling_mode_") and on is True]
    if modes not in (["mean"], ["cls"]):
        raise UserError(f"{model_path}: an exported encoder pools by mean or CLS token, not {modes}")
    return modes[0], int(config["word_embedding_dimension"])


def transformer_for_export(model_path: Path) -> tuple[Any, Any, tuple[Any, ...], dict[str, Any]]:
    """Load the model with sentence-transformers and wrap its transformer for tracing.

    Returns:
        ``(network, sentence_model, inputs, meta)``: a ``torch.nn.Module`` of
        ``(input_ids, attention_mask, token_type_ids)`` (int64 ``[B, L]`` each) to
        ``last_hidden_state`` (float32 ``[B, L, D]``); the loaded ``SentenceTransformer`` (its
        tokenizer is saved beside the export); example inputs of two prompts of different lengths
        (so the padding mask is traced); and the ``export.json`` content.

    Raises:
        UserError: the model is not a Transformer followed by a mean or CLS Pooling.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    mode, dim = pooling_config(model_path)
    st = SentenceTransformer(str(model_path), device="cpu")
    transformer = st[0]
    auto_model = transformer.auto_model.eval()

    class _LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = auto_model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
            return self.network(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state

    sample = st.tokenizer(["an example prompt", "a second, longer example prompt to embed"], padding=True,
                          return_tensors="pt")
    inputs = tuple(sample[n] if n in sample else torch.zeros_like(sample["input_ids"]) for n in INPUT_NAMES)
    meta = {"pooling": mode, "dim": dim, "max_seq_length": int(st.max_seq_length),
            "do_lower_case": bool(getattr(transformer, "do_lower_case", False)),
            "inputs": [n for n in INPUT_NAMES if n in sample]}
    return _LastHiddenState().eval(), st, inputs, meta


class ExportedSentenceEncoder:
    """An exported transformer with a sentence-transformers-like :meth:`encode`: the model's own
    tokenizer (read by the tokenizers library alone: importing transformers for AutoTokenizer took
    seconds of every start, and tokenised the same), its ``max_seq_length``, mean or CLS pooling.

    Subclasses run the network: :meth:`_hidden` ``(feed) -> last_hidden_state [B, L, D]``.

    Args:
        directory: an export (:data:`META_FILE`, ``tokenizer.json``, ``tokenizer_config.json``).
    """

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer

        self.directory = directory
        self.meta = read_json(directory / META_FILE)
        self.max_seq_length = int(self.meta["max_seq_length"])
        self._inputs = list(self.meta["inputs"])
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_seq_length, strategy="longest_first")
        pad = str(read_json(directory / "tokenizer_config.json").get("pad_token") or "[PAD]")
        pad_id = self.tokenizer.token_to_id(pad)
        self.tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token=pad)

    def get_embedding_dimension(self) -> int:
        return int(self.meta["dim"])

    def _hidden(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """``[B, L, D]`` float32 ``last_hidden_state`` for ``feed`` (int64 ``[B, L]`` of every
        name in :data:`INPUT_NAMES`)."""
        raise NotImplementedError

    def _forward(self, texts: list[str]) -> np.ndarray:
        if self.meta["do_lower_case"]:
            texts = [t.lower() for t in texts]
        encodings = self.tokenizer.encode_batch(texts)
        features = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
                    "token_type_ids": [e.type_ids for e in encodings]}
        feed = {name: np.asarray(features[name], dtype=np.int64) for name in self._inputs}
        if "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        hidden = self._hidden(feed)
        if self.meta["pooling"] == "cls":
            return hidden[:, 0]
        mask = feed["attention_mask"][..., None].astype(np.float32)
        return (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)

    def encode(self, sentences: Sequence[str], batch_size: int = 32, normalize_embeddings: bool = False,
               convert_to_numpy: bool = True, show_progress_bar: bool = False, **_: Any) -> np.ndarray:
        """``[N, D]`` float32 embeddings, rows in the order given; longest texts first in passes of
        ``batch_size`` (as sentence-transformers does).

        The int8 kernels quantise each token's activations on their own, so a text's vector does
        not depend on the others in its pass (up to float rounding, as with torch).
        """
        texts = [str(s) for s in sentences]
        out = np.zeros((len(texts), self.get_embedding_dimension()), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            vectors = self._forward([texts[i] for i in rows]).astype(np.float32, copy=False)
            if normalize_embeddings:
                vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            out[rows] = vectors
        return out
