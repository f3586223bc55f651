"""One routing decision against the live state, logged: what ``POST /v1/route`` and each attempt of the
proxy (:mod:`router.proxy.relay`) do alike.

The agents marked down and those cooling down (:mod:`router.cooldown`) are masked, unless every
allowed agent cools down (then the cooldowns are ignored rather than the request refused); the
live in-flight load goes into the observation; the decision context is written to the experience
log, the lease on the chosen agent taken, and the decision counted in the metrics.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from router.cooldown import Cooldowns
from router.experience import ExperienceStore
from router.inflight import LoadTracker
from router.metrics import RouterMetrics
from router.service import Decision, RoutingService
from router.settings import Settings


async def decide(
    service: RoutingService,
    prompt: str,
    embedding: np.ndarray,
    *,
    settings: Settings,
    store: ExperienceStore,
    load: LoadTracker,
    cooldowns: Cooldowns,
    metrics: RouterMetrics,
    candidates: Sequence[str] | None = None,
    explore: bool = False,
    session_id: str | None = None,
    cost_weight: float | None = None,
    max_cost_usd_per_1k: float | None = None,
    excluded: Collection[str] = (),
) -> Decision:
    """Route ``prompt`` (its ``[E]`` ``embedding`` already computed) and log the decision.

    Args:
        service: the served policy, read once by the caller.
        settings, store, load, cooldowns, metrics: the app's.
        candidates, explore, cost_weight, max_cost_usd_per_1k: as :meth:`RoutingService.route`;
            ``cost_weight`` None (and no budget) takes ``ROUTER_COST_WEIGHT`` for a policy of every
            trade-off.
        session_id: the conversation the decision belongs to.
        excluded: agents this request must not use (the proxy's failed attempts), masked always.

    Raises:
        CandidateError, PreferenceError, NoAgentAvailable: as :meth:`RoutingService.route`.
        StoreUnavailable: the decision could not be logged (no lease is taken).
    """
    live = await load.snapshot(service.agents)
    excluded = set(excluded)
    down = live.down | set(await cooldowns.cooling(service.agents)) | excluded
    if set(candidates or service.agents) - excluded <= down:
        down = live.down | excluded  # every allowed agent cools down: route among them rather than refuse
    if cost_weight is None and max_cost_usd_per_1k is None and service.policy.layout.cost_preference:
        cost_weight = settings.cost_weight
    decision = service.route(prompt, candidates, explore, embedding=embedding, in_flight=live.in_flight, down=down,
                             explore_floor=settings.explore_floor, explore_temperature=settings.explore_temperature,
                             cost_weight=cost_weight, max_cost_usd_per_1k=max_cost_usd_per_1k)
    context = service.decision_context(decision, prompt, session_id, store_prompt=settings.store_prompts)
    await store.put_decision(context)
    await load.take(decision.agent, decision.decision_id)
    metrics.decisions.labels(agent=decision.agent).inc()
    return decision
