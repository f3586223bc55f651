"""``DecisionContext.explored_off_greedy``: what ``router_explored_decisions_total`` and the
``explored`` label of ``router_feedback_quality`` count."""

from __future__ import annotations

import pytest

from tests.harness import sample_context


@pytest.mark.parametrize(("explore", "action", "expected"), [
    (False, 1, False),  # the argmax, not sampled
    (True, 1, False),   # sampled, and it is the most probable agent
    (True, 2, True),    # sampled to another agent
    (False, 2, False),  # not sampled (a fallback away from the argmax is not exploration)
])
def test_explored_off_greedy(explore, action, expected):
    probabilities = [0.1, 0.6, 0.3] + [0.0] * 6
    ctx = sample_context(explore=explore, action=action, agent=f"a{action}", probabilities=probabilities,
                         propensity=probabilities[action] if explore else None)
    assert ctx.explored_off_greedy is expected
