"""Resumable trainer states: ``trainer_state.pt`` in a run's ``out_dir``.

The policy checkpoint (``policy.safetensors`` + ``policy.json``) is what the server loads; this
file is what ``agent-router train --resume RUN_DIR`` needs to continue a run exactly: networks,
Adam moments, the value normaliser, counters, RNG and env states, and the config
(:meth:`training.trainer.MAPPOTrainer.state_dict`). Written atomically (temp file, fsync,
rename); read with ``torch.load(weights_only=True)``, which unpickles tensors and plain
containers only.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from contract.errors import UserError


class ResumeError(UserError):
    """A trainer state that is missing, unreadable, or does not fit the configured run."""


def state_file(run_dir: str | Path, rank: int = 0, world_size: int = 1) -> Path:
    """``run_dir/trainer_state.pt``, or ``trainer_state.rank{r}.pt`` for each rank under torchrun."""
    name = "trainer_state.pt" if world_size == 1 else f"trainer_state.rank{rank}.pt"
    return Path(run_dir) / name


def save_trainer_state(path: Path, state: dict[str, Any], config: dict[str, Any]) -> None:
    """Write ``{"config": config, "trainer": state}`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        torch.save({"config": config, "trainer": state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_trainer_state(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a trainer state; returns ``(config_dict, trainer_state)``.

    Raises:
        ResumeError: no such file, or not a trainer state (truncated, corrupt, other format).
    """
    if path.is_dir():
        path = state_file(path)
    if not path.is_file():
        raise ResumeError(f"{path}: no trainer state to resume from (written by train at the end or every "
                          "save_every iterations)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, ValueError) as exc:
        raise ResumeError(f"{path}: unreadable trainer state ({str(exc).splitlines()[0]})") from None
    if not isinstance(blob, dict) or not {"config", "trainer"} <= blob.keys():
        raise ResumeError(f"{path}: not a trainer state")
    return blob["config"], blob["trainer"]
