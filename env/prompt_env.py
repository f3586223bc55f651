"""PromptEnv: routing prompts to capacity-limited specialist agents, as a batched cooperative game.

``B`` worlds step together on one torch device (as in VMAS, Bettini et al. 2022, arXiv 2207.03530).
In each world ``N`` routers each receive a prompt per step and pick one of ``K`` agents.

Dynamics per agent ``k`` (capacity ``c_k`` requests per step, ``inf`` if unbounded)::

    arrivals_k = #routers that chose k this step
    queue_k'   = max(0, queue_k + arrivals_k - c_k)
    load_k     = min(queue_k' / c_k, load_clip)          # steps of backlog, 0 when unbounded

Reward of router ``n`` that sent prompt ``p`` to agent ``k``::

    r_n = quality[p, k] - cost_weight * cost_usd[p, k] - congestion_weight * load_k

``f(load) = load``: the backlog a request joins, in steps of the agent's service rate, i.e. its
expected wait. With ``team`` sharing every router gets the mean of its world's ``r_n``.
Episodes are truncated after ``T`` steps (never terminated: routing has no terminal state) and
auto-reset: the queues are cleared and the obs returned is the first of the next episode, while
``final_obs``/``final_state`` hold the true next obs for bootstrapping the truncated step.

Observations follow :mod:`contract.observation` (``embedding ++ load (++ router id)``). Every
tensor stays on the env's device, with no host sync and no Python loop over worlds or routers per
step: an obs is one ``index_select`` of a ``[P, D]`` table of the prompts' zero-load obs whose load
(and router id) columns the layout then writes in place; ``state`` is a view of it. Every world's
clock advances together, so on a step that truncates nothing ``obs is final_obs``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from contract.observation import ObsLayout, build_obs
from contract.pricing import AgentPrice, expected_costs_usd
from env.config import EnvConfig
from env.specs import BatchedEnvSpecs, TensorSpec


@dataclass
class EnvStep:
    """What :meth:`PromptEnv.reset` and :meth:`PromptEnv.step` return.

    Attributes:
        obs: ``[B, N, D]`` float32, each router's observation (after auto-reset).
        state: ``[B, S]`` float32, ``S = N * D``: all routers' obs, for a centralised critic.
        action_mask: ``[B, N, K]`` bool, True where the agent may be chosen.
        reward: ``[B, N]`` float32 (zeros after reset).
        terminated: ``[B]`` bool, a terminal state was reached (never, in PromptEnv).
        truncated: ``[B]`` bool, the episode hit its time limit ``T``.
        final_obs: ``[B, N, D]`` float32, the next obs before auto-reset (== obs where not done; on
            a step where no world is done it is the very tensor ``obs``, which callers may use to
            skip recomputing anything on it).
        final_state: ``[B, S]`` float32, likewise for the state.
        quality: ``[B, N]`` float32, outcome quality of each routed prompt.
        cost_usd: ``[B, N]`` float32, USD cost of each routed prompt.
        congestion: ``[B, N]`` float32, ``f(load)`` of the agent each router chose.
        reward_all: ``[B, N, K]`` float32, the reward each router would have got from each agent
            with the other routers' choices unchanged (its own entry at ``action`` is ``reward``);
            None unless the env was built with ``all_action_rewards``.
    """

    obs: torch.Tensor
    state: torch.Tensor
    action_mask: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    final_obs: torch.Tensor
    final_state: torch.Tensor
    quality: torch.Tensor
    cost_usd: torch.Tensor
    congestion: torch.Tensor
    reward_all: torch.Tensor | None = None

    @property
    def done(self) -> torch.Tensor:
        """``[B]`` bool, ``terminated | truncated``."""
        return self.terminated | self.truncated

    def metrics(self) -> dict[str, torch.Tensor]:
        """Per-step figures the trainer logs (see :class:`env.base.MultiAgentStep`)."""
        return {"quality": self.quality, "cost_usd": self.cost_usd, "congestion": self.congestion}


class PromptEnv(BatchedEnvSpecs):
    """Batched multi-router routing game over a fixed set of embedded prompts.

    Args:
        embeddings: ``[P, E]`` float, prompt embeddings (unit norm for SBERT).
        quality: ``[P, K]`` float in [0, 1].
        cost_usd: ``[P, K]`` float, USD per call.
        capacity: length ``K``; requests per step each agent serves, None = unbounded.
        config: :class:`EnvConfig`.
        device: torch device for every tensor the env holds and returns.
        seed: seed of the env's own ``torch.Generator`` (prompt sampling, agents down).
        validate_actions: check every action's range and mask in :meth:`step` (one host sync per
            step; the trainer turns it off, its actions come from a masked policy).
        all_action_rewards: also report every agent's reward (:attr:`EnvStep.reward_all`), which
            the ``expected`` policy-gradient estimator learns from.
        tokens: ``[P]`` int, each prompt's :func:`contract.pricing.prompt_tokens`, and
        agent_prices: ``[K]`` the agents' price lists: together, the observation holds each
            prompt's length, each agent's expected cost of it and the cost penalty
            (:mod:`contract.observation`); None: it holds none of them.
        cost_scale_usd: USD the expected-cost features are divided by (None: their mean).

    Raises:
        ValueError: inconsistent shapes.
    """

    def __init__(
        self,
        embeddings: torch.Tensor | np.ndarray,
        quality: torch.Tensor | np.ndarray,
        cost_usd: torch.Tensor | np.ndarray,
        capacity: list[int | None],
        config: EnvConfig | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        validate_actions: bool = True,
        all_action_rewards: bool = False,
        tokens: Sequence[int] | np.ndarray | None = None,
        agent_prices: Sequence[AgentPrice] | None = None,
        cost_scale_usd: float | None = None,
    ) -> None:
        self.validate_actions = validate_actions
        self.all_action_rewards = all_action_rewards
        self.config = config or EnvConfig()
        self.device = torch.device(device)
        embeddings = torch.as_tensor(embeddings, dtype=torch.float32, device=self.device)
        self.quality = torch.as_tensor(quality, dtype=torch.float32, device=self.device)
        self.cost_usd = torch.as_tensor(cost_usd, dtype=torch.float32, device=self.device)
        if embeddings.ndim != 2 or self.quality.ndim != 2 or self.quality.shape != self.cost_usd.shape:
            raise ValueError("expected embeddings [P, E], quality [P, K] and cost_usd [P, K]")
        if embeddings.shape[0] != self.quality.shape[0]:
            raise ValueError(f"{embeddings.shape[0]} embeddings for {self.quality.shape[0]} prompts")
        if len(capacity) != self.quality.shape[1]:
            raise ValueError(f"{len(capacity)} capacities for {self.quality.shape[1]} agents")
        self.capacity = torch.tensor(
            [math.inf if c is None else float(c) for c in capacity], dtype=torch.float32, device=self.device
        )
        cfg = self.config
        self.num_worlds, self.num_routers, self.episode_len = cfg.num_worlds, cfg.num_routers, cfg.episode_len
        self.num_prompts, self.embed_dim = embeddings.shape
        self.num_agents = self.quality.shape[1]
        #: the observation's layout (recorded in checkpoints as ``obs_layout``)
        self._preference = cfg.cost_weight_range is not None
        expected_cost = None
        if agent_prices is not None:
            if tokens is None or len(tokens) != self.quality.shape[0]:
                raise ValueError("agent_prices needs tokens [P], one count per prompt")
            expected_cost = expected_costs_usd(agent_prices, tokens)
            cost_scale_usd = cost_scale_usd or float(expected_cost.mean()) or 1.0
        self.layout = ObsLayout(embed_dim=self.embed_dim, num_agents=self.num_agents, num_routers=self.num_routers,
                                include_agent_id=cfg.include_agent_id, load_clip=cfg.load_clip,
                                cost_preference=self._preference,
                                cost_weight_max=cfg.cost_weight_range[1] if cfg.cost_weight_range else None,
                                default_cost_weight=cfg.cost_weight,
                                agent_prices=tuple(agent_prices) if agent_prices is not None else None,
                                cost_scale_usd=cost_scale_usd if agent_prices is not None else None)
        self.obs_dim, self.state_dim = self.layout.dim, self.layout.state_dim
        self._gen = torch.Generator(device=self.device).manual_seed(seed)
        B, N, K = self.num_worlds, self.num_routers, self.num_agents
        # [P, D] float32: each prompt's obs at zero load, router id 0 (overwritten per step)
        self._obs_table = build_obs(self.layout, embeddings, tokens=None if tokens is None else
                                    torch.as_tensor(np.asarray(tokens), device=self.device))[:, 0]
        #: ``[P, K]`` float32 USD, each agent's expected cost of each prompt (None without prices)
        self.expected_cost = (None if expected_cost is None else
                              torch.as_tensor(expected_cost, dtype=torch.float32, device=self.device))
        self.embeddings = self._obs_table[:, self.layout.embedding_cols]
        # all agents unbounded (the shipped data): queues and loads stay 0, nothing to track
        self._unbounded = bool(torch.isinf(self.capacity).all())
        self._ones = torch.ones(B, N, device=self.device)
        self.queue = torch.zeros(B, K, device=self.device)
        self.t = torch.zeros(B, dtype=torch.long, device=self.device)
        self.prompt_idx = torch.zeros(B, N, dtype=torch.long, device=self.device)
        self.agent_up = torch.ones(B, K, dtype=torch.bool, device=self.device)
        #: ``[B]`` float32, USD^-1: the cost weight of each world's episode
        self.cost_weight = torch.full((B,), cfg.cost_weight, device=self.device)

    @property
    def t(self) -> torch.Tensor:
        """``[B]`` int64, steps taken in each world's current episode."""
        return self._t

    @t.setter
    def t(self, value: torch.Tensor) -> None:
        self._t = value
        # the host no longer knows the clock: the next step reads it back once (see _host_clock)
        self._host_t: int | None = None

    def _host_clock(self) -> int:
        """The step count shared by every world, or -1 when the worlds' clocks differ.

        ``reset`` and ``step`` keep it on the host for free; after ``t`` was assigned from outside
        (a test, a restored state) it is read back from the device once.
        """
        if self._host_t is None:
            lo, hi = torch.aminmax(self._t)
            lo, hi = int(lo), int(hi)
            self._host_t = lo if lo == hi else -1
        return self._host_t

    @property
    def num_actions(self) -> int:
        """``K``: a router's action is the index of an agent (the :class:`env.base.MultiAgentEnv` API)."""
        return self.num_agents

    # ----------------------------------------------------------------- specs
    @property
    def reward_spec(self) -> TensorSpec:
        cfg = self.config
        top_weight = max(cfg.cost_weight, cfg.cost_weight_range[1] if cfg.cost_weight_range else 0.0)
        low = -top_weight * float(self.cost_usd.max()) - cfg.congestion_weight * cfg.load_clip
        return TensorSpec((self.num_worlds, self.num_routers), torch.float32, low - 1e-6, 1.0 + 1e-6)

    # ------------------------------------------------------------- dynamics
    def load(self) -> torch.Tensor:
        """``[B, K]`` float32, normalised load ``min(queue / capacity, load_clip)`` (0 if unbounded)."""
        return (self.queue / self.capacity).clamp(max=self.config.load_clip)

    def _observe(self, load: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(obs [B, N, D], state [B, S])`` of the current prompts; ``state`` is a view of ``obs``.

        ``load`` ``[B, K]`` is written into every router's load columns; None means all zero.
        """
        B, N = self.num_worlds, self.num_routers
        obs = self._obs_table.index_select(0, self.prompt_idx.reshape(-1)).view(B, N, self.obs_dim)
        if load is not None:
            self.layout.write_load(obs, load)
        if self._preference:
            self.layout.write_preference(obs, self.cost_weight)
        if self.expected_cost is not None:
            cost = self.expected_cost.index_select(0, self.prompt_idx.reshape(-1)).view(B, N, -1)
            self.layout.write_cost_penalty(obs, cost, self.cost_weight)
        self.layout.write_router_ids(obs)
        return obs, obs.view(B, self.state_dim)

    def _mask(self) -> torch.Tensor:
        return self.agent_up.unsqueeze(1).expand(self.num_worlds, self.num_routers, self.num_agents)

    def _sample_prompts(self) -> None:
        self.prompt_idx = torch.randint(
            self.num_prompts, (self.num_worlds, self.num_routers), generator=self._gen, device=self.device
        )

    def _reset_worlds(self, which: torch.Tensor) -> None:
        """Clear queues, clocks and agent outages of the worlds where ``which`` ([B] bool) is set."""
        keep = (~which).unsqueeze(-1)
        self.queue = self.queue * keep
        self._t = self._t * (~which)
        p = self.config.agent_down_prob
        if p > 0:
            down = torch.rand(self.agent_up.shape, generator=self._gen, device=self.device) < p
            # keep at least one agent up: one drawn at random per world is forced up
            down.scatter_(1, torch.randint(self.num_agents, (self.num_worlds, 1), generator=self._gen,
                                           device=self.device), False)
            self.agent_up = torch.where(keep, self.agent_up, ~down)
        if self._preference:
            self._draw_cost_weights(which)

    def _draw_cost_weights(self, which: torch.Tensor) -> None:
        """New episodes' ``cost_weight``: log-uniform in ``cost_weight_range``, or 0 with
        probability ``cost_weight_zero_share``."""
        cfg = self.config
        assert cfg.cost_weight_range is not None
        low, high = (math.log(x) for x in cfg.cost_weight_range)
        u = torch.rand(self.num_worlds, generator=self._gen, device=self.device)
        zero = torch.rand(self.num_worlds, generator=self._gen, device=self.device) < cfg.cost_weight_zero_share
        drawn = torch.exp(low + u * (high - low)).masked_fill(zero, 0.0)
        self.cost_weight = torch.where(which, drawn, self.cost_weight)

    def reset(self, seed: int | None = None) -> EnvStep:
        """Start a new episode in every world; returns its first obs (rewards zero, nothing done)."""
        if seed is not None:
            self._gen.manual_seed(seed)
        all_worlds = torch.ones(self.num_worlds, dtype=torch.bool, device=self.device)
        self._reset_worlds(all_worlds)
        self._host_t = 0
        self._sample_prompts()
        obs, state = self._observe(None)  # the queues were just cleared
        zeros = torch.zeros(self.num_worlds, self.num_routers, device=self.device)
        done = ~all_worlds
        return EnvStep(obs, state, self._mask(), zeros, done, done, obs, state, zeros, zeros, zeros)

    def step(self, action: torch.Tensor) -> EnvStep:
        """Route every router's current prompt to ``action`` and advance one step.

        Args:
            action: ``[B, N]`` int64 in ``[0, K)``, allowed by the current action mask.

        Raises:
            ValueError: wrong shape; with ``validate_actions``, an action outside ``[0, K)`` or
                masked.
        """
        B, N, K = self.num_worlds, self.num_routers, self.num_agents
        if action.shape != (B, N):
            raise ValueError(f"action must have shape {(B, N)}, got {tuple(action.shape)}")
        action = action.to(self.device, torch.long)
        if self.validate_actions:
            self.check_range(action)
            if not self._mask().gather(-1, action.unsqueeze(-1)).all():
                raise ValueError("an action chose an agent that is masked (down)")
        cfg = self.config
        clock = self._host_clock()
        load: torch.Tensor | None
        queue_before, arrivals = self.queue, None
        if self._unbounded:
            # queue + arrivals - inf clamps to 0: no queue, no load, no congestion
            self.queue = torch.zeros_like(self.queue)
            load = None
            congestion = torch.zeros(B, N, device=self.device)
        else:
            arrivals = torch.zeros(B, K, device=self.device).scatter_add_(1, action, self._ones)
            self.queue = (self.queue + arrivals - self.capacity).clamp(min=0.0)
            load = self.load()
            congestion = load.gather(1, action)
        flat = self.prompt_idx * K + action  # [B, N] index into the flattened [P, K] tables
        quality = self.quality.take(flat)
        cost = self.cost_usd.take(flat)
        # quality - cost_weight * cost - congestion_weight * congestion; a zero-weight term adds
        # exactly 0, so it is skipped
        reward = quality.clone()
        if self._preference:
            reward = reward - self.cost_weight.unsqueeze(1) * cost
        elif cfg.cost_weight:
            reward = reward - cfg.cost_weight * cost
        if cfg.congestion_weight:
            reward = reward - cfg.congestion_weight * congestion
        reward_all = self._reward_all(action, reward, queue_before, arrivals, congestion) if self.all_action_rewards \
            else None
        if cfg.reward_sharing == "team":
            team = reward.mean(dim=1, keepdim=True)
            if reward_all is not None:  # router n's choice moves the team mean by (r_nk - r_n) / N
                reward_all = team.unsqueeze(-1) + (reward_all - reward.unsqueeze(-1)) / N
            reward = team.expand(B, N)
        self._t = self._t + 1
        truncated = self._t >= self.episode_len
        terminated = torch.zeros_like(truncated)
        self._sample_prompts()
        final_obs, final_state = self._observe(load)
        if clock >= 0 and clock + 1 < self.episode_len:
            # no world is truncated: nothing to reset, the next obs is the final obs
            self._host_t = clock + 1
            if cfg.agent_down_prob > 0:
                self._reset_worlds(truncated)  # draws the outages as always (same random stream)
            obs, state = final_obs, final_state
        else:
            self._reset_worlds(truncated)
            if clock >= 0:  # every world was truncated and reset together
                self._host_t = 0
                obs, state = self._observe(None)
            else:
                obs, state = self._observe(None if self._unbounded else self.load())
        return EnvStep(obs, state, self._mask(), reward, terminated, truncated, final_obs, final_state,
                       quality, cost, congestion, reward_all)

    def _reward_all(self, action: torch.Tensor, reward: torch.Tensor, queue_before: torch.Tensor,
                    arrivals: torch.Tensor | None, congestion: torch.Tensor) -> torch.Tensor:
        """``[B, N, K]`` each router's own reward had it chosen each agent, the others' choices fixed:
        agent ``k`` then had one more arrival, so its load is that of ``arrivals_k + 1``."""
        B, N, K = self.num_worlds, self.num_routers, self.num_agents
        rows = self.prompt_idx.reshape(-1)
        out = self.quality.index_select(0, rows).view(B, N, K).clone()
        cfg = self.config
        if self._preference or cfg.cost_weight:
            weight = self.cost_weight.view(B, 1, 1) if self._preference else cfg.cost_weight
            out -= weight * self.cost_usd.index_select(0, rows).view(B, N, K)
        if cfg.congestion_weight and arrivals is not None:
            one_more = ((queue_before + arrivals + 1.0 - self.capacity).clamp(min=0.0) / self.capacity)
            load_if = one_more.clamp(max=cfg.load_clip).unsqueeze(1).expand(B, N, K).clone()
            load_if.scatter_(2, action.unsqueeze(-1), congestion.unsqueeze(-1))  # its own choice: as it was
            out -= cfg.congestion_weight * load_if
        out.scatter_(2, action.unsqueeze(-1), reward.unsqueeze(-1))  # exactly the reward it got
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The dynamic state (queues, clocks, prompts, outages, RNG) for resuming a training run."""
        return {"queue": self.queue.clone(), "t": self.t.clone(), "prompt_idx": self.prompt_idx.clone(),
                "agent_up": self.agent_up.clone(), "cost_weight": self.cost_weight.clone(),
                "rng": self._gen.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict`'s output.

        Raises:
            ValueError: a state of other shapes (another ``num_worlds``, ``N`` or ``K``).
        """
        for name in ("queue", "t", "prompt_idx", "agent_up", "cost_weight"):
            if name not in state:  # a state saved before per-world cost weights
                continue
            if state[name].shape != getattr(self, name).shape:
                raise ValueError(f"env state {name!r} has shape {tuple(state[name].shape)}, "
                                 f"this env has {tuple(getattr(self, name).shape)}")
            setattr(self, name, state[name].to(self.device))
        self._gen.set_state(state["rng"])

    def check_range(self, action: torch.Tensor) -> None:
        """Raise ``ValueError`` when any action is outside ``[0, K)`` (one host sync)."""
        if action.min() < 0 or action.max() >= self.num_agents:
            raise ValueError(f"actions must lie in [0, {self.num_agents})")
