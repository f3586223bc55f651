"""The routing capability, one object for both endpoints: :class:`Router` (``AppContext.router``).

It owns the served policy (through the registry, read once per request), the experience store,
the live load, the cooldowns and the settings. A request is validated once (:meth:`Router.plan`:
its prompt, candidates, cost preference and budget) and then decided (:meth:`Router.decide`):
the agents marked down and those cooling down (:mod:`router.cooldown`) are masked, unless every
allowed agent cools down (then the cooldowns are ignored rather than the request refused); the
live in-flight load goes into the observation; the decision context is written to the experience
log, the lease on the chosen agent taken, and the decision counted in the metrics.
``POST /v1/route`` decides once; the proxy (:mod:`router.proxy.attempts`) once per attempt. The
shape of RouteLLM's one controller.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from contract.errors import DomainError
from experience import ExperienceStore
from router.batcher import EmbedBatcher
from router.cooldown import Cooldowns
from router.inflight import LoadTracker
from router.metrics import RouterMetrics
from router.registry import PolicyRegistry
from router.service import Decision, RoutePlan, RoutingService
from router.settings import Settings

#: The stages of :meth:`Router.decide`, in order (:attr:`RoutingRequest.timings`).
STAGES = ("embed", "encode", "state", "policy", "store", "lease")


class PromptTooLong(DomainError):
    """A prompt over ``ROUTER_MAX_PROMPT_CHARS`` (422)."""

    status_code = 422


@dataclass
class RoutingRequest:
    """One request, planned against the policy served when it arrived.

    Attributes:
        service: that policy, for every decision of the request (a hot swap meanwhile does not
            change it).
        plan: the request validated against it.
        explore: sample the agent rather than take the policy's choice.
        session_id: the conversation it belongs to, or None.
        embedding: the prompt's ``[E]`` embedding once computed (one encoding per request).
        timings: seconds spent in each stage of :meth:`Router.decide`, summed over the request's
            decisions (the proxy decides once per attempt): ``embed`` (waiting for the embedding:
            the LRU cache, the micro-batcher's queue, the thread hops and the encode), ``encode``
            (the encode call alone, in its worker thread; absent for a cached prompt), ``state``
            (reading the live load and the cooldowns), ``policy`` (the policy's decision),
            ``store`` (writing the decision context) and ``lease`` (taking the lease on the agent).
    """

    service: RoutingService
    plan: RoutePlan
    explore: bool = False
    session_id: str | None = None
    embedding: np.ndarray | None = field(default=None, repr=False)
    timings: dict[str, float] = field(default_factory=dict, repr=False)

    def stages_ms(self) -> dict[str, float]:
        """:attr:`timings` in ms, rounded to µs: the ``stages_ms`` of the request's log line."""
        return {stage: round(seconds * 1000.0, 3) for stage, seconds in self.timings.items()}


class Router:
    """See the module docstring."""

    def __init__(self, settings: Settings, registry: PolicyRegistry, store: ExperienceStore, load: LoadTracker,
                 cooldowns: Cooldowns, batcher: EmbedBatcher, metrics: RouterMetrics) -> None:
        self.settings, self.registry, self.store, self.load = settings, registry, store, load
        self.cooldowns, self.batcher, self.metrics = cooldowns, batcher, metrics

    @property
    def service(self) -> RoutingService:
        """The policy served now."""
        return self.registry.current

    def plan(self, prompt: str, *, candidates: Sequence[str] | None = None, cost_weight: float | None = None,
             max_cost_usd_per_1k: float | None = None, explore: bool = False, session_id: str | None = None,
             what: str = "prompt", service: RoutingService | None = None) -> RoutingRequest:
        """Validate a request, once, against the policy served now (:meth:`RoutingService.plan`;
        ``cost_weight`` None takes ``ROUTER_COST_WEIGHT``).

        Args:
            what: how the prompt is named in an error (the proxy routes on the last user message).
            service: the policy to plan against (None: the one served now), for a caller that read
                it already.

        Raises:
            PromptTooLong: over ``ROUTER_MAX_PROMPT_CHARS``.
            CandidateError, PreferenceError: as :meth:`RoutingService.plan`.
        """
        limit = self.settings.max_prompt_chars
        if len(prompt) > limit:
            raise PromptTooLong(f"{what} has {len(prompt)} characters; the limit is {limit}")
        service = service or self.service
        plan = service.plan(prompt, candidates, cost_weight, max_cost_usd_per_1k,
                            default_cost_weight=self.settings.cost_weight)
        return RoutingRequest(service, plan, explore, session_id)

    async def decide(self, request: RoutingRequest, excluded: Collection[str] = ()) -> Decision:
        """Route ``request`` (its prompt embedded once, micro-batched) and log the decision.

        Args:
            excluded: agents this decision must not use (the proxy's failed attempts), masked always
                (as :meth:`RoutingService.choose` masks the policy's retired agents).

        Raises:
            NoAgentAvailable: every allowed agent is down.
            StoreUnavailable: the decision could not be logged (no lease is taken).
        """
        service, plan = request.service, request.plan
        clock = _Stopwatch()
        if request.embedding is None:
            request.embedding = await self.batcher.embed(service.embedder, plan.prompt, clock.laps)  # LRU-cached
            clock.lap("embed")
        live = await self.load.snapshot(service.agents)
        excluded = set(excluded)
        down = live.down | set(await self.cooldowns.cooling(service.agents)) | excluded
        if set(plan.candidates or service.agents) - excluded - service.retired <= down:
            down = live.down | excluded  # every allowed agent cools down: route among them rather than refuse
        clock.lap("state")
        settings = self.settings
        decision = service.choose(plan, request.explore, live.in_flight, down, request.embedding,
                                  settings.explore_floor, settings.explore_temperature)
        context = service.decision_context(decision, plan.prompt, request.session_id,
                                           store_prompt=settings.store_prompts)
        clock.lap("policy")
        await self.store.put_decision(context)
        clock.lap("store")
        await self.load.take(decision.agent, decision.decision_id)
        clock.lap("lease")
        laps = {stage: clock.laps[stage] for stage in STAGES if stage in clock.laps}
        for stage, seconds in laps.items():
            request.timings[stage] = request.timings.get(stage, 0.0) + seconds
        self.metrics.observe_stages(laps)
        self.metrics.observe_decision(decision.agent, context.explored_off_greedy)
        return decision


class _Stopwatch:
    """``laps[stage]``: the seconds from the previous lap (or the stopwatch's start) to ``lap(stage)``;
    the batcher writes ``laps["encode"]`` itself."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = now - self.last
        self.last = now
