"""The import structure, floor by floor (no exception list):

- ``contract`` at the bottom, then ``env``, then ``policy`` (the served artefact) and
  ``experience`` (the log: its storage, the server's writers, the retrain job's readers);
- ``training`` (the trainer and the learner from logged feedback) and ``router`` (the server)
  stand on those and never import each other; ``agents`` stands on ``contract`` and ``env``;
- ``cli`` is the only package above the server, and nothing imports it;
- no two modules import each other, directly or in a longer loop.

Every import counts: at module level, inside functions, and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contract", "env", "policy", "experience", "training", "router", "agents", "cli")
#: what each top-level package may import of the others
ALLOWED = {"contract": set(), "env": {"contract"}, "policy": {"contract", "env"}, "experience": {"contract"},
           "training": {"contract", "env", "policy", "experience"},
           "router": {"contract", "env", "policy", "experience", "agents"}, "agents": {"contract", "env"},
           "cli": {"contract", "env", "policy", "experience", "training", "router", "agents"}}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                candidates = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            for candidate in candidates:
                if candidate.split(".")[0] not in PACKAGES:
                    continue
                while candidate and candidate not in files:
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != name:
                    targets.add(candidate)
                    if isinstance(node, ast.ImportFrom):
                        break  # ``from a.b import c``: the submodule c if there is one, else a.b
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_two_modules_import_each_other():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_the_layers_below(package):
    crossing = {
        (module, target)
        for module, targets in import_graph().items() if module.split(".")[0] == package
        for target in targets if target.split(".")[0] not in ALLOWED[package] | {package}
    }
    assert crossing == set()


def test_the_checker_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph()
    assert "training.run" in graph["cli.train"]  # an import inside a function is an edge too
    assert "contract.observation" in graph["env.prompt_env"]


def test_the_table_holds_the_floors():
    """The floors the graph check enforces through :data:`ALLOWED`: the server and the trainer apart,
    only the command line above the server, nothing above the command line."""
    assert "training" not in ALLOWED["router"] and "router" not in ALLOWED["training"]
    assert {package for package, allowed in ALLOWED.items() if "router" in allowed} == {"cli"}
    assert not any("cli" in allowed for allowed in ALLOWED.values())
