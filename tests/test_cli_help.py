"""Every ``--help`` reads as prose at 80 columns: a docstring's paragraphs are reflowed to the
width (no line broken mid-sentence where the source was wrapped), and nothing runs past it."""

from __future__ import annotations

import itertools

import pytest
import typer
from typer.testing import CliRunner

from cli.app import app

WIDTH = 80


def _commands() -> list[tuple[str, ...]]:
    root = typer.main.get_command(app)
    out: list[tuple[str, ...]] = [()]

    def walk(group: object, path: tuple[str, ...]) -> None:  # a click Group (typer's own click or not)
        for name, command in group.commands.items():  # type: ignore[attr-defined]
            out.append((*path, name))
            if hasattr(command, "commands"):
                walk(command, (*path, name))

    walk(root, ())
    return out


def _description(text: str) -> list[list[str]]:
    """The paragraphs between the usage line and the first box, each a list of its lines."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Usage:")) + 1
    end = next((i for i, line in enumerate(lines) if line.lstrip().startswith("╭")), len(lines))
    paragraphs, current = [], []
    for line in lines[start:end]:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(current)
            current = []
    return paragraphs + ([current] if current else [])


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "agent-router")
def test_help_reads_as_prose_at_80_columns(path):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(WIDTH), "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= WIDTH
    paragraphs = _description(result.output)
    assert paragraphs, result.output
    for paragraph in paragraphs:
        for line, following in itertools.pairwise(paragraph):
            # a line is cut short only where the next word would not have fitted
            assert len(line) + 1 + len(following.split()[0]) > WIDTH - 4, f"{line!r} then {following!r}"


def test_the_walk_sees_every_group():
    paths = _commands()
    assert ("agents", "serve") in paths and ("keys", "new") in paths and ("data", "convert") in paths
    assert ("retrain",) in paths and len(paths) >= 14
