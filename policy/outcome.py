"""A policy of every trade-off as a property of the decision: each agent's quality and cost
predicted apart, and the cost preference applied when a request is routed.

:class:`OutcomeCritic` predicts, for a prompt, every agent's quality ``q̂_k`` and cost ``ĉ_k``
(USD) from the same features as the reward critic (the embedding and the prompt's length). The
actor of such a policy, :class:`OutcomeActor`, routes by the critic's reward at the request's own
``cost_weight`` ``λ``: its logits are ``(q̂_k - λ ĉ_k) / temperature``, a Boltzmann policy over the
critic (the maximum-entropy optimum of a contextual bandit at that temperature; soft Q-learning,
Haarnoja et al. 2017, arXiv 1702.08165, sec. 2). Nothing of it is trained at a cost weight, so one
checkpoint serves every ``λ``, and the greedy choice is monotone: for ``λ1 < λ2`` with choices
``a1``, ``a2``, adding ``q̂_a1 - λ1 ĉ_a1 >= q̂_a2 - λ1 ĉ_a2`` to ``q̂_a2 - λ2 ĉ_a2 >= q̂_a1 - λ2 ĉ_a1``
gives ``(λ2 - λ1)(ĉ_a1 - ĉ_a2) >= 0``: a larger weight never picks an agent of larger expected cost.
This is how RouterBench's predictive routers score agents (Hu et al. 2024, arXiv 2403.12031,
sec. 4), with a critic fitted by :mod:`training.outcome_fit`.

The request's ``λ`` reaches the actor through the observation's cost-preference column
(:meth:`contract.observation.ObsLayout.preference_feature`, decoded by
:meth:`~contract.observation.ObsLayout.decode_preference`), so the actor keeps the ``forward(obs,
action_mask)`` of :class:`policy.networks.Actor` and every caller (serving, evaluation,
calibration, the proxy's ``router-cw-<w>``) works unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise

import torch
from torch import nn

from contract.observation import ObsLayout

#: The smallest cost the critic is fitted at (USD): a free agent's log cost stays finite.
MIN_COST_USD = 1e-9


class OutcomeCritic(nn.Module):
    """Every agent's quality and cost for a prompt, from an ensemble of MLPs.

    Each of ``members`` ReLU MLPs maps the features ``[..., F]`` to ``[..., 2K]``: the quality of
    each agent and its standardised log cost (``(log c - log_cost_mean) / log_cost_std``, so costs
    spanning orders of magnitude weigh alike). The ensemble's mean is the estimate (averaging
    members fitted on different holdouts lowers the variance of the argmax; Lakshminarayanan et al.
    2017, arXiv 1612.01474).

    With ``neighbor_features`` set, the ensemble has one more member, a k-nearest-neighbour
    regression: the mean target of the ``k`` train prompts nearest in the first
    ``neighbor_features`` columns (the embedding; Euclidean, so cosine on unit-norm SBERT vectors).
    It keeps the train set (``neighbor_x [P, E]``, ``neighbor_y [P, 2K]``) and ``k``
    (``neighbor_k``); :func:`training.outcome_fit.fit_neighbor_member` fills them. A kNN and an MLP
    err on different prompts, so their mean routes better than either (RouterBench's two
    predictive routers, Hu et al. 2024, arXiv 2403.12031, sec. 4).

    Args:
        in_features: ``F``.
        num_actions: ``K``.
        hidden: widths of each member's hidden layers.
        members: ``M >= 1`` MLPs.
        neighbor_features: ``E <= F``, the columns the kNN member measures distance on; None: no
            kNN member.

    Raises:
        ValueError: ``members < 1`` or ``neighbor_features`` outside ``[1, F]``.
    """

    def __init__(self, in_features: int, num_actions: int, hidden: tuple[int, ...], members: int,
                 neighbor_features: int | None = None) -> None:
        super().__init__()
        if members < 1:
            raise ValueError(f"an outcome critic needs at least one member, got {members}")
        if neighbor_features is not None and not 1 <= neighbor_features <= in_features:
            raise ValueError(f"neighbor_features must be in [1, {in_features}], got {neighbor_features}")
        self.num_actions, self.neighbor_features = num_actions, neighbor_features
        self.members = nn.ModuleList(_mlp(in_features, 2 * num_actions, hidden) for _ in range(members))
        self.register_buffer("log_cost_mean", torch.zeros(num_actions))
        self.register_buffer("log_cost_std", torch.ones(num_actions))
        if neighbor_features is not None:  # empty until fitted; a checkpoint's sizes them on load
            self.register_buffer("neighbor_x", torch.zeros(0, neighbor_features))
            self.register_buffer("neighbor_sq_norm", torch.zeros(0))
            self.register_buffer("neighbor_y", torch.zeros(0, 2 * num_actions))
            self.register_buffer("neighbor_k", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def set_neighbors(self, x: torch.Tensor, y: torch.Tensor, k: int) -> None:
        """Keep the kNN member's train set: ``x`` ``[P, E]`` (the distance columns), ``y``
        ``[P, 2K]`` (quality and standardised log cost, the members' targets), and its ``k``.

        Raises:
            ValueError: a critic without a kNN member, shapes that do not match, or ``k`` outside
                ``[1, P]``.
        """
        if self.neighbor_features is None:
            raise ValueError("this outcome critic has no kNN member (neighbor_features None)")
        if x.ndim != 2 or x.shape[1] != self.neighbor_features or y.shape != (len(x), 2 * self.num_actions):
            raise ValueError(f"kNN member: x {tuple(x.shape)}, y {tuple(y.shape)} for {self.neighbor_features} "
                             f"distance columns and {self.num_actions} agents")
        if not 1 <= k <= len(x):
            raise ValueError(f"k must be in [1, {len(x)}], got {k}")
        self.neighbor_x = x.float().contiguous()
        self.neighbor_sq_norm = self.neighbor_x.pow(2).sum(1)
        self.neighbor_y = y.float().contiguous()
        self.neighbor_k = torch.tensor([k], dtype=torch.long)

    def size_from_state(self, state: Mapping[str, torch.Tensor], prefix: str = "") -> None:
        """Size the kNN member's train set (``neighbor_x``, ``neighbor_sq_norm``, ``neighbor_y``)
        as in ``state`` (a state dict whose keys start with ``prefix``), which holds as many train
        prompts as the split it was fitted on; a checkpoint loader calls it before checking shapes."""
        for name in ("neighbor_x", "neighbor_sq_norm", "neighbor_y"):
            if name in self._buffers and prefix + name in state:
                self._buffers[name] = torch.empty_like(state[prefix + name])

    def neighbor_member(self, features: torch.Tensor) -> torch.Tensor:
        """``[..., 2K]`` float32: the kNN member's output for features ``[..., F]``: the mean
        ``neighbor_y`` of the ``k`` rows of ``neighbor_x`` nearest (Euclidean) to each prompt's
        first ``E`` columns.

        Raises:
            RuntimeError: a kNN member that was not fitted.
        """
        if len(self.neighbor_x) == 0:
            raise RuntimeError("the outcome critic's kNN member was not fitted (set_neighbors)")
        x = features[..., : self.neighbor_features].reshape(-1, self.neighbor_features)
        # ||x - m||^2 less ||x||^2, which does not change the ranking of one prompt's neighbours
        distance = self.neighbor_sq_norm - 2.0 * x @ self.neighbor_x.T
        idx = distance.topk(int(self.neighbor_k[0]), dim=1, largest=False).indices
        return self.neighbor_y[idx].mean(1).reshape(*features.shape[:-1], -1)

    @torch.no_grad()
    def fit_cost_scale(self, cost_usd: torch.Tensor) -> torch.Tensor:
        """Set ``log_cost_mean`` and ``log_cost_std`` ``[K]`` to those of ``log(cost_usd)`` over
        ``cost_usd`` ``[P, K]`` (USD; costs below :data:`MIN_COST_USD` count as it, a std of 0 as 1)
        and return the standardised log costs ``[P, K]``, the cost head's regression targets (the
        inverse of what :meth:`forward` applies)."""
        logc = torch.log(cost_usd.clamp(min=MIN_COST_USD))
        std = logc.std(0, unbiased=False)
        self.log_cost_mean.copy_(logc.mean(0))
        self.log_cost_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))
        return (logc - self.log_cost_mean) / self.log_cost_std

    def raw(self, features: torch.Tensor) -> torch.Tensor:
        """``[M, ..., 2K]`` float32: each member's quality and standardised log cost (the kNN
        member, when there is one, last: ``M + 1`` rows)."""
        out = [member(features) for member in self.members]
        if self.neighbor_features is not None:
            out.append(self.neighbor_member(features))
        return torch.stack(out)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(quality [..., K] in [0, 1], cost_usd [..., K] > 0)`` estimated for features ``[..., F]``."""
        out = self.raw(features).mean(0)
        k = self.num_actions
        quality = out[..., :k].clamp(0.0, 1.0)
        cost = torch.exp(out[..., k:] * self.log_cost_std + self.log_cost_mean)
        return quality, cost


def _mlp(in_features: int, out_features: int, hidden: tuple[int, ...]) -> nn.Sequential:
    sizes = [in_features, *hidden]
    layers: list[nn.Module] = []
    for a, b in pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], out_features))
    return nn.Sequential(*layers)


class OutcomeActor(nn.Module):
    """The router of a policy of every trade-off, as the Boltzmann policy of an :class:`OutcomeCritic`.

    ``forward(obs [..., N, D], action_mask [..., N, K] bool | None) -> logits [..., N, K]``:
    ``(q̂_k - λ ĉ_k) / temperature``, where ``λ`` (USD^-1) is the observation's cost preference
    (a layout with ``cost_preference``; it is served at most at ``cost_weight_max``) or the layout's
    ``default_cost_weight``; masked entries are the dtype's minimum (probability 0). The one router
    network serves every router (``share_params`` True).

    Args:
        layout: the observation layout (its critic columns, preference column and cost weights).
        hidden: widths of each critic member's hidden layers.
        members: the critic's ensemble size (its MLPs).
        temperature: quality units per logit (> 0; agents ``temperature`` apart in ``q̂ - λ ĉ`` get
            probabilities ``e`` times apart).
        neighbors: the critic also has a kNN member over the embedding columns.

    Raises:
        ValueError: a layout without ``agent_prices`` (the features hold the prompt's length), or a
            temperature or member count out of range.
    """

    share_params = True

    def __init__(self, layout: ObsLayout, hidden: tuple[int, ...], members: int,
                 temperature: float, neighbors: bool = False) -> None:
        super().__init__()
        if layout.agent_prices is None:
            raise ValueError("an outcome actor needs the agents' prices (env.prompt_features)")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.layout, self.temperature = layout, float(temperature)
        columns = layout.critic_columns()
        # the embedding's columns come first in the critic's (ObsLayout.critic_columns)
        embedding = len(range(layout.dim)[layout.embedding_cols]) if neighbors else None
        self.critic = OutcomeCritic(len(columns), layout.num_agents, hidden, members, embedding)
        self.register_buffer("_columns", torch.tensor(columns, dtype=torch.long), persistent=False)

    def size_from_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Size the tensors that hold fitted data as in ``state``, this actor's state dict
        (:meth:`OutcomeCritic.size_from_state`)."""
        self.critic.size_from_state(state, "critic.")

    def outcome(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(quality, cost_usd)``, each ``[..., N, K]``, estimated for obs ``[..., N, D]``."""
        return self.critic(obs.index_select(-1, self._columns))

    def cost_weight(self, obs: torch.Tensor) -> torch.Tensor:
        """``[..., N, 1]`` float32 (or a 0-d tensor), the ``λ`` (USD^-1) each obs ``[..., N, D]`` routes at."""
        if not self.layout.cost_preference:
            return torch.tensor(self.layout.default_cost_weight, dtype=obs.dtype, device=obs.device)
        return self.layout.decode_preference(obs[..., self.layout.preference_cols])

    def forward(self, obs: torch.Tensor, action_mask: torch.Tensor | None = None) -> torch.Tensor:
        quality, cost = self.outcome(obs)
        logits = (quality - self.cost_weight(obs) * cost) / self.temperature
        if action_mask is not None:
            logits = logits.masked_fill(~action_mask, torch.finfo(logits.dtype).min)
        return logits

    def distribution(self, obs: torch.Tensor, action_mask: torch.Tensor | None = None):
        """``torch.distributions.Categorical`` over ``K`` agents, batch shape ``[..., N]``."""
        return torch.distributions.Categorical(logits=self(obs, action_mask), validate_args=False)
