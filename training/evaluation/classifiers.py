"""kNN and MLP baselines on the policy's own prompt embeddings (scikit-learn), routed by
willingness to pay.

Each predictor is fitted on the train split: embedding ``[E]`` -> every agent's quality ``[K]``
and cost ``[K]`` on that prompt (multi-output regression; costs are divided by their mean so both
halves have the same scale). A prompt is then routed as by RouterBench's predictive KNN and MLP
routers (Hu et al. 2024, arXiv 2403.12031, which score ``λ·P̂_ij - cost_j``): to
``argmax_k q̂_k - λ·ĉ_k`` for a willingness-to-pay ``λ`` (quality per USD; ties go to the
cheaper agent). ``λ = cost_weight`` maximises the same
reward the policy is trained on; sweeping ``λ`` (:func:`wtp_grid`) traces the predictor's
cost-quality curve (on two agents it is a threshold on the predicted quality gap).

Both are deterministic: kNN is exact (brute force, ties by training order), the MLP is seeded.
The kNN's neighbour count is chosen on train by leave-one-out; the MLP has the policy network's
default size (two hidden layers of 256) and stops early on 10% of train.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from env.dataset import RoutingDataset

#: Neighbour counts the kNN predictor chooses from (leave-one-out on train, see :func:`fit_knn`).
KNN_GRID = (5, 10, 25, 50, 100)
#: Hidden layers of the MLP predictor (the policy network's default size).
MLP_HIDDEN = (256, 256)


@dataclass
class QualityPredictor:
    """A fitted per-agent quality and cost predictor.

    Attributes:
        name: ``knn`` or ``mlp``.
        model: the fitted scikit-learn regressor (targets ``[quality ++ cost / cost_scale]``,
            standardised for the MLP).
        num_agents: ``K``.
        cost_scale: mean train cost (USD) the cost targets were divided by.
        y_mean, y_std: target standardisation (identity for kNN).
    """

    name: str
    model: object
    num_agents: int
    cost_scale: float
    y_mean: np.ndarray = field(repr=False)
    y_std: np.ndarray = field(repr=False)

    def predict(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(quality [P, K] in [0, 1], cost_usd [P, K] >= 0)`` predicted for embeddings ``[P, E]``."""
        k = self.num_agents
        if len(embeddings) == 0:
            return np.zeros((0, k)), np.zeros((0, k))
        y = self.model.predict(np.asarray(embeddings, dtype=np.float32)) * self.y_std + self.y_mean
        y = np.asarray(y, dtype=np.float64).reshape(len(embeddings), 2 * k)
        return np.clip(y[:, :k], 0.0, 1.0), np.clip(y[:, k:], 0.0, None) * self.cost_scale


def _targets(train: RoutingDataset) -> tuple[np.ndarray, float]:
    scale = float(train.cost_usd.mean()) or 1.0
    return np.concatenate([train.quality, train.cost_usd / scale], axis=1).astype(np.float64), scale


def fit_knn(embeddings: np.ndarray, train: RoutingDataset, neighbors: int | None = None,
            cost_weight: float = 0.0, grid: tuple[int, ...] = KNN_GRID) -> QualityPredictor:
    """kNN regressor: the mean quality and cost vectors of the ``neighbors`` nearest train prompts
    (Euclidean on the unit-norm SBERT embeddings, i.e. cosine).

    ``neighbors=None`` picks it from ``grid`` by leave-one-out on train: each train prompt routed
    (at willingness to pay ``cost_weight``) on its nearest *other* train prompts; the count with
    the best mean reward wins (ties: the smaller). The choice is in ``model.n_neighbors``.
    """
    from sklearn.neighbors import KNeighborsRegressor

    x = np.asarray(embeddings, dtype=np.float32)
    y, scale = _targets(train)
    n, k = len(y), train.quality.shape[1]
    if neighbors is None:
        neighbors = _loo_neighbors(x, y, scale, train, cost_weight, [g for g in grid if g < n] or [max(1, n - 1)])
    model = KNeighborsRegressor(n_neighbors=max(1, min(neighbors, n)), weights="uniform", algorithm="brute")
    model.fit(x, y)
    return QualityPredictor("knn", model, k, scale, np.zeros(2 * k), np.ones(2 * k))


def _loo_neighbors(x: np.ndarray, y: np.ndarray, scale: float, train: RoutingDataset, cost_weight: float,
                   grid: list[int]) -> int:
    from sklearn.neighbors import NearestNeighbors

    n, k = len(y), train.quality.shape[1]
    top = min(max(grid) + 1, n)
    idx = NearestNeighbors(n_neighbors=top, algorithm="brute").fit(x).kneighbors(x, return_distance=False)
    # drop each prompt itself (or, when an identical embedding came first, the farthest neighbour)
    own = idx == np.arange(n)[:, None]
    own[~own.any(axis=1), -1] = True
    idx = idx[~own].reshape(n, top - 1)
    sums = np.cumsum(y[idx], axis=1)  # [n, top - 1, 2K]
    rewards = []
    for g in grid:
        mean = sums[:, g - 1] / g
        choice = route_wtp(mean[:, :k], mean[:, k:] * scale, cost_weight)
        rows = np.arange(n)
        rewards.append(float((train.quality[rows, choice] - cost_weight * train.cost_usd[rows, choice]).mean()))
    return grid[int(np.argmax(rewards))]


def fit_mlp(embeddings: np.ndarray, train: RoutingDataset, seed: int = 0,
            hidden: tuple[int, ...] = MLP_HIDDEN, max_iter: int = 200) -> QualityPredictor:
    """MLP regressor (ReLU, Adam, L2 ``alpha=1e-3``, early stopping on 10% of train), seeded."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    y, scale = _targets(train)
    mean, std = y.mean(0), y.std(0)
    std = np.where(std > 0, std, 1.0)
    model = MLPRegressor(hidden_layer_sizes=hidden, alpha=1e-3, learning_rate_init=1e-3, max_iter=max_iter,
                         early_stopping=len(y) >= 20, n_iter_no_change=10, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(np.asarray(embeddings, dtype=np.float32), (y - mean) / std)
    return QualityPredictor("mlp", model, train.quality.shape[1], scale, mean, std)


def fit_predictors(embeddings: np.ndarray, train: RoutingDataset, seed: int = 0,
                   cost_weight: float = 0.0) -> dict[str, QualityPredictor]:
    """``{"knn": ..., "mlp": ...}`` fitted on the train split's embeddings ``[P, E]`` (the kNN's
    neighbour count chosen for ``cost_weight``, see :func:`fit_knn`)."""
    return {"knn": fit_knn(embeddings, train, cost_weight=cost_weight), "mlp": fit_mlp(embeddings, train, seed=seed)}


def route_wtp(quality: np.ndarray, cost_usd: np.ndarray, wtp: float, mask: np.ndarray | None = None) -> np.ndarray:
    """Per prompt ``argmax_k quality - wtp * cost_usd`` (ties: the cheaper agent), ``[P]`` int64.

    Args:
        quality, cost_usd: ``[P, K]`` predicted (or, for the oracle, true) values.
        wtp: willingness to pay, quality per USD (>= 0).
        mask: optional ``[P, K]`` bool, agents allowed.
    """
    score = quality - wtp * cost_usd
    if mask is not None:
        score = np.where(mask, score, -np.inf)
    best = score.max(axis=1, keepdims=True)
    tied = score >= best - 1e-12 * np.maximum(1.0, np.abs(best))
    return np.where(tied, cost_usd, np.inf).argmin(axis=1).astype(np.int64)


def wtp_grid(quality: np.ndarray, cost_usd: np.ndarray, points: int = 32) -> np.ndarray:
    """Willingness-to-pay values that sweep a router from best quality to cheapest.

    The choice of prompt ``p`` between agents ``i`` (dearer) and ``j`` flips at
    ``λ = (q_i - q_j) / (c_i - c_j)``; the grid is 0, ``points`` quantiles of these breakpoints
    over all prompts and pairs, and twice the largest (every prompt at its cheapest agent).

    Returns:
        ``[G]`` sorted unique floats, starting at 0.
    """
    dq = quality[:, :, None] - quality[:, None, :]
    dc = cost_usd[:, :, None] - cost_usd[:, None, :]
    ok = (dc > 0) & (dq > 0)
    breaks = dq[ok] / dc[ok]
    if breaks.size == 0:
        return np.zeros(1)
    grid = np.quantile(breaks, np.linspace(0.0, 1.0, points))
    return np.unique(np.concatenate([[0.0], grid, [2.0 * breaks.max()]]))
