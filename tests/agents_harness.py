"""A real agents server for tests and benchmarks: ``agent-router agents serve`` as a process on a
free loopback port.

Importable as ``tests.agents_harness`` from the repository root; it needs no pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.harness import ROOT, STARTUP_TIMEOUT_S, free_port, stop_process


@dataclass
class AgentsServer:
    """``python -m router.cli agents serve --model ...`` on a free loopback port (weights preloaded).

    Args:
        models: the model names to serve.
        log_path: where stderr goes (stdout beside it, ``.stdout``).
    """

    models: list[str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The OpenAI base URL, ``http://127.0.0.1:<port>/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> AgentsServer:
        """Launch the process (does not wait)."""
        env = dict(os.environ) | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                  "TRANSFORMERS_VERBOSITY": "error"}
        args = [sys.executable, "-m", "router.cli", "agents", "serve", "--port", str(self.port),
                "--log-level", "warning"]
        for model in self.models:
            args += ["--model", model]
        self._err = self.log_path.open("wb")
        self._out = self.log_path.with_suffix(".stdout").open("wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._out, stderr=self._err)
        return self

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> AgentsServer:
        """Poll ``/healthz`` until it answers 200 (after the weights are loaded).

        Raises:
            AssertionError: the process exited or did not get ready in time (with its log).
        """
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agents server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"agents server not ready after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        """What the process wrote to stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        stop_process(self.proc)
        for f in (getattr(self, "_err", None), getattr(self, "_out", None)):
            if f is not None:
                f.close()
