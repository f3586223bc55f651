"""What a router policy observes: the column layout of an observation and the one builder of it.

The trainer (:class:`env.prompt_env.PromptEnv`), the checkpoint (:class:`policy.artefact.Policy`),
the server, the retrain job and the capacity eval all build observations here, so adding a feature
means editing this file. The columns, in order (``D = E + K (+ 1 + 2K) (+ 1) (+ N)``)::

    [ embedding (E) | load (K)
      | prompt tokens (1) | expected cost (K) | cost penalty (K)    (only with agent_prices)
      | cost preference (1, only with cost_preference)
      | router one-hot (N, only with include_agent_id) ]

With ``agent_prices``, the prompt's length is ``log1p(tokens) / log1p(TOKEN_SCALE)`` clipped to
``[0, 1]``, each agent's expected cost ``ĉ_k`` (:func:`contract.pricing.expected_costs_usd`) is
``log1p(ĉ_k / cost_scale_usd)``, and the cost penalty is ``cost_weight * ĉ_k`` (quality units:
the expected cost term of the reward). The actor subtracts the penalty from its logits instead of
reading it (:class:`policy.networks.Actor`), which makes its routing monotone in
``cost_weight``; :meth:`ObsLayout.actor_columns` are the columns its network reads.

The cost preference of a policy trained for every trade-off is ``log1p(cost_weight) /
log1p(cost_weight_max)``, clipped to ``[0, 1]`` (:meth:`ObsLayout.preference_feature`).

``load`` is each agent's normalised backlog, ``min(queue_k / c_k, load_clip)`` in training and
:func:`normalised_load` of the in-flight requests when serving (see ``docs/serving.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.pricing import AgentPrice, expected_costs_usd

#: Names of the observation's parts, in column order.
PARTS = ("embedding", "load", "prompt_tokens", "expected_cost", "cost_penalty", "cost_preference", "router_id")
#: Prompt length (tokens) that the length feature maps to 1.
TOKEN_SCALE = 8192


class CostWeightError(ValueError):
    """A ``cost_weight`` for a policy trained at one cost weight (:meth:`ObsLayout.resolve_cost_weight`)."""


class ObsLayout(BaseModel):
    """Shape of a router's observation; recorded in ``policy.json`` as ``obs_layout``.

    Attributes:
        embed_dim: ``E``, width of the prompt embedding.
        num_agents: ``K``, specialist agents (one load column each).
        num_routers: ``N``, routers the policy was trained with.
        include_agent_id: a one-hot router id ``[N]`` ends the observation (the config key's
            historical name: it is the *router's* id, not an agent's).
        load_clip: loads are clipped to ``[0, load_clip]``.
        cost_preference: the observation holds the request's cost preference (a policy trained
            for every ``cost_weight`` in ``[0, cost_weight_max]``, USD^-1).
        cost_weight_max: the largest trained ``cost_weight`` (needed with ``cost_preference``).
        default_cost_weight: the ``cost_weight`` used when none is given.
        agent_prices: ``[K]`` each agent's price list: the observation holds the prompt's length,
            each agent's expected cost and the cost penalty (None: it holds none of them).
        cost_scale_usd: USD the expected costs are divided by (needed with ``agent_prices``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    embed_dim: int = Field(ge=1)
    num_agents: int = Field(ge=1)
    num_routers: int = Field(default=1, ge=1)
    include_agent_id: bool = False
    load_clip: float = Field(default=4.0, gt=0.0)
    cost_preference: bool = False
    cost_weight_max: float | None = Field(default=None, gt=0.0)
    default_cost_weight: float = Field(default=0.0, ge=0.0)
    agent_prices: tuple[AgentPrice, ...] | None = None
    cost_scale_usd: float | None = Field(default=None, gt=0.0)
    #: derived, written for readers of the file; checked on load
    obs_dim: int | None = None
    parts: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _derived(self) -> ObsLayout:
        if self.cost_preference and self.cost_weight_max is None:
            raise ValueError("cost_preference needs cost_weight_max")
        if self.agent_prices is not None:
            if len(self.agent_prices) != self.num_agents:
                raise ValueError(f"{len(self.agent_prices)} agent prices for {self.num_agents} agents")
            if self.cost_scale_usd is None:
                raise ValueError("agent_prices needs cost_scale_usd")
        widths = self.widths()
        dim = sum(widths.values())
        if self.obs_dim is not None and self.obs_dim != dim:
            raise ValueError(f"obs_dim {self.obs_dim} does not match the parts' widths "
                             f"{' + '.join(f'{p} {w}' for p, w in widths.items())} = {dim}")
        parts = tuple(widths)
        if self.parts is not None and tuple(self.parts) != parts:
            raise ValueError(f"obs parts {list(self.parts)} are not {list(parts)}")
        object.__setattr__(self, "obs_dim", dim)
        object.__setattr__(self, "parts", parts)
        return self

    def widths(self) -> dict[str, int]:
        """``{part: columns}`` of the parts present, in column order."""
        k, prices = self.num_agents, self.agent_prices is not None
        all_widths = {"embedding": self.embed_dim, "load": k, "prompt_tokens": int(prices),
                      "expected_cost": k * prices, "cost_penalty": k * prices,
                      "cost_preference": int(self.cost_preference),
                      "router_id": self.num_routers if self.include_agent_id else 0}
        return {p: w for p, w in all_widths.items() if w}

    def cols(self, part: str) -> slice:
        """The columns of ``part`` (one of :data:`PARTS`; an empty slice when it is absent)."""
        start, widths = 0, self.widths()
        for name in PARTS:
            width = widths.get(name, 0)
            if name == part:
                return slice(start, start + width)
            start += width
        raise KeyError(part)

    @property
    def dim(self) -> int:
        """``D``, the observation width."""
        assert self.obs_dim is not None
        return self.obs_dim

    @property
    def state_dim(self) -> int:
        """``S = N * D``, the centralised critic's input (all routers' obs)."""
        return self.num_routers * self.dim

    @property
    def embedding_cols(self) -> slice:
        return self.cols("embedding")

    @property
    def load_cols(self) -> slice:
        return self.cols("load")

    @property
    def preference_cols(self) -> slice:
        return self.cols("cost_preference")

    @property
    def router_id_cols(self) -> slice:
        return self.cols("router_id")

    @property
    def penalty_cols(self) -> slice | None:
        """The cost penalty's columns, None without ``agent_prices``."""
        return self.cols("cost_penalty") if self.agent_prices is not None else None

    def actor_columns(self) -> list[int] | None:
        """Columns the actor's network reads: all but the cost penalty and the cost preference,
        which reach the actor only through the penalty it subtracts. None (all columns) without
        ``agent_prices``."""
        if self.agent_prices is None:
            return None
        skip = {*range(self.dim)[self.cols("cost_penalty")], *range(self.dim)[self.preference_cols]}
        return [c for c in range(self.dim) if c not in skip]

    def critic_columns(self) -> list[int]:
        """Columns the reward critic (:class:`policy.networks.RewardCritic`) reads: the
        embedding, and the prompt's length when the layout has ``agent_prices``."""
        return [*range(self.dim)[self.embedding_cols], *range(self.dim)[self.cols("prompt_tokens")]]

    def expected_costs(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """``[P, K]`` float64 USD, each agent's expected cost of prompts of ``tokens`` tokens.

        Raises:
            ValueError: a layout without ``agent_prices``.
        """
        if self.agent_prices is None:
            raise ValueError("this policy does not know the agents' prices")
        return expected_costs_usd(self.agent_prices, tokens)

    def write_prompt(self, obs: torch.Tensor, tokens: torch.Tensor,
                     expected_cost: torch.Tensor | None = None) -> torch.Tensor:
        """Write the length and expected-cost features of prompts of ``tokens`` tokens (``[B]``,
        one prompt per world, or ``[B, N]``) into ``obs`` ``[B, N, D]`` in place; returns the
        expected costs ``[B, N, K]`` float32 USD, for :meth:`write_cost_penalty`.

        ``expected_cost``: ``[B, K]`` float32 USD, :meth:`expected_costs` of ``tokens`` already
        computed (a graph traced from this code takes them as an input); None: computed here."""
        assert self.agent_prices is not None and self.cost_scale_usd is not None
        b, n = obs.shape[:2]
        tokens = (tokens.reshape(b, 1) if tokens.numel() == b else tokens.reshape(b, n)).expand(b, n)
        if expected_cost is not None:
            cost = expected_cost.to(obs.dtype).reshape(b, 1, self.num_agents).expand(b, n, self.num_agents)
        else:
            cost = torch.as_tensor(self.expected_costs(tokens.reshape(-1).cpu().numpy()), dtype=obs.dtype,
                                   device=obs.device).view(*obs.shape[:2], self.num_agents)
        length = torch.log1p(tokens.to(obs.dtype).clamp(min=0)) / math.log1p(TOKEN_SCALE)
        obs[..., self.cols("prompt_tokens")] = length.clamp(max=1.0).unsqueeze(-1)
        obs[..., self.cols("expected_cost")] = torch.log1p(cost / self.cost_scale_usd)
        return cost

    def resolve_cost_weight(self, cost_weight: torch.Tensor | float | None) -> torch.Tensor | float:
        """The cost weight (USD^-1) an observation of this layout is built at: ``cost_weight`` (a
        float, or ``[B]`` one per world), or ``default_cost_weight`` when None. The one place a
        cost weight is defaulted and refused, for the trainer's env and the server alike.

        Raises:
            CostWeightError: a ``cost_weight`` for a layout without ``cost_preference`` (a policy
                trained at one cost weight).
        """
        if cost_weight is None:
            return self.default_cost_weight
        if not self.cost_preference:
            raise CostWeightError("this policy was trained at one cost weight; it takes no cost_weight (train with "
                                  "env.cost_weight_range for a policy of every trade-off)")
        return cost_weight

    def write_cost_penalty(self, obs: torch.Tensor, expected_cost: torch.Tensor,
                           cost_weight: torch.Tensor | float | None) -> None:
        """Write ``cost_weight * expected_cost`` (``expected_cost`` ``[B, N, K]`` USD; ``cost_weight``
        USD^-1, a float or ``[B]``; None: ``default_cost_weight``) into ``obs`` ``[B, N, D]`` in
        place (no-op without ``agent_prices``)."""
        if self.agent_prices is None:
            return
        # the weight the penalty is trained at (also that of a policy trained at one cost weight)
        cw = torch.as_tensor(self.default_cost_weight if cost_weight is None else cost_weight,
                             dtype=obs.dtype, device=obs.device)
        obs[..., self.cols("cost_penalty")] = expected_cost * (cw.reshape(-1, 1, 1) if cw.ndim else cw)

    def preference_feature(self, cost_weight: torch.Tensor) -> torch.Tensor:
        """``log1p(cost_weight) / log1p(cost_weight_max)`` clipped to ``[0, 1]`` (same shape)."""
        assert self.cost_weight_max is not None
        return (torch.log1p(cost_weight.clamp(min=0.0)) / math.log1p(self.cost_weight_max)).clamp(max=1.0)

    def decode_preference(self, feature: torch.Tensor) -> torch.Tensor:
        """The ``cost_weight`` (USD^-1, same shape) of a :meth:`preference_feature` (the inverse on
        ``[0, cost_weight_max]``; a weight above ``cost_weight_max`` decodes to it)."""
        assert self.cost_weight_max is not None
        return torch.expm1(feature.clamp(0.0, 1.0) * math.log1p(self.cost_weight_max))

    def write_preference(self, obs: torch.Tensor, cost_weight: torch.Tensor | float | None) -> None:
        """Write the cost preference of ``cost_weight`` (a float, or ``[B]`` one per world; None:
        ``default_cost_weight``) into every router's column of ``obs`` ``[B, N, D]``, in place.

        Raises:
            CostWeightError: a ``cost_weight`` for a layout without ``cost_preference``
                (:meth:`resolve_cost_weight`).
        """
        resolved = self.resolve_cost_weight(cost_weight)
        if not self.cost_preference:
            return
        cw = torch.as_tensor(resolved, dtype=obs.dtype, device=obs.device)
        feature = self.preference_feature(cw).reshape(-1, 1, 1) if cw.ndim else self.preference_feature(cw)
        obs[..., self.preference_cols] = feature

    def write_load(self, obs: torch.Tensor, load: torch.Tensor) -> None:
        """Write ``load`` (``[B, K]``, or ``[B, N, K]``) into every router's load columns of
        ``obs`` ``[B, N, D]``, in place."""
        obs[..., self.load_cols] = load.unsqueeze(1) if load.ndim == 2 else load

    def write_router_ids(self, obs: torch.Tensor, router: int | None = None) -> None:
        """Write the one-hot router ids into ``obs`` ``[B, N, D]`` in place (no-op without them).

        ``router`` None: position ``n`` is router ``n`` (needs ``N`` positions); an int: every
        position is that router (serving one router of the policy).
        """
        if not self.include_agent_id:
            return
        # assigned through obs[...] rather than written into a view of it: a graph traced from this
        # code (policy.onnx_head) keeps an assignment, and loses a write into a view
        eye = torch.eye(self.num_routers, dtype=obs.dtype, device=obs.device)
        if router is None:
            if obs.shape[1] != self.num_routers:
                raise ValueError(f"{obs.shape[1]} router positions for a policy of {self.num_routers} routers")
            obs[..., self.router_id_cols] = eye
        else:
            if not 0 <= router < self.num_routers:
                raise ValueError(f"router {router} outside [0, {self.num_routers})")
            obs[..., self.router_id_cols] = eye[router]

    def load_of(self, obs: torch.Tensor) -> torch.Tensor:
        """The load columns of ``obs`` ``[..., D]``: a view ``[..., K]``."""
        return obs[..., self.load_cols]


def build_obs(
    layout: ObsLayout,
    embedding: torch.Tensor,
    load: torch.Tensor | None = None,
    router: int | None = None,
    cost_weight: torch.Tensor | float | None = None,
    tokens: torch.Tensor | None = None,
    expected_cost: torch.Tensor | None = None,
) -> torch.Tensor:
    """The observation of each router from its parts.

    Args:
        layout: the policy's :class:`ObsLayout`.
        embedding: ``[B, E]`` (one router position) or ``[B, N, E]`` float32 prompt embeddings.
        load: ``[B, K]`` float32 normalised load (the same for every router of a world), already
            clipped to ``[0, load_clip]``; None: zero.
        router: as :meth:`ObsLayout.write_router_ids`; with one position and None, router 0.
        cost_weight: USD^-1, a float or ``[B]``; as :meth:`ObsLayout.write_preference`.
        tokens: ``[B]`` int, each prompt's :func:`contract.pricing.prompt_tokens` (needed by a
            layout with ``agent_prices``, ignored by others).
        expected_cost: ``[B, K]`` float32 USD, the layout's :meth:`ObsLayout.expected_costs` of
            ``tokens`` when already computed; None: computed from ``tokens``.

    Returns:
        ``[B, N, D]`` (``N = 1`` for a ``[B, E]`` embedding) float32, on ``embedding``'s device.

    Raises:
        ValueError: a part of the wrong width, a ``cost_weight`` the layout does not take, or no
            ``tokens`` for a layout that observes them.
    """
    if embedding.ndim == 2:
        embedding = embedding.unsqueeze(1)
        router = 0 if router is None else router
    b, n, e = embedding.shape
    if e != layout.embed_dim:
        raise ValueError(f"embedding has {e} dims, the layout {layout.embed_dim}")
    obs = torch.zeros(b, n, layout.dim, dtype=torch.float32, device=embedding.device)
    obs[..., layout.embedding_cols] = embedding
    if load is not None:
        if load.shape[-1] != layout.num_agents:
            raise ValueError(f"load has {load.shape[-1]} agents, the layout {layout.num_agents}")
        layout.write_load(obs, load.to(obs.dtype))
    layout.write_preference(obs, cost_weight)
    if layout.agent_prices is not None:
        if tokens is None or tokens.shape[0] != b:
            raise ValueError(f"this policy observes each prompt's length: pass tokens [{b}]")
        cost = layout.write_prompt(obs, tokens, expected_cost)
        layout.write_cost_penalty(obs, cost, cost_weight)
    layout.write_router_ids(obs, router)
    return obs


def normalised_load(
    in_flight: Sequence[int], capacities: Sequence[int | None], load_clip: float
) -> np.ndarray:
    """``[K]`` float32 serving-time load: ``min(max(0, n_k - c_k) / c_k, load_clip)``.

    ``n_k`` requests in flight at an agent of capacity ``c_k`` (requests per env step) stand for
    training's backlog after a step, ``queue_k = max(0, n_k - c_k)`` (derivation in
    ``docs/serving.md``). Unbounded agents (``c_k`` None) have load 0.

    Raises:
        ValueError: ``in_flight`` and ``capacities`` differ in length.
    """
    if len(in_flight) != len(capacities):
        raise ValueError(f"{len(in_flight)} in-flight counts for {len(capacities)} agents")
    load = np.zeros(len(capacities), dtype=np.float32)
    for k, (n, c) in enumerate(zip(in_flight, capacities, strict=True)):
        if c is not None:
            load[k] = min(max(0, int(n) - c) / c, load_clip)
    return load


def capacity_or_none(value: object) -> int | None:
    """A capacity as recorded (a positive finite number, or None: unbounded).

    Raises:
        ValueError: anything else.
    """
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 and math.isfinite(value):
        return int(value)
    raise ValueError(f"capacity {value!r} is not a positive number or null")
