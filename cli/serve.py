"""``agent-router serve``: the router over HTTP."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from cli.options import DEFAULT_CONFIG, ConfigOpt, SetOpt, server_settings, train_config


def serve(
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint (default: ROUTER_CHECKPOINT).")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    workers: Annotated[int | None, typer.Option(help="uvicorn worker processes.")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL for the experience log (default: SQLite).")] = None,
    train_if_missing: Annotated[bool, typer.Option(help="Train (--config) first if no checkpoint exists.")] = False,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Serve the policy over HTTP (FastAPI under uvicorn).

    Options override the ROUTER_* environment variables (docs/serving.md lists them).
    """
    import uvicorn

    from policy.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint

    for name, value in (("CHECKPOINT", checkpoint), ("HOST", host), ("PORT", port), ("WORKERS", workers),
                        ("REDIS_URL", redis_url)):
        if value is not None:
            os.environ[f"ROUTER_{name}"] = str(value)
    settings = server_settings()
    try:
        resolve_checkpoint(settings.checkpoint)
    except CheckpointError:
        if not train_if_missing:
            raise
        from training.run import run_training

        cfg = train_config(config, overrides)
        typer.echo(f"no checkpoint at {settings.checkpoint}: training one with {config or DEFAULT_CONFIG}", err=True)
        os.environ["ROUTER_CHECKPOINT"] = str(run_training(cfg))
        settings = server_settings()
    load_checkpoint(settings.checkpoint)  # refuse a corrupt one before binding the port
    uvicorn.run("router.app:create_app", factory=True, host=settings.host, port=settings.port,
                workers=settings.workers, log_level=settings.log_level, access_log=False)
