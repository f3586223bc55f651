"""Options and settings the commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from contract.errors import UserError

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML training config.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override, e.g. ppo.lr=1e-3 (repeatable).")]
DEFAULT_CONFIG = Path("configs/default.yaml")
SPLITS = ("train", "val", "test")


def train_config(config: Path | None, overrides: list[str] | None) -> Any:
    """The :class:`training.config.TrainConfig` of ``--config`` (default ``configs/default.yaml``
    when it exists) with ``--set`` overrides.

    Raises:
        UserError: an unreadable config or a bad override.
    """
    from training.config import load_config

    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    return load_config(config, overrides or [])


def server_settings() -> Any:
    """The server's :class:`router.settings.Settings` from the ``ROUTER_*`` environment.

    Raises:
        UserError: a setting does not validate (one line naming it).
    """
    from pydantic import ValidationError

    from router.settings import Settings
    from router.startup import describe_settings_error

    try:
        return Settings()
    except ValidationError as exc:
        raise UserError(describe_settings_error(exc)) from None


def check_split(split: str) -> None:
    """Raises:
        UserError: ``split`` is not train, val or test."""
    if split not in SPLITS:
        raise UserError(f"--split must be train, val or test, not {split!r}")
