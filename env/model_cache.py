"""Derived model files cached on disk: the ONNX exports (:mod:`env.onnx_embedder`), the TorchScript
traces (:mod:`env.traced_embedder`) and the static embeddings (:mod:`env.static_embedder`) of a
local model, each in a directory named by the model and a hash of what it was made from, written
atomically so that a reader sees a whole one or none.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from contract.errors import UserError

logger = logging.getLogger(__name__)

#: A temporary directory older than this (s) was left by a process killed mid-build: removed.
STALE_S = 3600.0

#: :func:`model_files_hash`'s memo: (resolved path, ((file, size, mtime_ns), ...)) -> hex digest.
_FILES_HASHES: dict[tuple, str] = {}


def model_files_hash(path: Path) -> str:
    """SHA-256 (hex) of every file under the model directory ``path``: names and contents.

    Kept for the process, keyed by the files' names, sizes and modification times (one ``stat``
    each), so the keys of a server's encoder and of its fallback read the 90 MB once (0.08-0.11 s
    here), and a file rewritten in place is read again."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    stats = [f.stat() for f in files]
    signature = (str(path.resolve()), tuple((f.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns)
                                            for f, st in zip(files, stats, strict=True)))
    cached = _FILES_HASHES.get(signature)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode("utf-8") + b"\0")
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    _FILES_HASHES[signature] = digest.hexdigest()
    return _FILES_HASHES[signature]


def cache_key(model_path: Path, *parts: object) -> str:
    """SHA-256 (hex) of the model files' hash (:func:`model_files_hash`) and ``parts``, joined with
    ``:``: the key of a file derived from the model with those settings."""
    return hashlib.sha256(":".join([model_files_hash(model_path), *map(str, parts)]).encode()).hexdigest()


def package_versions(*names: str) -> str:
    """``"name=version;..."`` of the installed distributions ``names`` (``absent`` for one that is
    not installed), read from their metadata without importing them (about 5 ms for three).

    An export or trace replays the graph the installed libraries build from the model files, so a
    cache key holds their versions: after an upgrade that changes the graph, the cache is rebuilt
    instead of serving vectors the current libraries (and so training) no longer compute."""
    parts = []
    for name in names:
        try:
            parts.append(f"{name}={version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name}=absent")
    return ";".join(parts)


def slug(model_id: str) -> str:
    """``model_id`` as one path component (``/`` and the like as ``-``)."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in model_id).strip("-") or "model"


def fsync_tree(path: Path) -> None:
    """fsync every file directly under ``path``, then ``path`` itself."""
    for file in path.iterdir():
        if file.is_file():
            with file.open("rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_built(final: Path, marker: str, build: Callable[[Path], None], what: str) -> Path:
    """``final``, built by ``build(tmp)`` when it holds no ``marker`` file yet.

    ``build`` writes into a temporary directory beside ``final``, which is then fsynced and renamed
    into place; a process that loses the race to another one drops its own copy and uses the
    winner's. ``build`` must write ``marker`` last.

    Raises:
        UserError: the parent of ``final`` cannot be written, ``build`` fails (``what`` names it in
            the message), or something else is in the way of ``final``.
    """
    if (final / marker).is_file():
        return final
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for stale in parent.glob(f".{final.name}.*"):
            with contextlib.suppress(OSError):
                if time.time() - stale.stat().st_mtime > STALE_S:
                    shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=parent))
    except OSError as exc:
        raise UserError(f"cannot write the model cache {parent}: {exc}") from None
    try:
        try:
            build(tmp)
        except UserError:
            raise
        except Exception as exc:  # exporters, quantisers and distillers raise many kinds
            raise UserError(f"cannot make {what}: {type(exc).__name__}: {exc}") from None
        fsync_tree(tmp)
        tmp.chmod(0o755)  # mkdtemp made it private
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / marker).is_file():  # not a lost race: something else is in the way
                raise UserError(f"cannot move {what} into {final}; remove that directory") from None
        else:
            fsync_tree(parent)
            logger.info("made %s in %s", what, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
