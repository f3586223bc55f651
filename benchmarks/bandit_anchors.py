"""Anchor learners of the contextual-bandit stream benchmark (``benchmarks/bandit_stream.py``).

Every learner follows the same protocol, :class:`StreamLearner`: for each arriving prompt (a
:class:`Context`) it picks an *action* (an agent index in ``[0, K)``) with :meth:`StreamLearner.act`,
which also returns the *propensity* (the probability with which that action was chosen), and is then
told the *reward* of that action alone with :meth:`StreamLearner.learn` (bandit feedback).

The anchors, in the spirit of the contextual-bandit bake-off (Bietti, Agarwal & Langford, "A
Contextual Bandit Bake-off", JMLR 22(133), 2021), which compares Vowpal Wabbit's exploration
algorithms on supervised data turned into bandit streams:

* ``vw-squarecb``, ``vw-bag``, ``vw-epsilon``: Vowpal Wabbit ``--cb_explore_adf`` with SquareCB
  (Foster & Rakhlin 2020, arXiv 2002.04926), online bagging of 5 policies, and epsilon-greedy
  (epsilon 0.05), each at VW's default learning rate and ``cb_type`` (MTR); see :class:`VWLearner`.
* ``linucb``: disjoint LinUCB (Li, Chu, Langford & Schapire 2010, arXiv 1003.0146, Algorithm 1).
* ``ts-global``: Beta-Bernoulli Thompson sampling per agent, no context (the style of LiteLLM's
  adaptive router).
* ``ts-cluster``: the same per k-means cluster of the prompt embeddings.
* ``uniform``: every agent with probability ``1/K``.

Each is constructed as ``make_anchor(name, num_agents, seed)``; all randomness (the learner's own
sampling, VW's seed, k-means) comes from ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Context:
    """What a learner sees of one prompt before it acts.

    Attributes:
        embedding: ``[E]`` float32, unit-norm SBERT embedding of the prompt.
        prompt: the prompt text.
        tokens: prompt length in tokens (:func:`contract.pricing.prompt_tokens`).
        expected_cost_usd: ``[K]`` float64, each agent's expected cost of this prompt in USD
            (:func:`contract.pricing.expected_costs_usd`, from the agents file's prices).
        allowed: ``[K]`` bool, the agents in service now (an agent not yet added, or retired, is
            not: ``benchmarks/bandit_scenarios.py``); None: every agent. A learner picks among them.
        cost_weight: the request's own reward per USD (USD^-1; the ``preference`` scenario): its
            reward is ``quality - cost_weight * cost_usd``. None: the setting's, the same for all.
    """

    embedding: np.ndarray
    prompt: str
    tokens: int
    expected_cost_usd: np.ndarray
    allowed: np.ndarray | None = None
    cost_weight: float | None = None


def preference_features(ctx: Context) -> np.ndarray:
    """``[K + 1]`` float64 features of a request's own cost preference (empty without one): each
    agent's expected cost term ``cost_weight * expected_cost_usd`` (reward units), and
    ``log1p(cost_weight)``."""
    if ctx.cost_weight is None:
        return np.zeros(0)
    return np.append(ctx.cost_weight * np.asarray(ctx.expected_cost_usd, dtype=np.float64), np.log1p(ctx.cost_weight))


def _allowed(ctx: Context, k: int) -> np.ndarray:
    """``[K]`` bool, the agents ``ctx`` allows."""
    return np.ones(k, dtype=bool) if ctx.allowed is None else np.asarray(ctx.allowed, dtype=bool)


@runtime_checkable
class StreamLearner(Protocol):
    """An online learner under bandit feedback.

    Attributes:
        name: the row name in the benchmark's table.
    """

    name: str

    def act(self, ctx: Context) -> tuple[int, float]:
        """``(action, propensity)``: the agent index in ``[0, K)`` and the exact probability it was
        chosen with (an estimate where the learner says so)."""
        ...

    def learn(self, ctx: Context, action: int, reward: float, propensity: float) -> None:
        """Update on the reward of ``action`` (the one :meth:`act` returned for ``ctx``)."""
        ...


def _sample(pmf: np.ndarray, rng: np.random.Generator) -> tuple[int, float]:
    """An action drawn from ``pmf`` ``[K]`` (renormalised) and its probability."""
    p = np.clip(np.asarray(pmf, dtype=np.float64), 0.0, None)
    p /= p.sum()
    a = int(rng.choice(len(p), p=p))
    return a, float(p[a])


def _argmax_random_tie(scores: np.ndarray, rng: np.random.Generator) -> tuple[int, float]:
    """The argmax of ``scores`` ``[K]``, ties broken uniformly at random, and its probability
    ``1 / #tied``."""
    best = scores.max()
    tied = np.flatnonzero(scores >= best - 1e-12 * max(1.0, abs(float(best))))
    return int(tied[rng.integers(len(tied))]) if len(tied) > 1 else int(tied[0]), 1.0 / len(tied)


class VWLearner:
    """Vowpal Wabbit ``--cb_explore_adf`` (action-dependent features), one exploration algorithm.

    Sources: VW's contextual-bandit reductions (``cb_explore_adf``) as evaluated in Bietti, Agarwal &
    Langford, JMLR 22(133), 2021; the multi-line text format of VW's contextual-bandit tutorial.

    One example per prompt, in VW's multi-line text format::

        shared |s 0:0.0132 1:-0.0410 ... 383:0.0251
        |a agent0 cost:0.1234
        0:-0.85:0.9625 |a agent1 cost:0.3412
        ...

    The shared namespace ``s`` holds the embedding (feature ``i`` = component ``i``); namespace ``a``
    of each action line a one-hot of the agent id and its expected cost in USD per 1k calls;
    ``-q sa`` crosses them, so each agent gets its own linear model of the embedding. A request with
    its own ``cost_weight`` (the ``preference`` scenario) adds it as shared feature ``cw``
    (``log1p``) and each action's expected cost term ``penalty`` (``cost_weight * expected cost``,
    reward units), so the model can weigh cost per request. For learning,
    the chosen action's line is prefixed with the label ``0:cost:propensity`` (the action index of
    an ADF label is unused; the line position names the action), where VW's cost is
    ``-reward`` (VW minimises cost). The action is sampled from VW's PMF with this learner's own
    generator, so its propensity is exactly the PMF's probability of it.

    Args:
        name: the row name.
        explore: the exploration flags, e.g. ``--squarecb``, ``--bag 5``, ``--epsilon 0.05``.
        num_agents: ``K``.
        seed: seeds VW (``--random_seed``) and the action sampler.
        extra: more VW flags.
    """

    def __init__(self, name: str, explore: str, num_agents: int, seed: int, extra: str = "") -> None:
        import vowpalwabbit

        self.name = name
        self.num_agents = num_agents
        self.args = f"--cb_explore_adf {explore} -q sa --quiet --random_seed {seed} {extra}".strip()
        self.vw = vowpalwabbit.Workspace(self.args)
        self.rng = np.random.default_rng(seed)
        self._ctx: Context | None = None
        self._lines: tuple[str, list[str]] = ("", [])

    def _example(self, ctx: Context) -> tuple[str, list[str]]:
        """The shared line and the ``K`` action lines of ``ctx`` (cached for the last context)."""
        if self._ctx is not ctx:
            shared = "shared |s " + " ".join(f"{i}:{v:.5g}" for i, v in enumerate(ctx.embedding.tolist()) if v != 0.0)
            actions = [f"|a agent{k} cost:{1000.0 * c:.6g}" for k, c in enumerate(ctx.expected_cost_usd.tolist())]
            if ctx.cost_weight is not None:
                shared += f" cw:{np.log1p(ctx.cost_weight):.6g}"
                actions = [f"{line} penalty:{ctx.cost_weight * c:.6g}"
                           for line, c in zip(actions, ctx.expected_cost_usd.tolist(), strict=True)]
            self._ctx, self._lines = ctx, (shared, actions)
        return self._lines

    def act(self, ctx: Context) -> tuple[int, float]:
        shared, actions = self._example(ctx)
        index = np.flatnonzero(_allowed(ctx, len(actions)))  # ADF: only the agents in service are actions
        pmf = self.vw.predict("\n".join([shared, *(actions[i] for i in index)]))
        a, p = _sample(np.asarray(pmf), self.rng)
        return int(index[a]), p

    def learn(self, ctx: Context, action: int, reward: float, propensity: float) -> None:
        shared, actions = self._example(ctx)
        lines = {int(i): actions[i] for i in np.flatnonzero(_allowed(ctx, len(actions)))}
        lines[action] = f"0:{-reward:.6g}:{propensity:.6g} {lines[action]}"
        self.vw.learn("\n".join([shared, *lines.values()]))

    def close(self) -> None:
        """Release the VW workspace."""
        self.vw.finish()


class LinUCB:
    """Disjoint LinUCB: Li, Chu, Langford & Schapire, "A Contextual-Bandit Approach to Personalized
    News Article Recommendation", WWW 2010 (arXiv 1003.0146), Algorithm 1.

    One ridge regression per agent on ``x = [embedding, 1]`` (``d = E + 1``): ``A_k = I + Σ x xᵀ``,
    ``b_k = Σ r x`` over the prompts routed to ``k``; the action is ``argmax_k θ_kᵀx +
    α sqrt(xᵀ A_k⁻¹ x)`` with ``θ_k = A_k⁻¹ b_k``, ties broken at random. ``A_k⁻¹`` is kept and
    updated by Sherman–Morrison (``O(d²)`` per step). The choice is deterministic but for ties, so
    the propensity is ``1 / #tied`` (1 almost always). The reward is used as is (it may be outside
    [0, 1] when a cost term is subtracted). A request with its own ``cost_weight`` appends
    :func:`preference_features` to ``x``.

    Args:
        num_agents: ``K``.
        seed: seeds the tie-break.
        alpha: the exploration width ``α``.
        dim: ``E``, the embedding width (inferred from the first context when None).
    """

    def __init__(self, num_agents: int, seed: int, alpha: float = 1.0, dim: int | None = None,
                 name: str = "linucb") -> None:
        self.name = name
        self.num_agents = num_agents
        self.alpha = alpha
        self.rng = np.random.default_rng(seed)
        self.a_inv: np.ndarray | None = None  # [K, d, d]
        self.b: np.ndarray | None = None  # [K, d]
        self.theta: np.ndarray | None = None  # [K, d]
        if dim is not None:
            self._init(dim + 1)

    def _init(self, d: int) -> None:
        self.a_inv = np.repeat(np.eye(d)[None], self.num_agents, axis=0)
        self.b = np.zeros((self.num_agents, d))
        self.theta = np.zeros((self.num_agents, d))

    @staticmethod
    def _features(ctx: Context) -> np.ndarray:
        return np.concatenate([np.asarray(ctx.embedding, dtype=np.float64), preference_features(ctx), [1.0]])

    def act(self, ctx: Context) -> tuple[int, float]:
        x = self._features(ctx)
        if self.a_inv is None:
            self._init(len(x))
        ax = self.a_inv @ x  # [K, d]
        width = np.sqrt(np.clip(ax @ x, 0.0, None))
        score = np.where(_allowed(ctx, self.num_agents), self.theta @ x + self.alpha * width, -np.inf)
        return _argmax_random_tie(score, self.rng)

    def learn(self, ctx: Context, action: int, reward: float, propensity: float) -> None:
        x = self._features(ctx)
        if self.a_inv is None:
            self._init(len(x))
        a_inv = self.a_inv[action]
        ax = a_inv @ x
        a_inv -= np.outer(ax, ax) / (1.0 + x @ ax)  # Sherman–Morrison: (A + x xᵀ)⁻¹
        self.b[action] += reward * x
        self.theta[action] = a_inv @ self.b[action]


class BetaThompson:
    """Beta-Bernoulli Thompson sampling per agent, without context (Thompson 1933; Chapelle & Li,
    "An Empirical Evaluation of Thompson Sampling", NeurIPS 2011), in the style of LiteLLM's
    adaptive router.

    Each agent has a ``Beta(1, 1)`` prior; a reward ``r`` clipped to [0, 1] counts as a fractional
    success: ``α += r``, ``β += 1 - r``. To act it draws ``mc_draws`` samples of every posterior and
    plays the argmax of the *first* draw (exactly Thompson sampling); the propensity is the fraction
    of all ``mc_draws`` draws whose argmax is that action, a Monte-Carlo estimate of the true
    probability that is never 0 (the played draw counts).

    Args:
        num_agents: ``K``.
        seed: seeds the posterior draws.
        mc_draws: posterior draws per step for the propensity estimate (>= 1).
    """

    def __init__(self, num_agents: int, seed: int, mc_draws: int = 200, name: str = "ts-global") -> None:
        self.name = name
        self.num_agents = num_agents
        self.mc_draws = max(1, mc_draws)
        self.rng = np.random.default_rng(seed)
        self.alpha = np.ones(num_agents)
        self.beta = np.ones(num_agents)

    def _draw(self, alpha: np.ndarray, beta: np.ndarray, allowed: np.ndarray) -> tuple[int, float]:
        draws = self.rng.beta(alpha, beta, size=(self.mc_draws, len(alpha)))  # [M, K]
        winners = np.where(allowed, draws, -1.0).argmax(axis=1)
        a = int(winners[0])
        return a, float(np.mean(winners == a))

    def act(self, ctx: Context) -> tuple[int, float]:
        return self._draw(self.alpha, self.beta, _allowed(ctx, self.num_agents))

    def learn(self, ctx: Context, action: int, reward: float, propensity: float) -> None:
        r = min(max(float(reward), 0.0), 1.0)
        self.alpha[action] += r
        self.beta[action] += 1.0 - r


class ClusterThompson(BetaThompson):
    """Beta-Bernoulli Thompson sampling per prompt cluster and agent (the clustered variant of
    :class:`BetaThompson`: a context-free bandit per region of the embedding space).

    The first ``warmup`` prompts are routed by the global sampler (its ``Beta`` posteriors per
    agent); once ``warmup`` prompts have been learned, k-means (scikit-learn, ``clusters`` centres,
    seeded) is fitted on their embeddings, every warm-up observation is replayed into the posterior
    of its (cluster, agent), and from then on each prompt is routed by Thompson sampling on the
    posteriors of its nearest centre. The centres stay fixed after the fit. Propensities as in
    :class:`BetaThompson` (Monte-Carlo).

    Args:
        num_agents: ``K``.
        seed: seeds the posterior draws and k-means.
        clusters: k-means centres (fewer when ``warmup`` is smaller).
        warmup: prompts seen before the clusters are fitted.
        mc_draws: posterior draws per step for the propensity estimate.
    """

    def __init__(self, num_agents: int, seed: int, clusters: int = 16, warmup: int = 200, mc_draws: int = 200,
                 name: str = "ts-cluster") -> None:
        super().__init__(num_agents, seed, mc_draws=mc_draws, name=name)
        self.seed = seed
        self.clusters = clusters
        self.warmup = max(1, warmup)
        self.centres: np.ndarray | None = None  # [C, E]
        self.c_alpha: np.ndarray | None = None  # [C, K]
        self.c_beta: np.ndarray | None = None  # [C, K]
        self._seen: list[tuple[np.ndarray, int, float]] = []

    def _cluster(self, ctx: Context) -> int:
        e = np.asarray(ctx.embedding, dtype=np.float64)
        return int(((self.centres - e) ** 2).sum(axis=1).argmin())

    def _fit(self) -> None:
        from sklearn.cluster import KMeans

        x = np.stack([e for e, _, _ in self._seen]).astype(np.float64)
        km = KMeans(n_clusters=min(self.clusters, len(x)), n_init=3, random_state=self.seed).fit(x)
        self.centres = km.cluster_centers_
        self.c_alpha = np.ones((len(self.centres), self.num_agents))
        self.c_beta = np.ones((len(self.centres), self.num_agents))
        for c, (_, a, r) in zip(km.labels_, self._seen, strict=True):
            self.c_alpha[c, a] += r
            self.c_beta[c, a] += 1.0 - r
        self._seen = []

    def act(self, ctx: Context) -> tuple[int, float]:
        if self.centres is None:
            return super().act(ctx)
        c = self._cluster(ctx)
        return self._draw(self.c_alpha[c], self.c_beta[c], _allowed(ctx, self.num_agents))

    def learn(self, ctx: Context, action: int, reward: float, propensity: float) -> None:
        r = min(max(float(reward), 0.0), 1.0)
        if self.centres is None:
            super().learn(ctx, action, reward, propensity)
            self._seen.append((np.asarray(ctx.embedding), action, r))
            if len(self._seen) >= self.warmup:
                self._fit()
            return
        c = self._cluster(ctx)
        self.c_alpha[c, action] += r
        self.c_beta[c, action] += 1.0 - r


class UniformRandom:
    """Uniform random routing: each agent with probability ``1/K`` (the floor every learner must beat)."""

    def __init__(self, num_agents: int, seed: int, name: str = "uniform") -> None:
        self.name = name
        self.num_agents = num_agents
        self.rng = np.random.default_rng(seed)

    def act(self, ctx: Context) -> tuple[int, float]:
        index = np.flatnonzero(_allowed(ctx, self.num_agents))
        return int(index[self.rng.integers(len(index))]), 1.0 / len(index)

    def learn(self, ctx: Context, action: int, reward: float, propensity: float) -> None:
        return None


#: Every anchor's constructor ``(num_agents, seed) -> StreamLearner``, by row name.
ANCHORS: dict[str, Callable[[int, int], StreamLearner]] = {
    "vw-squarecb": lambda k, seed: VWLearner("vw-squarecb", "--squarecb", k, seed),
    "vw-bag": lambda k, seed: VWLearner("vw-bag", "--bag 5", k, seed),
    "vw-epsilon": lambda k, seed: VWLearner("vw-epsilon", "--epsilon 0.05", k, seed),
    "linucb": lambda k, seed: LinUCB(k, seed),
    "ts-global": lambda k, seed: BetaThompson(k, seed),
    "ts-cluster": lambda k, seed: ClusterThompson(k, seed),
    "uniform": lambda k, seed: UniformRandom(k, seed),
}

#: The anchors the agent-router row is compared with (the issue's goals): every learning anchor.
LEARNING_ANCHORS = ("vw-squarecb", "vw-bag", "vw-epsilon", "linucb", "ts-global", "ts-cluster")


def make_anchor(name: str, num_agents: int, seed: int) -> StreamLearner:
    """A fresh anchor ``name`` (a key of :data:`ANCHORS`) for ``num_agents`` agents, seeded."""
    try:
        return ANCHORS[name](num_agents, seed)
    except KeyError:
        raise ValueError(f"unknown anchor {name!r}; known: {', '.join(ANCHORS)}") from None
