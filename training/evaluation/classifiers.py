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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from env.dataset import RoutingDataset

#: Neighbours averaged by the kNN predictor.
KNN_NEIGHBORS = 25
#: Hidden layers of the MLP predictor.
MLP_HIDDEN = (128,)


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


def fit_knn(embeddings: np.ndarray, train: RoutingDataset, neighbors: int = KNN_NEIGHBORS) -> QualityPredictor:
    """kNN regressor: the mean quality and cost vectors of the ``neighbors`` nearest train prompts
    (Euclidean on the unit-norm SBERT embeddings, i.e. cosine)."""
    from sklearn.neighbors import KNeighborsRegressor

    y, scale = _targets(train)
    model = KNeighborsRegressor(n_neighbors=min(neighbors, len(y)), weights="uniform", algorithm="brute")
    model.fit(np.asarray(embeddings, dtype=np.float32), y)
    k = train.quality.shape[1]
    return QualityPredictor("knn", model, k, scale, np.zeros(2 * k), np.ones(2 * k))


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


def fit_predictors(embeddings: np.ndarray, train: RoutingDataset, seed: int = 0) -> dict[str, QualityPredictor]:
    """``{"knn": ..., "mlp": ...}`` fitted on the train split's embeddings ``[P, E]``."""
    return {"knn": fit_knn(embeddings, train), "mlp": fit_mlp(embeddings, train, seed=seed)}


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
