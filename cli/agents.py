"""``agent-router agents serve`` (the local agents, docs/agents.md) and ``agent-router demo`` (the
whole loop on this machine)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from agents.registry import AGENT_NAMES
from contract.errors import UserError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


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


def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its data, checkpoints and logs.")] = Path(
        "var/demo"),
    requests: Annotated[int, typer.Option(help="Questions sent through the proxy.", min=10)] = 80,
    router_port: Annotated[int, typer.Option(help="Port of the router (proxy).", min=1, max=65535)] = 8765,
    agents_port: Annotated[int, typer.Option(help="Port of the local agents.", min=1, max=65535)] = 9765,
    seed: Annotated[int, typer.Option(help="Seed of the prompts' choice.")] = 0,
) -> None:
    """Run the whole loop locally: agents up, proxy up, the openai client asks, a checker posts quality,
    retrain, hot swap; prints the share of arithmetic routed to the calculator before and after."""
    from agents.demo import DemoConfig, run_demo

    figures = run_demo(DemoConfig(workdir=workdir, requests=requests,
                                  router_port=router_port, agents_port=agents_port, seed=seed), say=typer.echo)
    typer.echo(json.dumps(figures))
