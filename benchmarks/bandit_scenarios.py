"""A world that changes mid-stream, for ``benchmarks/bandit_stream.py --scenario``.

At arrival position ``at`` (``--change-at``, a share of the stream) the outcomes of one agent
change for every prompt that arrives from then on. The changed agent is the one a router favours:
the best single agent in hindsight by reward, in the world before the change (``--changed-agent
worst``: the one of lowest mean reward, for a new agent worse than every other).

* ``break``: its quality is 0 (an upstream that answers nothing useful, or errors).
* ``degrade``: its quality is halved (a provider update that made it worse).
* ``price``: its cost is ``--price-factor`` (10) times the dataset's; meaningful at a cost weight
  where cost matters.
* ``new-agent``: it is not in service before the change and joins at it, its outcomes the data's
  column held back until then (agent-router: through ``POST /admin/agents``' path, the anchors: a
  new action).
* ``retire``: it is taken out of service at the change (agent-router: ``DELETE /admin/agents``'
  path, marked down at once).

``preference`` is not a change of the world but of the clients: every request carries its own
``cost_weight``, drawn log-uniformly from ``--cost-weight-range`` (the protocol of BaRP, Wang et al.
2025, arXiv 2510.07429, sec. 4: a preference drawn per query, given to the router with the prompt);
each learner is scored on ``quality - cost_weight * cost_usd`` at that request's weight
(``benchmarks/bandit_stream.py``).

Every learner meets the same change at the same position of the same shuffle, and learns of it only
through the rewards of the agents it chooses (online anchors adapt as they go; agent-router
through its rounds). The figures after the change (:func:`change_figures`): the mean reward from
the change to the end, and the changed agent's share of the traffic in the 500 arrivals from 1,000
and from 2,000 feedbacks after the change and in the last 500, beside the changed world's
full-information ceiling's share of the same prompts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

SCENARIOS = ("none", "break", "degrade", "price", "new-agent", "retire", "preference")
#: the scenarios that change the agent set rather than an agent's outcomes
AGENT_SET_SCENARIOS = ("new-agent", "retire")
#: which agent changes: the favourite, or the one of lowest mean reward
CHANGED_AGENTS = ("best", "worst")
#: arrivals after the change at which the changed agent's share is read, and the window it is read over
SHARE_AFTER = (1000, 2000)
SHARE_WINDOW = 500
#: a new agent worse than every other may be chosen for this share of the arrivals after the change,
#: beyond its young records (inverse gap weighting's share of an agent known to be far behind)
WORSE_AGENT_SLACK = 0.01


@dataclass(frozen=True)
class Change:
    """One change of the world.

    Attributes:
        scenario: one of :data:`SCENARIOS` but ``none``.
        agent: the changed agent's index; name: its name.
        at: arrival position of the change (prompts ``order[at:]`` meet the changed world).
        dataset: the changed world's dataset (same prompts and agents, changed outcomes).
        allowed_before, allowed_after: ``[K]`` bool, the agents in service before and after the
            change (every agent but in ``new-agent``, before, and ``retire``, after).
        which: ``best`` (the favourite changes) or ``worst`` (the agent of lowest mean reward).
    """

    scenario: str
    agent: int
    name: str
    at: int
    dataset: Any
    allowed_before: np.ndarray
    allowed_after: np.ndarray
    which: str = "best"

    def allowed(self, t: int) -> np.ndarray:
        """``[K]`` bool, the agents in service at arrival ``t``."""
        return self.allowed_after if t >= self.at else self.allowed_before


def make_change(scenario: str, ds: Any, cost_weight: float, change_at: float, price_factor: float,
                which: str = "best") -> Change | None:
    """The :class:`Change` of ``scenario`` on dataset ``ds`` (None for ``none`` and ``preference``).

    Args:
        which: the changed agent: ``best`` (the favourite, highest mean reward) or ``worst`` (the
            lowest: a new agent worse than every other, to measure what exploring it costs).

    Raises:
        ValueError: an unknown scenario or ``which``, or ``change_at`` outside (0, 1).
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}: one of {', '.join(SCENARIOS)}")
    if scenario in ("none", "preference"):
        return None
    if not 0.0 < change_at < 1.0:
        raise ValueError(f"change_at must be in (0, 1), got {change_at}")
    if which not in CHANGED_AGENTS:
        raise ValueError(f"unknown changed agent {which!r}: one of {', '.join(CHANGED_AGENTS)}")
    reward = (ds.quality.astype(np.float64) - cost_weight * ds.cost_usd.astype(np.float64)).mean(axis=0)
    agent = int(reward.argmax() if which == "best" else reward.argmin())
    quality, cost = ds.quality.copy(), ds.cost_usd.copy()
    everyone = np.ones(len(ds.agent_names), dtype=bool)
    without = everyone.copy()
    without[agent] = False
    if scenario == "break":
        quality[:, agent] = 0.0
    elif scenario == "degrade":
        quality[:, agent] *= 0.5
    elif scenario == "price":
        cost[:, agent] *= price_factor
    changed = dataclasses.replace(ds, quality=quality, cost_usd=cost)
    masks = {"new-agent": (without, everyone), "retire": (everyone, without)}
    before, after = masks.get(scenario, (everyone, everyone))
    return Change(scenario, agent, ds.agent_names[agent], round(change_at * len(ds)), changed, before, after, which)


def change_figures(rewards: np.ndarray, actions: np.ndarray, change: Change) -> dict[str, float]:
    """A stream's figures after ``change``.

    Args:
        rewards: ``[P]`` rewards in arrival order (the changed world's from ``change.at`` on).
        actions: ``[P]`` int64, the agents chosen, in arrival order.

    Returns:
        ``{"after_mean", "share_after1000", "share_after2000", "share_last500", "picks_after"}``:
        the mean reward over ``rewards[at:]``, the changed agent's share of the actions in the
        windows ``[at + n, at + n + 500)`` (NaN past the end) and in the last 500, and how many
        times it was chosen from the change on.
    """
    at = change.at
    out = {"after_mean": float(rewards[at:].mean()), "picks_after": float((actions[at:] == change.agent).sum())}
    for n in SHARE_AFTER:
        window = actions[at + n: at + n + SHARE_WINDOW]
        out[f"share_after{n}"] = float((window == change.agent).mean()) if len(window) == SHARE_WINDOW else float("nan")
    out[f"share_last{SHARE_WINDOW}"] = float((actions[-SHARE_WINDOW:] == change.agent).mean())
    return out


def scenario_goals(summary: dict[str, Any], change: Change, router: str, anchors: list[str], len_after: int,
                   young_records: int) -> dict[str, Any]:
    """The issue's goals after a change, on the means over shuffles: ``router``'s reward after the
    change at least the best anchor's + 0.01; for ``break`` the broken agent's share 1,000 feedbacks
    after the change below 0.02; for ``degrade`` its share 2,000 after within 0.05 of the changed
    world's ceiling's (the better of ``knn-full`` and ``mlp-full`` after the change); for
    ``new-agent`` its share 1,000 after at least half the ceiling's, and for a new agent worse than
    every other (``which`` ``worst``) its exploration budget: chosen at most ``young_records`` times
    (the records it is tried for as if level with the leader) plus :data:`WORSE_AGENT_SLACK` of the
    ``len_after`` arrivals after the change (inverse gap weighting's share once it is known)."""
    me = summary[router]
    out: dict[str, Any] = {}
    present = [a for a in anchors if a in summary]
    if present:
        best = max(present, key=lambda a: summary[a]["after_mean"]["mean"])
        margin = me["after_mean"]["mean"] - summary[best]["after_mean"]["mean"]
        out["after_change_minus_best_anchor"] = {"best_anchor": best, "margin": margin, "goal": 0.01,
                                                 "met": bool(margin >= 0.01)}
    if change.scenario == "break":
        share = me["share_after1000"]["mean"]
        out["broken_share_after1000"] = {"margin": 0.02 - share, "share": share, "goal": 0.0,
                                         "met": bool(share < 0.02)}
    if change.scenario == "new-agent" and change.which == "worst":
        picks = me["picks_after"]["mean"]
        budget = young_records + WORSE_AGENT_SLACK * len_after
        out["worse_new_agent_picks_vs_budget"] = {"margin": budget - picks, "picks": picks, "budget": budget,
                                                  "goal": 0.0, "met": bool(picks <= budget)}
    elif change.scenario == "new-agent":
        ceiling = max(("knn-full", "mlp-full"), key=lambda c: summary[c]["after_mean"]["mean"])
        share, target = me["share_after1000"]["mean"], summary[ceiling]["share_after1000"]["mean"]
        out["new_agent_share_after1000_vs_half_ceiling"] = {"margin": share - 0.5 * target, "share": share,
                                                            "ceiling_share": target, "goal": 0.0,
                                                            "met": bool(share >= 0.5 * target)}
    if change.scenario == "degrade":
        ceiling = max(("knn-full", "mlp-full"), key=lambda c: summary[c]["after_mean"]["mean"])
        share, target = me["share_after2000"]["mean"], summary[ceiling]["share_after2000"]["mean"]
        out["degraded_share_after2000_vs_ceiling"] = {"margin": 0.05 - abs(share - target), "share": share,
                                                      "ceiling_share": target, "goal": 0.0,
                                                      "met": bool(abs(share - target) <= 0.05)}
    return out
