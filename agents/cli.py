"""``agent-router agents ...``: serve the local agents (docs/agents.md).

Registered in :mod:`router.cli`; a user's mistake ends with one line ``error: ...`` and exit
code 2 there. Heavy imports happen inside the command.
"""

from __future__ import annotations

from typing import Annotated

import typer

from agents.registry import AGENT_NAMES
from env.errors import UserError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")

app = typer.Typer(help="Local specialist agents (calculator, SmolLM2) behind an OpenAI-compatible API.",
                  no_args_is_help=True)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Bind address (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.", min=1, max=65535)] = 9100,
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help=f"A model to serve (repeatable): {', '.join(AGENT_NAMES)}; default: all.")] = None,
    preload: Annotated[bool, typer.Option(
        "--preload/--lazy", help="Load the models' weights before taking requests, or on the first one.")] = True,
    threads: Annotated[int, typer.Option(help="torch threads of the LLM agents.", min=1)] = 1,
    log_level: Annotated[str, typer.Option(help=f"Log level: {', '.join(LOG_LEVELS)}.")] = "info",
) -> None:
    """Serve the agents on POST /v1/chat/completions and GET /v1/models (OpenAI's shapes)."""
    if log_level not in LOG_LEVELS:
        raise UserError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, not {log_level!r}")
    names = list(dict.fromkeys(model or AGENT_NAMES))
    unknown = [n for n in names if n not in AGENT_NAMES]
    if unknown:
        raise UserError(f"unknown model {unknown[0]!r}; known: {', '.join(AGENT_NAMES)}")
    import logging

    import uvicorn

    from agents.server import create_app

    level = "DEBUG" if log_level == "trace" else log_level.upper()
    logging.basicConfig(level=level, format="%(levelname)s:     %(message)s")  # the agents' load times

    server_app = create_app(names, preload=preload, threads=threads)  # AgentUnavailable is a UserError
    typer.echo(f"serving {', '.join(names)} on http://{host}:{port}/v1", err=True)
    uvicorn.run(server_app, host=host, port=port, log_level=log_level)
