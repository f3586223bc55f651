"""The gate's off-policy estimates against a hand-computed case (training.retrain.offpolicy)."""

from __future__ import annotations

import math

import pytest
import torch

from training.retrain.job import gate_verdict
from training.retrain.offpolicy import OffPolicyTerms, logged_verdict
from training.retrain.trajectories import held_out


def _terms(match, propensity, reward, value):
    w = torch.tensor(match, dtype=torch.float64) / torch.tensor(propensity, dtype=torch.float64)
    r, v = torch.tensor(reward, dtype=torch.float64), torch.tensor(value, dtype=torch.float64)
    return OffPolicyTerms(weight=w, dr=v + w * (r - v), reward=r)


def test_snips_dr_and_ess_by_hand():
    # 4 decisions; the target agrees with the logged action on the first two (propensities 0.5, 0.25)
    t = _terms([1, 1, 0, 0], [0.5, 0.25, 0.5, 1.0], [1.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5])
    s = t.summary()
    assert s["snips"] == pytest.approx((2 * 1.0 + 4 * 0.0) / 6)
    assert s["ess"] == pytest.approx(6**2 / (4 + 16))
    # DR terms: 0.5 + 2 * 0.5, 0.5 + 4 * (-0.5), 0.5, 0.5
    assert s["dr"] == pytest.approx((1.5 - 1.5 + 0.5 + 0.5) / 4)
    assert s["matched"] == 0.5


def test_verdicts_and_the_rule():
    n = 400
    good = _terms([1] * n, [1.0] * n, [1.0, 0.8] * (n // 2), [0.0] * n)
    bad = _terms([1] * n, [1.0] * n, [0.2, 0.1] * (n // 2), [0.0] * n)
    better = logged_verdict(good, bad, min_ess=30, confidence=0.95)
    assert better["verdict"] == "better" and better["difference"]["dr"] == pytest.approx(0.75)
    lo, hi = better["difference"]["ci"]
    assert lo < 0.75 < hi
    assert logged_verdict(bad, good, 30, 0.95)["verdict"] == "worse"
    assert logged_verdict(good, good, 30, 0.95)["verdict"] == "inconclusive"
    assert logged_verdict(good, bad, min_ess=n + 1, confidence=0.95)["verdict"] == "too_few"
    static_no = {"passed": False}
    assert gate_verdict(static_no, better)["passed"]  # the static split cannot veto a clear logged verdict
    assert not gate_verdict({"passed": True}, logged_verdict(bad, good, 30, 0.95))["passed"]
    assert gate_verdict({"passed": True}, logged_verdict(good, good, 30, 0.95))["passed"]  # inconclusive: static
    assert gate_verdict({"passed": True}, None)["passed"] and not gate_verdict(static_no, None)["passed"]


def test_a_loss_inside_the_margin_is_not_worse():
    """Two policies whose held-out estimates differ by a tight -0.0005 (what two near-identical refits
    give): ``worse`` without a margin, ``inconclusive`` inside the 0.005 non-inferiority margin; a loss
    beyond the margin is still ``worse``."""
    n = 400
    serving = _terms([1] * n, [1.0] * n, [1.0, 0.9] * (n // 2), [0.0] * n)
    close = _terms([1] * n, [1.0] * n, [0.9995, 0.8995] * (n // 2), [0.0] * n)
    far = _terms([1] * n, [1.0] * n, [0.99, 0.89] * (n // 2), [0.0] * n)
    assert logged_verdict(close, serving, 30, 0.95)["verdict"] == "worse"
    within = logged_verdict(close, serving, 30, 0.95, margin=0.005)
    assert within["verdict"] == "inconclusive" and within["margin"] == 0.005
    assert within["difference"]["ci"][1] < 0  # the interval is below 0, but not below -margin
    assert logged_verdict(far, serving, 30, 0.95, margin=0.005)["verdict"] == "worse"


def test_held_out_sessions_are_a_stable_share():
    keys = [f"decision:{i:032x}" for i in range(4000)]
    share = sum(held_out(k, 0.2) for k in keys) / len(keys)
    assert abs(share - 0.2) < 0.03
    assert [held_out(k, 0.2) for k in keys[:50]] == [held_out(k, 0.2) for k in keys[:50]]
    assert not any(held_out(k, 0.0) for k in keys) and math.isclose(sum(held_out(k, 1 - 1e-12) for k in keys), 4000)
