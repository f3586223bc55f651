"""Static embeddings of the bundled sentence model: ``ROUTER_ENCODER=static`` and ``embed.encoder: static``.

A static model is one vector per token of the model's vocabulary, distilled from the transformer
with ``model2vec`` (Tulkens and van Dongen 2024, "Model2Vec: fast state-of-the-art static
embeddings"): each token's output embedding. A prompt's embedding is the mean of its tokens'
vectors, L2-normalised: one lookup and a mean per token, about 0.1 ms a prompt on one CPU core
instead of a 6-layer transformer pass.

It is distilled on first use from the local model files (no download), in about 25 s on 2 cores,
and cached under ``static_dir`` in a directory named by the model, a hash of its files and the
distillation (written atomically, :func:`env.model_cache.ensure_built`). Its vectors are not the
transformer's: a policy is trained on the encoder it is served with (``policy.json``
``embedding.encoder``), and on the same distillation (``embedding.static_version``, one of
:data:`DISTILLATIONS`): a server distils the one its policy was trained on, so a policy trained
before a new distillation keeps its vectors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import UserError
from env.embedder import DEFAULT_MODEL, Embedder, resolve_model_path
from env.model_cache import cache_key, ensure_built, slug

#: What to install for the static encoder.
INSTALL_HINT = "pip install model2vec skeletoken"
#: model2vec's ``distill`` settings of each distillation, by version. Both keep the model's width (no
#: PCA). 1 weighted each token down by its estimated frequency (SIF, model2vec's default); 2 does
#: not, and kNN and MLP routers on its vectors gained about 0.01 on llmrouter-dc
#: (docs/evaluation.md#static-embeddings).
DISTILLATIONS: dict[int, dict[str, Any]] = {
    1: {"pca_dims": None, "sif_coefficient": 1e-4},
    2: {"pca_dims": None, "sif_coefficient": None},
}
#: The distillation new static policies are trained on.
DISTILL_VERSION = max(DISTILLATIONS)
_MARKER = "static.json"


def distillation(version: int) -> dict[str, Any]:
    """The settings of distillation ``version``.

    Raises:
        UserError: a version this release does not know (a policy from a newer agent-router).
    """
    if version not in DISTILLATIONS:
        raise UserError(f"static distillation {version} is not known to this agent-router (it knows "
                        f"{', '.join(map(str, DISTILLATIONS))}): upgrade it, or retrain the policy")
    return DISTILLATIONS[version]


def static_path(model_path: Path, model_id: str, static_dir: Path, version: int = DISTILL_VERSION) -> Path:
    """Where the static model of ``model_path`` is cached: ``<static_dir>/<model>-static-<hash>``."""
    settings = json.dumps(distillation(version))
    return static_dir / f"{slug(model_id)}-static-{cache_key(model_path, version, settings)[:16]}"


def _distill(model_path: Path, out: Path, version: int) -> None:
    try:
        from model2vec.distill import distill
    except ImportError as exc:
        raise UserError(f"the static encoder needs model2vec's distillation ({INSTALL_HINT}): {exc}") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = distillation(version)
    model = distill(model_name=str(model_path), **settings)
    model.save_pretrained(str(out))
    (out / _MARKER).write_text(json.dumps({"source": str(model_path), "settings": settings, "version": version}),
                               encoding="utf-8")


def load_static(path: Path) -> Any:
    """The ``model2vec.StaticModel`` of the directory :func:`_distill` wrote, read as model2vec's own
    loader reads a local model (``model.safetensors``: ``embeddings`` and, after vocabulary
    quantisation, ``weights`` and ``mapping``; ``tokenizer.json``; ``config.json``) but without its
    persistence module: that imports huggingface_hub's model-card machinery (0.4 s of a 3.4 s
    restart here), and falls back to downloading from the hub when the path is missing.

    Raises:
        OSError, ValueError: a file is missing or unreadable; ImportError: no model2vec.
    """
    from model2vec import StaticModel
    from model2vec.model import DEFAULT_MAX_LENGTH
    from safetensors import safe_open
    from tokenizers import Tokenizer

    with safe_open(str(path / "model.safetensors"), framework="numpy") as tensors:
        names = set(tensors.keys())
        vectors, weights, mapping = (tensors.get_tensor(name) if name in names else None
                                     for name in ("embeddings", "weights", "mapping"))
    if vectors is None:
        raise ValueError(f"{path / 'model.safetensors'} holds no embeddings")
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return StaticModel(vectors=vectors, tokenizer=Tokenizer.from_file(str(path / "tokenizer.json")), config=config,
                       normalize=bool(config.get("normalize", False)), weights=weights, token_mapping=mapping,
                       max_length=config.get("max_length", DEFAULT_MAX_LENGTH))


class StaticEmbedder(Embedder):
    """:class:`~env.embedder.Embedder` whose vectors come from a static model of ``model``.

    Args:
        model: the sentence model distilled (``all-MiniLM-L6-v2``, bundled, by default).
        cache_dir: the embedding cache's directory (vectors keyed ``<model>#static-<version>``); None:
            none.
        static_dir: where the distilled model is cached.
        batch_size: prompts per encode call.
        progress: show a progress bar on long encodes.
        version: the distillation (:data:`DISTILLATIONS`; None: the newest, :data:`DISTILL_VERSION`).

    Attributes:
        encoder: ``static``.
        version: the distillation.

    Raises:
        UserError: an unknown ``version``.
    """

    def __init__(self, model: str = DEFAULT_MODEL, cache_dir: str | Path | None = None,
                 static_dir: str | Path = Path("var/static"), batch_size: int = 64, progress: bool = True,
                 version: int | None = None) -> None:
        version = DISTILL_VERSION if version is None else version
        distillation(version)
        super().__init__(model=model, cache_dir=cache_dir, device="cpu", batch_size=batch_size, progress=progress)
        self.encoder = "static"
        self.version = version
        self.cache_key = f"{self.model_id}#static-{version}"
        self.static_dir = Path(static_dir)

    @property
    def model(self) -> Any:
        """The loaded ``model2vec.StaticModel`` (distilled on first use when not cached).

        Raises:
            UserError: model2vec is missing, or the model cannot be distilled or loaded.
        """
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    try:
                        import model2vec  # noqa: F401
                    except ImportError:
                        raise UserError(f"the static encoder needs model2vec ({INSTALL_HINT})") from None
                    model_path = Path(resolve_model_path(self.model_name))
                    path = ensure_built(static_path(model_path, self.model_id, self.static_dir, self.version),
                                        _MARKER, lambda tmp: _distill(model_path, tmp, self.version),
                                        f"the static embeddings of {self.model_id}")
                    try:
                        self._model = load_static(path)
                    except (OSError, ValueError) as exc:
                        raise UserError(f"cannot load the static model {path}: {exc}") from None
        return self._model

    @property
    def dim(self) -> int:
        return int(self.model.dim)

    def _encode_uncached(self, texts: Sequence[str]) -> np.ndarray:
        self.encode_calls += -(-len(texts) // self.batch_size)
        vecs = np.asarray(self.model.encode(list(texts), batch_size=self.batch_size, show_progress_bar=False,
                                            use_multiprocessing=False), dtype=np.float32)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.where(norms > 0, norms, 1.0)
