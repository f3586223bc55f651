"""The learner from logged bandit feedback: a reward critic for every agent, then the actor moved
towards every agent's advantage inside a trust region around the serving policy.

A logged decision says how good one agent was on one prompt, chosen with a known propensity. One
round of the learner (:func:`learn_round`) on ``M`` such decisions:

1. **Reward critic** (:func:`fit_reward_critic`): each agent's reward as a linear function of the
   prompt's features, fitted in closed form by ridge regression on the decisions that chose it,
   shrunk towards a prior (the agent's ``prior_quality`` from the agents file, else the mean logged
   reward over every agent), optionally varying with the prompt as the slope the agents share says,
   as far as it carries from one agent to another (:func:`shared_slope`). This is the regression
   oracle of SquareCB (Foster and Rakhlin 2020, arXiv 2002.04926) and the per-arm model of
   disjoint LinUCB (Li et al. 2010, arXiv 1003.0146).
   The regression is not importance weighted: with the propensities the gate stays unbiased, and
   an unweighted fit has far less variance on a few hundred records (the bake-off's finding that
   plain regression with an exploration rule leads, Bietti, Agarwal and Langford 2021, JMLR
   22(133), sec. 6).
2. **Every agent's advantage**: ``A_k(x) = Q̂_k(x) - Σ_j π_old(j|x) Q̂_j(x)``, the counterfactual
   baseline of COMA (Foerster et al. 2018, arXiv 1705.08926, eq. 4) for one router: what choosing
   ``k`` instead of the policy's own mix is worth, for every agent, not only the logged one.
3. **The actor in a trust region** (:func:`actor_targets`, :func:`fit_actor`): the KL- and
   entropy-regularised improvement of the serving policy,
   ``π*(k|x) ∝ π_old(k|x)^(η/(η+τ)) exp(A_k(x) / (η+τ))``, the closed-form solution of
   ``max_π E_π[A] - η KL(π || π_old) + τ H(π)`` (Mirror Descent Policy Optimization, Tomar et al.
   2020, arXiv 2005.09814, eq. 5, with the entropy term of entropy-regularised natural policy
   gradient, Cen et al. 2021, arXiv 2007.06558, eq. 14; the E-step of MPO, Abdolmaleki et al.
   2018, arXiv 1806.06920, eq. 7), then the actor fitted to it by cross-entropy on the logged
   prompts. ``η`` (``kl_temperature``) is the size of the trust region. ``τ``
   (``entropy_temperature``) makes old evidence fade geometrically, by ``η/(η+τ)`` a round: the
   policy tends to ``softmax(Q̂/τ)`` and never saturates past what a few rounds can undo.
4. **Exploration** for the next rounds: ``γ`` of inverse gap weighting from the records fitted on
   (:mod:`policy.exploration`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from policy.networks import Actor, PreferenceRewardCritic, RewardCritic

#: the reward noise variance assumed before any record (reward units²: a quality in [0, 1] has at most 0.25)
PRIOR_NOISE = 0.25
#: the pooled residual variance is floored here, so a critic that fits its few records exactly stays unsure
NOISE_FLOOR = 1e-3


@dataclass(frozen=True)
class CriticFit:
    """What :func:`fit_reward_critic` did.

    Attributes:
        records: decisions fitted on.
        per_agent: ``[K]`` decisions of each agent.
        prior: ``[K]`` the reward each agent's model was shrunk towards.
        mse: mean squared error of the fitted critic on the logged actions (reward units²).
        transfer: the scale of the shared slope in the prior, in [0, 1] (:func:`shared_slope`; 0 for a
            constant prior).
    """

    records: int
    per_agent: list[int]
    prior: list[float]
    mse: float
    transfer: float = 0.0


def shared_slope(x: torch.Tensor, action: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, k_agents: int,
                 ridge: float) -> tuple[torch.Tensor, float]:
    """The slope every agent shares, and how far it carries to an agent it was not fitted on.

    The slope: ridge regression of the target on the features with a free intercept per agent,
    ``min_s Σ_i w_i (y_i - s·x_i - b_{a_i})² + ridge·|s|²``, solved on the features and targets centred
    within each agent (the fixed-effects estimator). It is what the logged prompts say about how hard a
    prompt is for any agent, with who answered it taken out; each agent's ridge is shrunk towards it
    (biased regularisation, Cella, Lazaric and Pontil 2020, "Meta-learning with Stochastic Linear
    Bandits", arXiv 2005.08531, eq. 2), so an agent with few records is predicted from its intercept and
    the others' profile, not as a constant.

    How far it carries (the *transfer*, in [0, 1]): a leave-one-agent-out estimate of the best scale
    ``c`` of the prior slope ``c·s`` for an agent the slope was not fitted on. For each agent ``k``,
    ``s_{-k}`` is the shared slope of the others' records, and ``c`` is the weighted least-squares
    coefficient of ``k``'s own centred targets on ``s_{-k}``'s predictions of them, pooled over the
    agents: ``c = Σ_k Σ_{i∈k} w_i z_i ỹ_i / Σ_k Σ_{i∈k} w_i z_i²``, ``z_i = x̃_i·s_{-k}`` (an
    empirical-Bayes estimate of the prior mean's scale, which ``k``'s own noise cannot inflate, since
    ``s_{-k}`` never saw it). Agents alike (LLMs that find the same prompts hard) give about 1;
    specialists with opposite strengths (a calculator and a writer) give 0, a constant prior. Fewer than
    two agents with records: 0.

    Args:
        x: ``[M, F]`` float64 features. action: ``[M]`` int64. y: ``[M]`` float64 targets.
        weight: ``[M]`` float64 record weights. k_agents: K. ridge: ``λ > 0``.

    Returns:
        ``(slope [F] float64, transfer)``; zeros and 0 without records.
    """
    f = x.shape[1]
    if not len(x) or float(weight.sum()) <= 0:
        return torch.zeros(f, dtype=x.dtype), 0.0
    total = torch.zeros(k_agents, dtype=x.dtype).index_add_(0, action, weight).clamp_min(1e-12)  # [K]
    mean_x = torch.zeros(k_agents, f, dtype=x.dtype).index_add_(0, action, x * weight[:, None])
    mean_x /= total[:, None]
    mean_y = torch.zeros(k_agents, dtype=x.dtype).index_add_(0, action, y * weight) / total
    xc, yc = x - mean_x[action], y - mean_y[action]
    eye = ridge * torch.eye(f, dtype=x.dtype)
    gram = xc.T @ (xc * weight[:, None])
    moment = xc.T @ (weight * yc)
    slope = torch.linalg.solve(gram + eye, moment)
    agree, scale = 0.0, 0.0
    present = torch.bincount(action, minlength=k_agents).nonzero().flatten().tolist()
    if len(present) < 2:
        return slope, 0.0
    for k in present:
        mine = action == k
        xk, wk = xc[mine], weight[mine]
        gram_k, moment_k = xk.T @ (xk * wk[:, None]), xk.T @ (wk * yc[mine])
        others = torch.linalg.solve(gram - gram_k + eye, moment - moment_k)  # s_{-k}
        z = xk @ others
        agree += float((wk * z * yc[mine]).sum())
        scale += float((wk * z * z).sum())
    return slope, min(max(agree / scale, 0.0), 1.0) if scale > 0 else 0.0


@torch.no_grad()
def fit_reward_critic(critic: RewardCritic, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
                      ridge: float, prior: list[float | None] | None = None,
                      sample_weight: torch.Tensor | None = None,
                      outcome: tuple[torch.Tensor, torch.Tensor] | None = None,
                      shared: bool = False) -> CriticFit:
    """Fit ``critic`` in place: for each agent ``k``, ridge regression of ``r`` on ``[features, 1]``
    over the decisions that chose ``k``, shrunk towards a prior mean ``θ₀_k``:
    ``(XᵀWX + ridge·I)(θ - θ₀_k) = XᵀW(r - Xθ₀_k)`` (float64). ``θ₀_k = [c·s, prior_k - c·s·x̄]``: the
    slope ``s`` every agent shares, scaled by how far it carries to an agent it was not fitted on
    (:func:`shared_slope`; ``c·s`` = 0 without ``shared``), and an intercept
    that makes ``prior_k`` the prior reward of the mean logged prompt ``x̄``. The intercept is
    penalised too, so an agent with few decisions stays near its prior: ``prior_k`` on average,
    higher or lower with the prompt as the other agents' records say.
    Its posterior covariance ``σ̂² (XᵀWX + ridge·I)⁻¹`` goes to ``critic.covariance``, ``σ̂²`` the
    fit's mean squared error over every agent (at least :data:`NOISE_FLOOR`; :data:`PRIOR_NOISE`
    without records).

    A :class:`~policy.networks.PreferenceRewardCritic` is fitted on the records' ``outcome`` instead
    of their reward, with the same design matrix: the quality model on ``q - prior_k``, and the cost
    correction on ``(cost_usd - E_k) / s`` (shrunk towards 0, the price rule; a record without a
    cost teaches it nothing). ``mse`` and ``σ̂²`` are still those of the reward at each record's
    own preference.

    Args:
        critic: the reward critic to overwrite.
        obs: ``[M, 1, D]`` float32 observations of the logged decisions.
        action: ``[M, 1]`` int64 chosen agents.
        reward: ``[M, 1]`` float32 rewards (quality - cost term).
        ridge: ``λ > 0``, the penalty (a Gaussian prior of precision ``λ`` around the prior mean).
        prior: ``[K]`` each agent's prior reward, or quality for a preference critic (None entries, or
            None: the mean logged reward, or quality).
        sample_weight: ``[M]`` float weights of the decisions (None: 1 each).
        outcome: ``([M, 1] quality, [M, 1] cost_usd)`` float32 of the decisions (a cost NaN: not
            known); needed by a preference critic, not read otherwise.
        shared: shrink towards the shared slope as far as it carries (True) or towards the constant
            ``prior_k`` (False).

    Returns:
        :class:`CriticFit`.

    Raises:
        ValueError: ``ridge`` is not positive, or a preference critic without ``outcome``.
    """
    if ridge <= 0:
        raise ValueError(f"ridge must be positive, got {ridge}")
    preference = isinstance(critic, PreferenceRewardCritic)
    if preference and outcome is None:
        raise ValueError("a preference reward critic is fitted on the records' quality and cost (outcome)")
    k_agents = critic.weight.shape[0]
    flat = obs.reshape(len(obs), -1)
    x = critic.features(flat).double()  # [M, F]
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)  # [M, F + 1]
    a, r = action.reshape(-1), reward.reshape(-1).double()
    y = r  # the quality model's target: the reward, or the quality for a preference critic
    if preference:
        assert outcome is not None and isinstance(critic, PreferenceRewardCritic)
        y = outcome[0].reshape(-1).double()
        expected = critic.expected_cost(flat).double().gather(1, a[:, None]).reshape(-1)
        spent = outcome[1].reshape(-1).double()
        cost_target = torch.where(torch.isnan(spent), 0.0, (spent - expected) / critic.cost_scale_usd)
        cost_coef = torch.zeros(k_agents, x.shape[1] - 1, dtype=torch.float64)
        cost_bias = torch.zeros(k_agents, dtype=torch.float64)
    w = torch.ones_like(r) if sample_weight is None else sample_weight.reshape(-1).double()
    fallback = float((w * y).sum() / w.sum()) if len(y) and float(w.sum()) > 0 else 0.0
    priors = [fallback if prior is None or prior[k] is None else float(prior[k]) for k in range(k_agents)]
    # each agent's prior mean: θ₀_k = [c·s, prior_k - c·s·x̄], its prior reward varying with the prompt as the
    # slope every agent shares says, as far as it carries (c·s = 0 without ``shared``: a constant prior)
    slope, transfer = (shared_slope(x[:, :-1], a, y, w, k_agents, ridge) if shared
                       else (torch.zeros(x.shape[1] - 1, dtype=x.dtype), 0.0))
    slope = transfer * slope  # [F]
    mean_x = (x[:, :-1] * w[:, None]).sum(0) / w.sum() if len(x) and float(w.sum()) > 0 else torch.zeros_like(slope)
    intercept = torch.tensor(priors, dtype=x.dtype) - slope @ mean_x  # [K]
    prior_mean = torch.cat([slope.expand(k_agents, -1), intercept[:, None]], dim=1)  # [K, F + 1]
    eye = ridge * torch.eye(x.shape[1], dtype=x.dtype)
    weight, bias = prior_mean[:, :-1].clone(), prior_mean[:, -1].clone()
    precision_inv = (eye / ridge**2).expand(k_agents, -1, -1).clone()  # [K, F + 1, F + 1]: (ridge·I)⁻¹ without data
    counts = []
    for k in range(k_agents):
        chosen = a == k
        counts.append(int(chosen.sum()))
        if not counts[-1]:
            continue
        xk, wk = x[chosen], w[chosen]
        precision_inv[k] = torch.linalg.inv(xk.T @ (xk * wk[:, None]) + eye)  # one factorisation for both
        theta = prior_mean[k] + precision_inv[k] @ (xk.T @ (wk * (y[chosen] - xk @ prior_mean[k])))
        weight[k], bias[k] = theta[:-1], theta[-1]
        if preference:
            theta = precision_inv[k] @ (xk.T @ (wk * cost_target[chosen]))
            cost_coef[k], cost_bias[k] = theta[:-1], theta[-1]
    critic.weight.copy_(weight.float())
    critic.bias.copy_(bias.float())
    if preference:
        assert isinstance(critic, PreferenceRewardCritic)
        critic.cost_coef.copy_(cost_coef.float())
        critic.cost_bias.copy_(cost_bias.float())
    pred = critic(obs.reshape(len(obs), 1, -1)).reshape(len(obs), k_agents).gather(1, a[:, None]).reshape(-1)
    mse = float(((pred.double() - r) ** 2).mean()) if len(r) else 0.0
    # σ̂²: the residual variance pooled over the agents (one agent's few records would make it noisy)
    noise = max(mse, NOISE_FLOOR) if len(r) else PRIOR_NOISE
    critic.covariance.copy_((noise * precision_inv).float())
    return CriticFit(records=len(r), per_agent=counts, prior=priors, mse=mse, transfer=transfer)


def recency_weights(created_at: torch.Tensor, half_life_records: int | None = None,
                    half_life_s: float | None = None) -> torch.Tensor | None:
    """How much each logged decision still counts: ``0.5^(age / half_life)``, its age counted in
    newer decisions (``half_life_records``) and in seconds before the newest decision
    (``half_life_s``; a pause in traffic forgets nothing), the two multiplied when both are set.
    An exponentially discounted regression follows a reward that drifts or jumps, at the price of
    the data it forgets: the weighted ridge of discounted LinUCB (Russac, Vernade and Cappé 2019,
    "Weighted Linear Bandits for Non-Stationary Environments", arXiv 1909.09146, sec. 3), whose
    posterior widens as the evidence fades, so exploration comes back to agents not tried lately.

    Args:
        created_at: ``[M]`` float64, each decision's time, POSIX seconds.
        half_life_records: decisions after which a record counts half (None: no forgetting by count).
        half_life_s: seconds after which a record counts half (None: no forgetting by time).

    Returns:
        ``[M]`` float64 in ``(0, 1]`` (the newest 1), or None when neither half-life is set.

    Raises:
        ValueError: a half-life that is not positive.
    """
    if half_life_records is None and half_life_s is None:
        return None
    for name, value in (("half_life_records", half_life_records), ("half_life_s", half_life_s)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    t = created_at.double()
    log_w = torch.zeros_like(t)
    if len(t) and half_life_records is not None:
        newer = torch.empty_like(t)
        newer[torch.argsort(t, descending=True, stable=True)] = torch.arange(len(t), dtype=t.dtype)
        log_w -= newer / half_life_records
    if len(t) and half_life_s is not None:
        log_w -= (t.max() - t) / half_life_s
    return torch.exp2(log_w)


@torch.no_grad()
def actor_targets(old_probs: torch.Tensor, reward: torch.Tensor, kl_temperature: float,
                  entropy_temperature: float) -> torch.Tensor:
    """The trust-region target ``π* ∝ π_old^(η/(η+τ)) exp(A / (η+τ))`` with COMA's counterfactual
    advantage ``A_k = Q̂_k - Σ_j π_old(j) Q̂_j`` (the baseline cancels in the normalisation; it is
    what the step is measured against).

    Args:
        old_probs: ``[M, K]`` float32, the serving policy on the logged prompts (every agent allowed).
        reward: ``[M, K]`` float32, the critic's estimate of every agent.
        kl_temperature: ``η > 0`` (reward units): smaller moves further per round.
        entropy_temperature: ``τ >= 0`` (reward units): the policy's limit is ``softmax(Q̂/τ)``;
            0 is the pure trust-region step (old evidence never fades).

    Returns:
        ``[M, K]`` float32 rows summing to 1.
    """
    advantage = reward - (old_probs * reward).sum(-1, keepdim=True)
    log_old = torch.log(old_probs.clamp_min(torch.finfo(old_probs.dtype).tiny))
    total = kl_temperature + entropy_temperature
    return torch.softmax(log_old * (kl_temperature / total) + advantage / total, dim=-1)


def fit_actor(actor: Actor, obs: torch.Tensor, target: torch.Tensor, epochs: int, lr: float, batch_size: int,
              generator: torch.Generator, max_steps: int | None = None) -> dict[str, float]:
    """Fit ``actor`` to ``target`` by cross-entropy (the projection ``min_θ KL(π* || π_θ)`` of MPO's
    M-step), Adam over shuffled minibatches.

    Args:
        actor: trained in place (left in eval mode).
        obs: ``[M, 1, D]`` float32. target: ``[M, K]`` float32 (:func:`actor_targets`).
        epochs, lr, batch_size: the optimisation.
        generator: orders the minibatches.
        max_steps: at most this many Adam steps (None: ``epochs`` full passes), so a round's time
            stops growing with the replayed history (the actor is warm-started: it moves, it does
            not start over).

    Returns:
        ``{"actor_kl", "actor_steps"}``: the mean ``KL(π* || π_θ)`` after the fit, and the Adam steps.
    """
    m = len(obs)
    optimizer = torch.optim.Adam(actor.parameters(), lr=lr)
    actor.train()
    steps = 0
    budget = epochs * math.ceil(m / batch_size)
    if max_steps is not None:
        budget = min(budget, max_steps)
    for _ in range(epochs if m else 0):
        for idx in torch.randperm(m, generator=generator).split(batch_size):
            if steps >= budget:
                break
            log_pi = torch.log_softmax(actor(obs[idx]).reshape(len(idx), -1), dim=-1)
            loss = -(target[idx] * log_pi).sum(-1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
    actor.eval()
    with torch.no_grad():
        if not m:
            return {"actor_kl": 0.0, "actor_steps": 0.0}
        log_pi = torch.log_softmax(actor(obs).reshape(m, -1), dim=-1)
        tiny = torch.finfo(target.dtype).tiny
        kl = (target * (torch.log(target.clamp_min(tiny)) - log_pi)).sum(-1).mean()
    return {"actor_kl": float(kl), "actor_steps": float(steps)}
