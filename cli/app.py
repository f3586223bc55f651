"""The command tree of ``agent-router`` and its entry point.

Help is Markdown (typer's ``rich_markup_mode="markdown"``): a docstring's paragraph is reflowed to
the terminal's width, so ``--help`` reads as prose at 80 columns.
"""

from __future__ import annotations

import sys

import typer

from cli import agents, data, evaluate, keys, retrain, serve, train
from contract.errors import UserError

MARKUP = "markdown"


def _group(help_text: str) -> typer.Typer:
    return typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=MARKUP)


app = typer.Typer(
    name="agent-router",
    help="Train, evaluate and serve a learned router for multi-agent LLM systems.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=MARKUP,
)
app.command()(train.init)
app.command()(train.train)
app.command()(train.tune)
app.command("eval")(evaluate.eval_)
app.command()(evaluate.calibrate)
app.command()(serve.serve)
app.command()(retrain.retrain)
app.command()(train.embed)
app.command()(agents.demo)

data_app = _group("Routing datasets: convert upstream layouts to the project's format.")
data_app.command()(data.convert)
app.add_typer(data_app, name="data")
keys_app = _group("Client keys of the OpenAI-compatible proxy (ROUTER_API_KEYS).")
keys_app.command()(keys.new)
app.add_typer(keys_app, name="keys")
agents_app = _group("Local specialist agents (calculator, SmolLM2) behind an OpenAI-compatible API.")
agents_app.command()(agents.serve)
app.add_typer(agents_app, name="agents")


def main() -> None:
    """Console-script entry point: run the app, turning a UserError into one line on stderr (exit
    code 2) and Ctrl-C into exit code 130."""
    try:
        app()
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
