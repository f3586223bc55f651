"""Change detection: has an agent's reward moved away from what its history says?

A round tests each agent's new feedback against the reward critic fitted on that agent's earlier
records. Each new record's residual ``r - Q̂_history(x)`` is compared with the residuals of the
earlier records nearest to it in the critic's features (matching on the prompt, as the matching
estimators of Abadie and Imbens 2006, "Large Sample Properties of Matching Estimators for Average
Treatment Effects", Econometrica 74(1), with the critic's fit as their regression adjustment). The
critic is biased where it is shrunk (towards its prior, by the ridge) and where it is not linear,
and the bias differs between prompts: an agent that exploration once sent everywhere and the policy
now sends only where it is strong has new residuals above its old ones on average, with nothing
changed. Matched, the bias is the same on both sides of each comparison and cancels. (An earlier
version compared the new records' mean residual with all the earlier records' mean: in a
stationary world it fired every round or two on agents the policy had come to favour, and their
forgotten history left the critic guessing.) If the difference is far from 0 in standard errors
(``|z| >= z_threshold``) and in reward units (``|shift| >= min_shift``), the agent's world changed:
its history before the change (located among the new records, :func:`change_start`) stops counting
for the critic (:attr:`PolicyMeta.history_since
<contract.policy_meta.PolicyMeta>`), so the critic, and the actor after it, learn the changed agent
from what it does now, and its widened posterior brings exploration back to it. An agent whose
feedback does not move keeps all of its history: a stationary world loses no data, unlike a fixed
forgetting horizon (:func:`training.retrain.learner.recency_weights`), which forgets all the time.

This is the detect-and-restart scheme of change-detection bandits: a two-sample test of the recent
rewards against the earlier ones, and the arm's statistics reset when it fires (Liu, Lee and Shroff
2018, "A Change-Detection based Framework for Piecewise-stationary Multi-Armed Bandit Problem",
AAAI, arXiv 1711.03539; Cao, Wen, Kveton and Xie 2019, "Nearly Optimal Adaptive Procedure with
Change Detection for Piecewise-Stationary Bandit", AISTATS, arXiv 1802.03692), with the matched residuals
of the contextual critic in place of raw rewards, so a change of the prompts an agent is sent is not
taken for a change of the agent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from policy.networks import RewardCritic
from training.retrain.learner import fit_reward_critic

#: earlier records each new record is matched with
MATCHES = 8
#: new records whose distances to the earlier ones are computed at once (a ``[CHUNK, m]`` float32 matrix)
_CHUNK = 512


@dataclass(frozen=True)
class ChangeTest:
    """One agent's test.

    Attributes:
        agent: its index. records: its new records tested. shift: their mean residual minus that
        of the earlier records matched with them (reward units; negative: worse than its history
        says). z: ``shift`` in standard errors.
        changed: the test fired.
        after: of the new records, how many came after the estimated change (:func:`change_start`);
            ``records`` when no times were given.
        since: POSIX time of the first of them; None when no times were given.
    """

    agent: int
    records: int
    shift: float
    z: float
    changed: bool
    after: int = 0
    since: float | None = None


@torch.no_grad()
def detect_changes(critic: RewardCritic, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
                 fresh: torch.Tensor, weight: torch.Tensor | None, ridge: float, prior: list[float | None],
                 z_threshold: float, min_shift: float, min_records: int,
                 outcome: tuple[torch.Tensor, torch.Tensor] | None = None,
                 shared: bool = False, created: torch.Tensor | None = None) -> list[ChangeTest]:
    """Test every agent's ``fresh`` records against the critic fitted on the rest, and estimate
    where among them the change came (:func:`change_start`): a round's new records often straddle
    it, and those before it belong to the agent's history.

    Args:
        critic: a reward critic of the policy's shape (a scratch copy: it is refitted in place).
        obs: ``[M, 1, D]`` float32; action: ``[M, 1]`` int64; reward: ``[M, 1]`` float32.
        fresh: ``[M]`` bool, the round's new records (the ones tested).
        weight: ``[M]`` the records' weights (0: not part of the agent's history any more); None: 1.
        ridge, prior, shared: as :func:`~training.retrain.learner.fit_reward_critic`.
        z_threshold: ``|z|`` at or above which a shift is a change.
        min_shift: ``|shift|`` (reward units) below which no shift is a change.
        min_records: an agent with fewer fresh or fewer earlier records is not tested.
        outcome: ``([M, 1] quality, [M, 1] cost_usd)``, what a preference critic is fitted on.
        created: ``[M]`` float64 POSIX times of the records (None: the change is not located, every
            new record counts as after it).

    Returns:
        One :class:`ChangeTest` per tested agent.
    """
    a = action.reshape(-1)
    w = torch.ones(len(a), dtype=torch.float64) if weight is None else weight.reshape(-1).double()
    history = (~fresh) & (w > 0)
    fit_reward_critic(critic, obs, action, reward, ridge, prior, sample_weight=w * history.double(), outcome=outcome,
                      shared=shared)
    residual = _residuals(critic, obs, a, reward)
    x = critic.features(obs.reshape(len(a), -1)).float()  # [M, F]
    tests = []
    for k in range(critic.weight.shape[0]):
        new, old = fresh & (a == k), history & (a == k)
        n, m = int(new.sum()), int(old.sum())
        if n < min_records or m < min_records:
            continue
        e_new, e_old = residual[new], residual[old]
        matched, coef = matched_means(x[new], x[old], w[old], e_old, MATCHES)
        difference = e_new - matched  # [n]: each new residual minus its matches'
        shift = float(difference.mean())
        # the residuals independent, of the variance of their side: Var(mean e_new - coefᵀ e_old)
        se = math.sqrt(float(e_new.var()) / n + float(e_old.var()) * float(coef.square().sum()))
        z = shift / se if se > 0 else (math.inf if shift else 0.0)
        after, since = n, None
        if created is not None:
            order = created[new].argsort()
            start = change_start(difference[order], min(n, max(2, min_records // 2)))
            after, since = n - start, float(created[new][order][start])
        tests.append(ChangeTest(k, n, shift, z, abs(z) >= z_threshold and abs(shift) >= min_shift, after, since))
    return tests


def change_start(difference: torch.Tensor, min_after: int) -> int:
    """Where in a time-ordered sequence of matched residual differences a shift of their mean
    began: the ``τ`` that maximises ``|Σ_{i>=τ} d_i| / sqrt(n - τ)``, the likelihood-ratio statistic
    of a shift from the known mean 0 (before it, the records are like their matches) to an
    unknown mean from ``τ`` on, at a common variance (the CUSUM change-point estimate; Page 1954,
    "Continuous Inspection Schemes", Biometrika 41; Hinkley 1970, "Inference About the
    Change-Point in a Sequence of Random Variables", Biometrika 57).

    Args:
        difference: ``[n]`` float64, oldest first.
        min_after: at least this many records after ``τ`` (1 <= min_after <= n).

    Returns:
        ``τ`` in ``[0, n - min_after]``: the index of the first record after the change.
    """
    n = len(difference)
    suffix = difference.flip(0).cumsum(0).flip(0)  # [n]: Σ_{i>=τ} d_i
    score = suffix.abs() / torch.arange(n, 0, -1, dtype=difference.dtype).sqrt()
    return int(score[:n - min_after + 1].argmax())


def matched_means(new_x: torch.Tensor, old_x: torch.Tensor, old_weight: torch.Tensor, values: torch.Tensor,
                  matches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each new record's matches among the earlier ones, its ``matches`` nearest earlier records
    (Euclidean, in the critic's features) weighted by ``old_weight``, and the mean of ``values``
    over them.

    Args:
        new_x: ``[n, F]`` float32 features of the new records (n >= 1).
        old_x: ``[m, F]`` float32 features of the earlier records (m >= 1).
        old_weight: ``[m]`` float64, their weights (all > 0).
        values: ``[m]`` float64, what is averaged (the earlier records' residuals).
        matches: neighbours per new record (at most m are used).

    Returns:
        ``([n] means, [m] coef)`` float64: ``means[i]`` the weighted mean of ``values`` over new record
        ``i``'s matches, and ``coef`` (summing to 1) with ``coef @ values == means.mean()``.
    """
    matches = min(matches, len(old_x))
    means = torch.empty(len(new_x), dtype=torch.float64)
    coef = torch.zeros(len(old_x), dtype=torch.float64)
    for start in range(0, len(new_x), _CHUNK):
        nearest = torch.cdist(new_x[start:start + _CHUNK], old_x).topk(matches, dim=1, largest=False).indices
        weight = old_weight[nearest]  # [c, matches]
        share = weight / weight.sum(1, keepdim=True)
        means[start:start + _CHUNK] = (share * values[nearest]).sum(1)
        coef.index_add_(0, nearest.reshape(-1), share.reshape(-1))
    return means, coef / len(new_x)


@torch.no_grad()
def pending_alarms(critic: RewardCritic, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
                   z_threshold: float, min_shift: float, min_records: int) -> list[ChangeTest]:
    """The agents whose pending records, too few yet for a round, already do worse than the
    serving policy's critic expects: a round should not wait for the rest.

    Each agent's mean residual ``r - Q̂(x)`` over its pending records is tested against 0 (a one-
    sided t-statistic, ``z = mean / (sd / sqrt(n))``): an alarm at ``z <= -z_threshold`` and
    ``shift <= -min_shift``. Only the worse side: a break or a degradation costs reward with every
    request until a round reacts, an improvement can wait for the next round's record count. The
    critic's bias is not matched away here as in :func:`detect_changes` (it has no history to match
    with): where the policy sends an agent, its shrunk critic tends to underrate it, which hides no
    break; a false alarm only runs a round early, and the round's own test decides what to forget.

    Args:
        critic: the serving policy's reward critic.
        obs: ``[M, 1, D]`` float32; action: ``[M, 1]`` int64; reward: ``[M, 1]`` float32 (the pending records).
        z_threshold, min_shift, min_records: as :func:`detect_changes` (``min_records`` pending records
            of the agent at least).

    Returns:
        One :class:`ChangeTest` per agent with an alarm (``changed`` True).
    """
    a = action.reshape(-1)
    residual = _residuals(critic, obs, a, reward)
    alarms = []
    for k in range(critic.weight.shape[0]):
        e = residual[a == k]
        n = len(e)
        if n < min_records:
            continue
        shift, sd = float(e.mean()), float(e.std())
        z = shift / (sd / math.sqrt(n)) if sd > 0 else (-math.inf if shift < 0 else 0.0)
        if z <= -z_threshold and shift <= -min_shift:
            alarms.append(ChangeTest(k, n, shift, z, True, after=n))
    return alarms


def _residuals(critic: RewardCritic, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    """``[M]`` float64 ``r - Q̂(x)`` of each record's chosen agent (``action`` ``[M]`` int64)."""
    predicted = critic(obs).reshape(len(action), -1).gather(1, action[:, None]).reshape(-1)
    return reward.reshape(-1).double() - predicted.double()
