"""The agents this package knows, by model name."""

from __future__ import annotations

from agents.base import Agent, AgentUnavailable

#: Model names the server knows, in the order ``GET /v1/models`` lists them by default.
AGENT_NAMES = ("calculator", "smollm2")


def build_agent(name: str, *, threads: int = 1) -> Agent:
    """A fresh, not yet loaded agent of model ``name`` (one of :data:`AGENT_NAMES`).

    Args:
        name: the model name.
        threads: torch threads of an LLM agent (ignored by the calculator), >= 1.

    Raises:
        AgentUnavailable: an unknown name, or the agent's package is missing.
    """
    if name == "calculator":
        from agents.calculator import CalculatorAgent

        return CalculatorAgent()
    if name == "smollm2":
        from agents.smollm2 import SmolLM2Agent, gguf_path

        return SmolLM2Agent(gguf_path(), threads=threads)
    raise AgentUnavailable(f"unknown agent {name!r}; known: {', '.join(AGENT_NAMES)}")
