"""Policy serving: build the observation of a prompt, run the policy, choose an agent.

Everything here is synchronous. The app calls :meth:`RoutingService.route` on the event loop with
the embedding the micro-batcher computed (:mod:`router.batcher`), so a route costs one small
forward pass there.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import threading
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from contract.errors import DomainError
from contract.experience import SCHEMA_VERSION, DecisionContext, encode_embedding
from contract.observation import CostWeightError, normalised_load
from contract.pricing import prompt_tokens
from env.embedder import Embedder
from experience.base import utc_now_iso
from policy.artefact import Policy
from policy.checkpoint import CheckpointError
from policy.exploration import inverse_gap_weighting
from policy.onnx_head import DecisionHead
from router.inflight import NoAgentAvailable


class CandidateError(DomainError):
    """``candidates`` names no agent, repeats one, or names one the policy does not know (422)."""

    status_code = 422


class PreferenceError(DomainError):
    """A cost preference the request cannot have: a ``cost_weight`` for a policy trained at one cost
    weight, both a ``cost_weight`` and a budget, or a budget no allowed agent fits (422)."""

    status_code = 422


@dataclass(frozen=True)
class RoutePlan:
    """A request validated against one policy (:meth:`RoutingService.plan`).

    Attributes:
        prompt: the text routed on.
        candidates: the agents the request named (None: all), for messages.
        allowed: ``[K]`` bool, the agents it allows before live state (candidates within budget).
        cost_weight: the cost preference the observation holds (USD^-1); None for a policy trained
            at one cost weight.
        tokens: the prompt's length in tokens (:func:`contract.pricing.prompt_tokens`).
    """

    prompt: str
    candidates: list[str] | None
    allowed: np.ndarray
    cost_weight: float | None
    tokens: int


@dataclass(frozen=True)
class Decision:
    """One routing decision.

    Attributes:
        decision_id: uuid4 hex (32 characters).
        created_at: ISO 8601 UTC time of the decision.
        action: index of the chosen agent in ``Policy.agents``.
        agent: its name.
        probabilities: ``[K]`` float32, the serving policy's distribution (masked agents 0).
        log_prob: natural log of ``probabilities[action]`` (also under greedy choice).
        embedding: ``[E]`` float32 unit-norm prompt embedding.
        load: ``[K]`` float32 normalised load used in the observation.
        action_mask: ``[K]`` bool, True where the agent was allowed.
        explore: True when the agent was sampled, False when it was the argmax.
        propensity: probability with which ``action`` was chosen: under ``explore``, its
            probability in the sampling distribution (:func:`exploration_distribution`); 1.0 for
            the deterministic argmax.
        cost_weight: the cost preference in the observation (USD^-1); None for a policy trained
            at one cost weight.
        prompt_tokens: the prompt's length in tokens (:func:`contract.pricing.prompt_tokens`).
    """

    decision_id: str
    created_at: str
    action: int
    agent: str
    probabilities: np.ndarray
    log_prob: float
    embedding: np.ndarray
    load: np.ndarray
    action_mask: np.ndarray
    explore: bool
    propensity: float = 1.0
    cost_weight: float | None = None
    prompt_tokens: int | None = None


def exploration_distribution(probs: np.ndarray, mask: np.ndarray, floor: float,
                             temperature: float = 1.0) -> np.ndarray:
    """The distribution ``explore`` samples from: the policy, flattened by ``temperature``, mixed
    with uniform so that every allowed agent has probability at least ``floor``.

    ``mu = (1 - alpha) * pi_T + alpha / K_a`` over the ``K_a`` allowed agents, with
    ``pi_T ∝ pi^(1/T)`` and ``alpha = min(1, floor * K_a)`` (epsilon-greedy mixing; Li et al. 2010,
    "A Contextual-Bandit Approach to Personalized News Article Recommendation", arXiv 1003.0146,
    sec. 5, logs such propensities for unbiased offline evaluation). A temperature above 1 spreads
    the exploration over the agents the policy finds nearly as good, which costs less quality than
    the uniform floor for the same coverage of them. ``floor * K_a >= 1`` gives the uniform choice.

    Args:
        probs: ``[K]`` float, the policy's distribution (masked agents 0).
        mask: ``[K]`` bool, allowed agents (at least one).
        floor: minimum probability of each allowed agent, in [0, 1].
        temperature: ``T >= 1``; 1 samples the policy itself.

    Returns:
        ``[K]`` float64 summing to 1, 0 where ``mask`` is False.
    """
    allowed = mask.astype(np.float64)
    k_allowed = allowed.sum()
    pi = probs.astype(np.float64) * allowed
    pi = pi / pi.sum() if pi.sum() > 0 else allowed / k_allowed
    if temperature != 1.0:
        log_pi = np.where(pi > 0, np.log(np.maximum(pi, 1e-300)), -np.inf) / temperature
        pi = np.exp(log_pi - log_pi.max())
        pi = pi / pi.sum()
    alpha = min(1.0, max(0.0, floor) * k_allowed)
    mu = (1.0 - alpha) * pi + alpha * allowed / k_allowed
    return mu / mu.sum()


def live_mask(agents: Sequence[str], allowed: np.ndarray, down: Collection[str],
              candidates: Sequence[str] | None) -> np.ndarray:
    """``allowed`` (``[K]`` bool, the ``candidates`` mask) without the agents that are down.

    Raises:
        NoAgentAvailable: nothing is left; the message names what was asked for and what is down.
    """
    if not down:
        return allowed
    up = np.array([a not in down for a in agents], dtype=bool)
    mask = allowed & up
    if not mask.any():
        down_names = ", ".join(repr(a) for a in agents if a in down)
        if candidates is None:
            raise NoAgentAvailable(f"every agent is marked down ({down_names}); no agent can take the request")
        raise NoAgentAvailable(
            f"every candidate is marked down ({', '.join(map(repr, candidates))}); agents up: "
            f"{', '.join(a for a in agents if a not in down) or 'none'}"
        )
    return mask


#: numbers the seeded services of this process (their decision ids differ even for one seed)
_SEEDED_SERVICES = itertools.count()


class RoutingService:
    """Serves one loaded policy.

    Args:
        policy: the loaded checkpoint (networks on CPU).
        embedder: prompt embedder of the model the policy was trained on
            (``policy.embedding_model``).
        seed: seed of the sampler used when ``explore`` is true and of the decision ids; None: from
            the OS (uuid4 ids).
        head: the policy's decision exported to ONNX Runtime and checked against torch
            (:func:`policy.onnx_head.decision_head`); None: decide in torch.

    Thread-safe: :meth:`choose` may run in several threads at once.
    """

    def __init__(self, policy: Policy, embedder: Embedder, seed: int | None = None,
                 head: DecisionHead | None = None) -> None:
        self.policy = policy
        #: the policy's decision in ONNX Runtime (:mod:`policy.onnx_head`), or None: in torch
        self.head = head
        self.embedder = embedder
        self.agents: list[str] = policy.agents
        #: agents taken out of service (``policy.json`` ``retired``): masked in every decision
        self.retired: frozenset[str] = frozenset(policy.meta.retired)
        self._index = {name: i for i, name in enumerate(self.agents)}
        self._rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()
        # decision ids: uuid4 from the OS, or drawn from the seed and this service's place among the
        # seeded ones of the process, so that a seeded run (a benchmark's in-process loop) logs the
        # same ids each time (its hashed held-out split repeats) and two services never share one
        self._ids = None if seed is None else random.Random(f"{seed}:{next(_SEEDED_SERVICES)}")
        self.embed_dim = policy.layout.embed_dim
        #: capacity of each agent in requests per env step (None: unbounded), from the checkpoint
        self.capacities: list[int | None] = list(policy.meta.capacities)
        #: clip of the normalised load, as in training
        self.load_clip = policy.layout.load_clip

    @property
    def version(self) -> str:
        """Version string of the served policy."""
        return self.policy.version

    def warm_up(self) -> None:
        """Load the embedding model and run one prompt through the whole path.

        Raises:
            UserError: the embedding model cannot be loaded.
            CheckpointError: the model's embedding width does not fit the policy's observation.
        """
        width = self.embedder.encode(["warm-up"]).shape[1]
        if width != self.embed_dim:
            raise CheckpointError(
                f"{self.policy.path}: the policy expects {self.embed_dim}-dim embeddings but "
                f"{self.embedder.model_id} gives {width}"
            )
        self.route("warm-up")

    def load_vector(self, in_flight: Mapping[str, int] | None) -> np.ndarray:
        """``[K]`` float32 observation load from in-flight counts
        (:func:`contract.observation.normalised_load`)."""
        if not in_flight:
            return np.zeros(len(self.agents), dtype=np.float32)
        counts = [int(in_flight.get(name, 0)) for name in self.agents]
        return normalised_load(counts, self.capacities, self.load_clip)

    def plan(self, prompt: str, candidates: Sequence[str] | None = None, cost_weight: float | None = None,
             max_cost_usd_per_1k: float | None = None, default_cost_weight: float | None = None) -> RoutePlan:
        """Validate a request against this policy, once: its ``candidates``, its cost preference
        and its budget.

        The cost weight is resolved here and only here: ``max_cost_usd_per_1k`` routes for quality
        (0) among the agents within the budget (:meth:`within_budget`); otherwise ``cost_weight``,
        else ``default_cost_weight`` (``ROUTER_COST_WEIGHT``), else the policy's default
        (:meth:`contract.observation.ObsLayout.resolve_cost_weight`). A policy trained at one cost
        weight takes none (its plan's ``cost_weight`` is None).

        Raises:
            CandidateError: bad ``candidates``.
            PreferenceError: a ``cost_weight`` this policy does not take, both ``cost_weight`` and
                ``max_cost_usd_per_1k``, or a budget no allowed agent fits.
        """
        layout = self.policy.layout
        allowed = self.action_mask(candidates)
        if max_cost_usd_per_1k is not None and cost_weight is not None:
            raise PreferenceError("give cost_weight or max_cost_usd_per_1k, not both")
        tokens = prompt_tokens(prompt)
        if max_cost_usd_per_1k is not None:
            allowed = allowed & self.within_budget(tokens, max_cost_usd_per_1k, allowed)
            requested = 0.0 if layout.cost_preference else None
        elif cost_weight is None and layout.cost_preference:
            requested = default_cost_weight
        else:
            requested = cost_weight
        try:
            resolved = layout.resolve_cost_weight(requested)
        except CostWeightError as exc:
            raise PreferenceError(f"cost_weight: policy {self.version}: {exc}") from None
        return RoutePlan(prompt=prompt, candidates=list(candidates) if candidates is not None else None,
                         allowed=allowed, cost_weight=float(resolved) if layout.cost_preference else None,
                         tokens=tokens)

    def within_budget(self, tokens: int, max_cost_usd_per_1k: float, allowed: np.ndarray) -> np.ndarray:
        """``[K]`` bool: agents whose expected cost of a ``tokens``-token prompt
        (:func:`contract.pricing.call_cost_usd`, USD) times 1,000 is at most ``max_cost_usd_per_1k``.

        Raises:
            PreferenceError: the policy does not know the agents' prices, or no ``allowed`` agent fits.
        """
        layout = self.policy.layout
        if layout.agent_prices is None:
            raise PreferenceError(f"max_cost_usd_per_1k: policy {self.version} does not know the agents' prices "
                                  "(train it with env.prompt_features)")
        cost_1k = layout.expected_costs([tokens])[0] * 1000.0
        fits = cost_1k <= max_cost_usd_per_1k * (1 + 1e-9)
        if not (fits & allowed).any():
            cheapest = float(cost_1k[allowed].min())
            raise PreferenceError(f"max_cost_usd_per_1k: no allowed agent fits {max_cost_usd_per_1k:g} USD per 1k "
                                  f"requests for this prompt; the cheapest allowed costs {cheapest:.6g}")
        return fits

    def action_mask(self, candidates: Sequence[str] | None) -> np.ndarray:
        """``[K]`` bool mask allowing exactly ``candidates`` (all agents when None).

        Raises:
            CandidateError: ``candidates`` is empty, has duplicates, or has unknown names.
        """
        k = len(self.agents)
        if candidates is None:
            return np.ones(k, dtype=bool)
        if len(candidates) == 0:
            raise CandidateError("candidates is empty: name at least one agent, or leave it out")
        dupes = sorted({c for c in candidates if candidates.count(c) > 1})
        if dupes:
            raise CandidateError(f"candidates lists {', '.join(map(repr, dupes))} more than once")
        unknown = [c for c in candidates if c not in self._index]
        if unknown:
            raise CandidateError(
                f"unknown candidates {', '.join(map(repr, unknown))}; "
                f"the agents are {', '.join(self.agents)}"
            )
        mask = np.zeros(k, dtype=bool)
        mask[[self._index[c] for c in candidates]] = True
        return mask

    def route(
        self,
        prompt: str,
        candidates: Sequence[str] | None = None,
        explore: bool = False,
        in_flight: Mapping[str, int] | None = None,
        down: Collection[str] = (),
        embedding: np.ndarray | None = None,
        explore_floor: float = 0.0,
        explore_temperature: float = 1.0,
        cost_weight: float | None = None,
        max_cost_usd_per_1k: float | None = None,
    ) -> Decision:
        """:meth:`choose` of :meth:`plan`: validate and route in one call (for code that routes in
        process; the server plans once per request, :class:`router.routing.Router`).

        Raises:
            CandidateError, PreferenceError: as :meth:`plan`. NoAgentAvailable: as :meth:`choose`.
        """
        return self.choose(self.plan(prompt, candidates, cost_weight, max_cost_usd_per_1k), explore, in_flight,
                           down, embedding, explore_floor, explore_temperature)

    def choose(
        self,
        plan: RoutePlan,
        explore: bool = False,
        in_flight: Mapping[str, int] | None = None,
        down: Collection[str] = (),
        embedding: np.ndarray | None = None,
        explore_floor: float = 0.0,
        explore_temperature: float = 1.0,
    ) -> Decision:
        """Choose an agent for a validated request (:meth:`plan`).

        The observation is :func:`contract.observation.build_obs` of the embedding ``[1, E]`` and
        the live load of :meth:`load_vector` ``[1, K]``, as in training; with a :attr:`head`, that
        same code traced into one ONNX Runtime call (:mod:`policy.onnx_head`). The allowed agents are the
        plan's minus those ``down`` and those retired; the choice is the most probable allowed agent under the
        masked policy (so when the unmasked favourite is masked, the next most probable allowed one).

        Args:
            plan: the request, validated against this policy.
            explore: sample from :meth:`sampling_distribution` (True) or take the argmax of the
                policy (False).
            in_flight: agent name -> requests in flight (missing agents: 0); None: no load.
            down: names of agents marked down.
            embedding: the prompt's ``[E]`` embedding if already computed (by the micro-batcher,
                :mod:`router.batcher`); None: encode the prompt here.
            explore_floor, explore_temperature: ``floor`` and ``temperature`` of
                :func:`exploration_distribution`.

        Raises:
            NoAgentAvailable: every allowed agent is down.
        """
        mask = live_mask(self.agents, plan.allowed, set(down) | self.retired, plan.candidates)
        if embedding is None:
            embedding = self.embedder.encode([plan.prompt])
        else:
            embedding = np.array(embedding, dtype=np.float32, ndmin=2)  # a writable [1, E] copy
        load = self.load_vector(in_flight)[None, :]
        if self.head is not None:  # the same decision in one ONNX Runtime call (policy.onnx_head)
            out = self.head(embedding, load, mask, plan.cost_weight, plan.tokens)
            probs = out.probabilities.astype(np.float32)  # a writable copy
        else:
            obs = self.policy.build_obs(torch.from_numpy(embedding), torch.from_numpy(load),
                                        cost_weight=plan.cost_weight, tokens=torch.tensor([plan.tokens]))
            mask_t = None if mask.all() else torch.from_numpy(mask).view(1, 1, -1)
            probs = self.policy.probabilities(obs, mask_t)[0, 0].cpu().numpy().astype(np.float32)
        probs[~mask] = 0.0
        propensity = 1.0
        if explore:
            reward, width = (out.reward, out.width) if self.head is not None else self._estimates(obs)
            mu = self.distribution_from_estimates(reward, width, probs, mask, explore_floor, explore_temperature)
            with self._rng_lock:
                action = int(self._rng.choice(len(mu), p=mu))
            propensity = min(1.0, float(mu[action]))
        else:
            action = int(np.argmax(probs))
        chosen = float(probs[action])
        log_prob = math.log(chosen) if chosen > 0.0 else math.log(np.finfo(np.float32).tiny)
        return Decision(
            decision_id=self._decision_id(),
            created_at=utc_now_iso(),
            action=action,
            agent=self.agents[action],
            probabilities=probs,
            log_prob=log_prob,
            embedding=embedding[0],
            load=load[0],
            action_mask=mask,
            explore=explore,
            propensity=propensity,
            cost_weight=plan.cost_weight,
            prompt_tokens=plan.tokens,
        )

    def _decision_id(self) -> str:
        if self._ids is None:
            return uuid.uuid4().hex
        with self._rng_lock:
            return uuid.UUID(int=self._ids.getrandbits(128), version=4).hex

    def sampling_distribution(self, obs: torch.Tensor, probs: np.ndarray, mask: np.ndarray, floor: float,
                              temperature: float) -> np.ndarray:
        """``[K]`` float64, what ``explore`` samples from. A policy with ``exploration`` (a reward
        critic and its ``γ``): inverse gap weighting around the actor's choice
        (:func:`policy.exploration.inverse_gap_weighting`), which already gives every allowed
        agent a share that shrinks with its estimated gap, so ``floor`` and ``temperature`` are not
        used. Other policies: :func:`exploration_distribution`."""
        return self.distribution_from_estimates(*self._estimates(obs), probs, mask, floor, temperature)

    def _estimates(self, obs: torch.Tensor) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The reward critic's ``[K]`` estimates and widths for obs ``[1, 1, D]`` that inverse gap
        weighting reads: ``(None, None)`` for a policy that does not explore by it, width None
        without optimism."""
        meta = self.policy.meta.exploration
        if meta is None or self.policy.reward_critic is None:
            return None, None
        reward = self.policy.estimated_rewards(obs)[0, 0].cpu().numpy()
        return reward, self.policy.reward_critic.width(obs)[0, 0].cpu().numpy() if meta.optimism > 0 else None

    def distribution_from_estimates(self, reward: np.ndarray | None, width: np.ndarray | None, probs: np.ndarray,
                                    mask: np.ndarray, floor: float, temperature: float) -> np.ndarray:
        """:meth:`sampling_distribution` from the reward critic's ``[K]`` estimates and widths already
        computed (by the policy's ONNX head, :mod:`policy.onnx_head`); ``reward`` None: the policy
        does not explore by inverse gap weighting; ``width`` None: no optimism.

        A young agent is not the leader while another allowed agent is: exploration alone tries it,
        at ``1/K`` on every prompt, so its records are a fair sample of the prompts. Were the actor
        to choose it, it would be where the others' estimates are lowest (the hard prompts), and
        the level its critic learns from them would be theirs (``docs/learning.md``, "A changing
        world")."""
        meta = self.policy.meta.exploration
        if meta is None or reward is None:
            return exploration_distribution(probs, mask, floor, temperature)
        young = np.isin(self.agents, meta.young) if meta.young else None
        seasoned = mask if young is None else mask & ~young
        leader = int(np.argmax(np.where(seasoned if seasoned.any() else mask, probs, -1.0)))
        return inverse_gap_weighting(np.asarray(reward, dtype=np.float64), mask, leader, meta.gamma,
                                     width, meta.optimism, young)

    def decision_context(
        self, decision: Decision, prompt: str, session_id: str | None, store_prompt: bool = False
    ) -> DecisionContext:
        """The :class:`~contract.experience.DecisionContext` persisted for ``decision``: the prompt
        as SHA-256, and its text only with ``store_prompt`` (``ROUTER_STORE_PROMPTS=true``)."""
        return DecisionContext(
            schema_version=SCHEMA_VERSION,
            decision_id=decision.decision_id,
            policy_version=self.version,
            created_at=decision.created_at,
            session_id=session_id,
            prompt_sha256=hashlib.sha256(prompt.encode("utf-8")).hexdigest(),
            prompt=prompt if store_prompt else None,
            embedding=encode_embedding(decision.embedding),
            load=[float(x) for x in decision.load],
            action_mask=[bool(x) for x in decision.action_mask],
            action=decision.action,
            agent=decision.agent,
            log_prob=decision.log_prob,
            probabilities=[float(x) for x in decision.probabilities],
            explore=decision.explore,
            propensity=decision.propensity,
            cost_weight=decision.cost_weight,
            prompt_tokens=decision.prompt_tokens,
        )
