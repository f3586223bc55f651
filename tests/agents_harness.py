"""A real agents server for tests and benchmarks: ``agent-router agents serve`` as a process on a
free loopback port.

Importable as ``tests.agents_harness`` from the repository root; it needs no pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import LoopbackProcess, free_port


@dataclass
class AgentsServer(LoopbackProcess):
    """``python -m cli agents serve --model ...`` on a free loopback port (weights preloaded).

    Args:
        models: the model names to serve.
        log_path: where stderr goes (stdout beside it, ``.stdout``).
    """

    models: list[str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    what = "agents server"
    poll_s = 0.2

    @property
    def url(self) -> str:
        """The OpenAI base URL, ``http://127.0.0.1:<port>/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "cli", "agents", "serve", "--port", str(self.port),
                "--log-level", "warning"]
        for model in self.models:
            args += ["--model", model]
        return args

    def environment(self) -> dict[str, str]:
        return dict(os.environ) | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                   "TRANSFORMERS_VERBOSITY": "error"}


@contextmanager
def running_agents(models: list[str], log_dir: Path) -> Iterator[AgentsServer]:
    """An :class:`AgentsServer` of ``models``, ready; stopped on exit."""
    server = AgentsServer(models, log_dir / f"{'-'.join(models)}.log").start()
    try:
        yield server.wait_ready()
    finally:
        server.stop()
