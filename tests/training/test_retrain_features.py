"""The retrain job rebuilds a priced policy's observation from the logged prompt length: the cost
penalty at the request's own cost_weight, and records from before schema 3 are skipped by name."""

from __future__ import annotations

import pytest

from contract.experience import ExperienceRecord
from policy.checkpoint import load_checkpoint
from tests.harness import priced_checkpoint, sample_context, sample_feedback
from training.retrain.trajectories import build_batch


def test_logged_prompt_length_rebuilds_the_cost_penalty(tmp_path):
    policy = load_checkpoint(priced_checkpoint(tmp_path))
    layout = policy.layout
    new = ExperienceRecord.join(sample_context(agents=policy.agents, cost_weight=300.0, prompt_tokens=100),
                                sample_feedback(0.5, cost_usd=0.001))
    old = ExperienceRecord.join(sample_context(agents=policy.agents, prompt_tokens=None), sample_feedback(0.5))
    batch = build_batch([("1", new.to_json_dict()), ("2", old.to_json_dict())], policy, cost_weight=0.0)
    assert len(batch) == 1 and batch.skipped == {"no prompt length (a record from before schema version 3)": 1}
    penalty = batch.obs[0, 0, layout.cols("cost_penalty")]
    assert penalty.tolist() == pytest.approx((300.0 * layout.expected_costs([100])[0]).tolist(), rel=1e-6)
