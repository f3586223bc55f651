"""Actor (the routing policy) and critic networks for MAPPO/IPPO, with or without parameter sharing.

Shapes use ``B`` for any leading batch dims (``[T, B]`` during the update), ``N`` routers,
``D`` obs features, ``S = N * D`` state features and ``K`` agents.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch
from torch import nn

from contract.observation import ObsLayout
from policy.outcome import OutcomeActor


def orthogonal_init(module: nn.Module, gain: float) -> None:
    """Orthogonal weights and zero biases (Saxe et al. 2014; the PPO default, Engstrom et al. 2020,
    arXiv 2005.12729, sec. 3)."""
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight, gain)
        nn.init.zeros_(module.bias)


#: Initial inverse temperature ``β`` of an actor's cost penalty (logits per unit of quality).
PENALTY_SCALE_INIT = 10.0


class RouterLinear(nn.Module):
    """``N`` independent linear layers applied in one batched matmul: ``[..., N, I] -> [..., N, O]``."""

    def __init__(self, num_routers: int, in_features: int, out_features: int, gain: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_routers, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(num_routers, out_features))
        for w in self.weight.data:
            nn.init.orthogonal_(w.T, gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...ni,nio->...no", x, self.weight) + self.bias


class RouterMLP(nn.Module):
    """An MLP per router, shared or not: ``[..., N, I] -> [..., N, O]``.

    Args:
        in_features: ``I``.
        out_features: ``O``.
        num_routers: ``N``.
        share_params: one MLP for all routers (True) or ``N`` separate ones (False).
        hidden: widths of the hidden layers.
        out_gain: orthogonal gain of the last layer (0.01 for a policy head, 1 for a value head).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_routers: int,
        share_params: bool,
        hidden: tuple[int, ...] = (256, 256),
        out_gain: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_routers, self.share_params = num_routers, share_params
        sizes = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(pairwise(sizes)):
            gain = out_gain if i == len(sizes) - 2 else math.sqrt(2)
            if share_params:
                lin = nn.Linear(a, b)
                orthogonal_init(lin, gain)
                layers.append(lin)
            else:
                layers.append(RouterLinear(num_routers, a, b, gain))
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Actor(nn.Module):
    """Decentralised router policy: each router sees only its own obs.

    ``forward(obs [..., N, D], action_mask [..., N, K] bool | None) -> logits [..., N, K]`` with
    masked entries set to the dtype's minimum (probability 0).

    With ``penalty`` (the obs columns of the cost penalty ``cost_weight * ĉ_k``, quality units,
    see :mod:`contract.observation`) the logits are ``f(obs[columns])_k - β * penalty_k``, a
    Boltzmann policy over ``q̂_k - cost_weight * ĉ_k`` with one learned inverse temperature
    ``β > 0`` of the cost term (from :data:`PENALTY_SCALE_INIT`). ``f`` reads no column that
    depends on the cost weight, so the expected cost of the choices never rises with
    ``cost_weight``: the derivative of ``E_π[ĉ]`` in ``cost_weight`` is ``-β Var_π(ĉ) <= 0``, and
    the argmax only moves to agents of lower ``ĉ``.
    """

    def __init__(self, obs_dim: int, num_routers: int, num_actions: int, share_params: bool,
                 hidden: tuple[int, ...], columns: list[int] | None = None,
                 penalty: slice | None = None) -> None:
        super().__init__()
        in_features = obs_dim if columns is None else len(columns)
        self.net = RouterMLP(in_features, num_actions, num_routers, share_params, hidden, out_gain=0.01)
        self.register_buffer("_columns", torch.tensor(columns if columns is not None else [], dtype=torch.long),
                             persistent=False)
        self._select, self.penalty = columns is not None, penalty
        if penalty is not None:
            self.log_penalty_scale = nn.Parameter(torch.tensor(math.log(PENALTY_SCALE_INIT)))

    @property
    def share_params(self) -> bool:
        """One network for every router (True) or one per router."""
        return self.net.share_params

    def forward(self, obs: torch.Tensor, action_mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.net(obs.index_select(-1, self._columns) if self._select else obs)
        if self.penalty is not None:
            logits = logits - self.log_penalty_scale.exp() * obs[..., self.penalty]
        if action_mask is not None:
            logits = logits.masked_fill(~action_mask, torch.finfo(logits.dtype).min)
        return logits

    def distribution(self, obs: torch.Tensor, action_mask: torch.Tensor | None = None):
        """``torch.distributions.Categorical`` over ``K`` agents, batch shape ``[..., N]``."""
        return torch.distributions.Categorical(logits=self(obs, action_mask), validate_args=False)


class Critic(nn.Module):
    """State-value function, one value per router: ``[..., N]`` float32.

    ``centralised=True`` (MAPPO, Yu et al. 2021, arXiv 2103.01955): every router's value is a
    function of the global state ``[..., S]``; with shared parameters the router's one-hot id is
    appended so that per-router rewards stay learnable. ``centralised=False`` (IPPO, de Witt et al.
    2020, arXiv 2011.09533): each router's value is a function of its own obs ``[..., N, D]``.
    """

    def __init__(self, obs_dim: int, state_dim: int, num_routers: int, centralised: bool,
                 share_params: bool, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.centralised, self.share_params, self.num_routers = centralised, share_params, num_routers
        in_features = state_dim + (num_routers if share_params else 0) if centralised else obs_dim
        self.net = RouterMLP(in_features, 1, num_routers, share_params, hidden, out_gain=1.0)
        self.register_buffer("_eye", torch.eye(num_routers), persistent=False)

    def forward(self, obs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Values ``[..., N]`` from obs ``[..., N, D]`` and state ``[..., S]``."""
        if self.centralised:
            x = state.unsqueeze(-2).expand(*state.shape[:-1], self.num_routers, state.shape[-1])
            if self.share_params:
                x = torch.cat([x, self._eye.expand(*state.shape[:-1], self.num_routers, self.num_routers)], dim=-1)
        else:
            x = obs
        return self.net(x).squeeze(-1)


class RewardCritic(nn.Module):
    """Every agent's expected reward for a prompt: ``Q(obs)_k``, ``[..., N, K]`` float32 (reward units:
    quality in [0, 1] minus the cost term).

    A linear model per agent on the observation's ``columns`` (the prompt's embedding and, when the
    policy knows prices, its length): ``Q_k = obs[columns] · weight_k + bias_k``. It is fitted in
    closed form by ridge regression on logged decisions (:func:`training.retrain.learner.fit_reward_critic`),
    each agent's model on the decisions that chose it, shrunk towards a prior (a Bayesian linear
    model per arm, as in disjoint LinUCB, Li et al. 2010, arXiv 1003.0146, sec. 3.1). One logged
    decision teaches the critic about its own agent only; the actor then learns from the critic's
    estimate of every agent (:mod:`training.retrain.learner`).

    The fit also keeps each agent's posterior covariance ``covariance_k = σ̂² (X_kᵀX_k + λI)⁻¹``
    over ``[features, 1]`` (``[K, F + 1, F + 1]``), so :meth:`width` can say how unsure the estimate
    is for a prompt (the confidence width of LinUCB, Li et al. 2010, eq. 4, and of RegCB's bounds,
    Foster et al. 2018, arXiv 1803.01088). All zeros (a fresh critic, or a checkpoint saved before
    it was kept): no width is known, :meth:`width` is 0.

    Args:
        num_actions: ``K``.
        columns: observation columns it reads (``F`` of them).
        prior: ``[K]`` initial estimate of each agent's reward (its bias); None: 0.
    """

    def __init__(self, num_actions: int, columns: list[int], prior: list[float] | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_actions, len(columns)), requires_grad=False)
        bias = torch.tensor(prior, dtype=torch.float32) if prior is not None else torch.zeros(num_actions)
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.register_buffer("covariance", torch.zeros(num_actions, len(columns) + 1, len(columns) + 1))
        self.register_buffer("_columns", torch.tensor(columns, dtype=torch.long), persistent=False)

    @property
    def columns(self) -> torch.Tensor:
        """``[F]`` int64, the observation columns read."""
        return self._columns

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """``[..., F]`` float32, the columns of ``obs`` ``[..., D]`` the critic reads."""
        return obs.index_select(-1, self._columns)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """``[..., N, K]`` estimated reward of each agent for obs ``[..., N, D]``."""
        return self.features(obs) @ self.weight.T + self.bias

    def width(self, obs: torch.Tensor, agents: Sequence[int] | None = None) -> torch.Tensor:
        """``[..., N, K]`` float32, each agent's posterior standard deviation of its estimated
        reward for obs ``[..., N, D]``: ``sqrt(φ̃ᵀ covariance_k φ̃)`` with ``φ̃ = [features, 1]``
        (reward units; 0 where no covariance is known); with ``agents``, ``[..., N, len(agents)]``
        for those agents only (each costs ``(F + 1)²`` per observation)."""
        x = self.features(obs)
        x = torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)  # [..., N, F + 1]
        covariance = self.covariance if agents is None else self.covariance[list(agents)]
        quad = torch.einsum("...f,kfg,...g->...k", x, covariance, x)
        return quad.clamp_min(0.0).sqrt()


@dataclass(frozen=True)
class NetworkShape:
    """The sizes the actor and critic are built for.

    Attributes:
        obs_dim: ``D``, features of one router's obs.
        state_dim: ``S``, features of the global state (the centralised critic's input).
        num_routers: ``N``.
        num_actions: ``K``, the agents.
        actor_columns: the obs columns the actor reads (None: all).
        penalty_cols: the cost penalty's columns
            (:attr:`contract.observation.ObsLayout.penalty_cols`), None without agent prices.
        layout: the observation layout it was read from (an outcome actor needs it), or None.
    """

    obs_dim: int
    state_dim: int
    num_routers: int
    num_actions: int
    actor_columns: list[int] | None = None
    penalty_cols: slice | None = None
    layout: ObsLayout | None = None

    @classmethod
    def of_layout(cls, layout: ObsLayout) -> NetworkShape:
        """The shape of a PromptEnv policy with observations of ``layout``."""
        return cls(layout.dim, layout.state_dim, layout.num_routers, layout.num_agents, layout.actor_columns(),
                   layout.penalty_cols, layout)


def build_networks(network: Any, shape: NetworkShape) -> tuple[Actor | OutcomeActor, Critic]:
    """Fresh actor and critic (built in that order, so a seed gives the same weights) of the
    architecture ``network`` (``hidden``, ``share_params``, ``centralised_critic``, ``actor``,
    ``outcome_members``, ``outcome_neighbors``, ``temperature``: a :class:`~contract.policy_meta.NetworkMeta` or
    ``training.config.NetworkConfig``) for ``shape``: the one builder of the trainer, the cold start
    and the checkpoint loader. ``actor`` ``outcome`` builds a :class:`~policy.outcome.OutcomeActor`
    (it needs ``shape.layout``).

    Raises:
        ValueError: an outcome actor for a shape without a layout, or a layout it cannot read.
    """
    hidden = tuple(network.hidden)
    if network.actor == "outcome":
        if shape.layout is None:
            raise ValueError("an outcome actor is built from an observation layout")
        actor: Actor | OutcomeActor = OutcomeActor(shape.layout, hidden, network.outcome_members,
                                                   network.temperature, network.outcome_neighbors)
    else:
        actor = Actor(shape.obs_dim, shape.num_routers, shape.num_actions, network.share_params, hidden,
                      shape.actor_columns, shape.penalty_cols)
    critic = Critic(shape.obs_dim, shape.state_dim, shape.num_routers, network.centralised_critic,
                    network.share_params, hidden)
    return actor, critic


class PreferenceRewardCritic(RewardCritic):
    """The reward critic of a policy that serves every cost preference (a layout with
    ``cost_preference`` and prices): each agent's quality and cost are estimated apart and combined
    at the request's own ``cost_weight``, read back from the observation's preference column:

        ``Q_k(obs) = q̂_k(x) - cost_weight · (E_k + s · ĉ_k(x))``

    where ``q̂_k = x · weight_k + bias_k`` is the quality model (:class:`RewardCritic`'s, whose
    :meth:`width` it keeps), ``E_k`` the agent's expected cost of the prompt from its price (USD, read
    back from the expected-cost columns), and ``ĉ_k = x · cost_coef_k + cost_bias_k`` a linear
    correction of the realised cost over ``E_k`` in units of ``s = cost_scale_usd`` (0 before any
    feedback: the price rule). A record logged at one preference thus teaches the critic about every
    other preference, which a single reward model of ``quality - cost_weight · cost`` on the prompt
    could not (it would learn the average weight). The fit is :func:`training.retrain.learner.
    fit_reward_critic` with the records' quality and cost.

    Args:
        num_actions, columns, prior: as :class:`RewardCritic` (``prior``: each agent's quality).
        layout: the observation layout (``cost_preference`` and ``agent_prices`` set).

    Raises:
        ValueError: ``layout`` has no ``cost_preference`` or no prices.
    """

    def __init__(self, num_actions: int, columns: list[int], layout: ObsLayout,
                 prior: list[float] | None = None) -> None:
        if not layout.cost_preference or layout.agent_prices is None or layout.cost_scale_usd is None:
            raise ValueError("a preference reward critic needs a layout with cost_preference and prices")
        super().__init__(num_actions, columns, prior)
        self.cost_coef = nn.Parameter(torch.zeros(num_actions, len(columns)), requires_grad=False)
        self.cost_bias = nn.Parameter(torch.zeros(num_actions), requires_grad=False)
        self.layout = layout
        self.cost_scale_usd = float(layout.cost_scale_usd)
        expected = layout.cols("expected_cost")
        self.register_buffer("_expected_cols", torch.arange(expected.start, expected.stop), persistent=False)
        self.preference_col = layout.preference_cols.start

    def quality(self, obs: torch.Tensor) -> torch.Tensor:
        """``[..., N, K]`` float32, each agent's estimated quality for obs ``[..., N, D]``."""
        return super().forward(obs)

    def expected_cost(self, obs: torch.Tensor) -> torch.Tensor:
        """``[..., N, K]`` float32 USD, each agent's expected cost from its price (``E_k``)."""
        return torch.expm1(obs.index_select(-1, self._expected_cols)) * self.cost_scale_usd

    def cost(self, obs: torch.Tensor) -> torch.Tensor:
        """``[..., N, K]`` float32 USD, each agent's estimated cost, ``E_k + s · ĉ_k(x)``."""
        correction = self.features(obs) @ self.cost_coef.T + self.cost_bias
        return self.expected_cost(obs) + self.cost_scale_usd * correction

    def preference(self, obs: torch.Tensor) -> torch.Tensor:
        """``[..., N, 1]`` float32, the ``cost_weight`` (USD^-1) the observation was built at
        (:meth:`contract.observation.ObsLayout.decode_preference`)."""
        return self.layout.decode_preference(obs[..., self.preference_col:self.preference_col + 1])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """``[..., N, K]`` estimated reward of each agent at the observation's own preference."""
        return self.quality(obs) - self.preference(obs) * self.cost(obs)


def build_reward_critic(layout: ObsLayout, prior: list[float] | None = None) -> RewardCritic:
    """A fresh reward critic over ``layout``'s critic columns, biased at ``prior`` (``[K]``; None: 0):
    a :class:`PreferenceRewardCritic` for a layout that serves every cost preference, else a
    :class:`RewardCritic`."""
    if layout.cost_preference and layout.agent_prices is not None:
        return PreferenceRewardCritic(layout.num_agents, layout.critic_columns(), layout, prior)
    return RewardCritic(layout.num_agents, layout.critic_columns(), prior)
