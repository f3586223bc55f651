"""The demo end to end, as a new user runs it: real agents (SmolLM2 and the calculator), the proxy, the
openai client, the checker's feedback, one retrain, a hot swap; from a cold start (``agent-router init``,
no outcome data) the router learns who answers arithmetic."""

from __future__ import annotations

import pytest

from agents.demo import DemoConfig, run_demo
from tests.harness import free_port


@pytest.mark.slow
def test_after_one_retrain_on_its_own_feedback_the_router_sends_arithmetic_to_the_calculator(tmp_path):
    lines: list[str] = []
    figures = run_demo(DemoConfig(workdir=tmp_path, router_port=free_port(), agents_port=free_port()),
                       say=lines.append)
    assert figures["traffic"]["requests"] == 80 and set(figures["traffic"]["by_agent"]) == {"smollm2", "calculator"}
    assert figures["retrain_status"] == "saved", figures["gate"]
    assert figures["versions"][0] != figures["versions"][1]
    assert figures["calculator_share_before"] == 0.0, (figures, lines)  # the cold start routes to the first agent
    assert figures["calculator_share_after"] >= 0.9, (figures, lines)
