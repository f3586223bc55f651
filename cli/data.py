"""``agent-router data``: routing datasets converted to the project's format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from contract.errors import UserError


def convert(
    layout: Annotated[str, typer.Argument(help="Upstream layout: llmrouter-dc or routellm-evals.")],
    src: Annotated[Path, typer.Option(help="Upstream data directory.")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
) -> None:
    """Convert an upstream routing dataset into prompts.jsonl.gz + agents.json."""
    from env.convert import CONVERTERS

    if layout not in CONVERTERS:
        raise UserError(f"unknown layout {layout!r}; known: {', '.join(CONVERTERS)}")
    counts = CONVERTERS[layout](src, out)
    typer.echo(f"{counts['prompts']} prompts x {counts['agents']} agents written to {out}")
