"""Fitting an outcome actor (:mod:`policy.outcome`) on full-information data: every agent's quality
and cost on every train prompt.

Each MLP member of the critic's ensemble is a regression of ``[quality_k, standardised log
cost_k]`` on the prompt's features (mean squared error, AdamW), stopped early on its own random 10%
of the train split (the validation split stays for choosing configurations and reporting). The kNN
member, when the critic has one, keeps the train split and chooses its ``k`` by leave-one-out.
Nothing is fitted at a cost weight: the request's ``cost_weight`` is applied at decision time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.observation import ObsLayout, build_obs
from policy.artefact import Policy
from policy.checkpoint import save_checkpoint
from policy.networks import NetworkShape, build_networks
from policy.outcome import OutcomeActor, OutcomeCritic
from training.config import TrainConfig
from training.data import EmbeddedSplits
from training.evaluation.classifiers import KNN_GRID
from training.evaluation.offline import evaluate
from training.serving_encoder import record_serving_encoder


@dataclass(frozen=True)
class OutcomeFitConfig:
    """How each ensemble member is fitted.

    Attributes:
        max_epochs: passes over the member's share of train at most.
        patience: epochs without a better holdout quality error before stopping.
        lr, weight_decay: AdamW's.
        batch_size: prompts per step.
        holdout: the share of train each member stops on.
    """

    max_epochs: int = 200
    patience: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    holdout: float = 0.1


def outcome_features(layout: ObsLayout, embeddings: np.ndarray, tokens: np.ndarray) -> torch.Tensor:
    """``[P, F]`` float32: the critic columns of the observations of ``P`` prompts (embeddings
    ``[P, E]``, token counts ``[P]``), built as the server builds them (:func:`contract.observation.build_obs`)."""
    obs = build_obs(layout, torch.as_tensor(embeddings, dtype=torch.float32), None, 0, None,
                    torch.as_tensor(np.asarray(tokens), dtype=torch.long))
    return obs[:, 0, layout.critic_columns()]


def fit_outcome_critic(critic: OutcomeCritic, features: torch.Tensor, quality: torch.Tensor, cost_usd: torch.Tensor,
                       seed: int, cfg: OutcomeFitConfig = OutcomeFitConfig()) -> dict[str, Any]:
    """Fit every member of ``critic`` in place.

    Args:
        features: ``[P, F]`` float32 (:func:`outcome_features`).
        quality: ``[P, K]`` every agent's quality on each prompt, in [0, 1].
        cost_usd: ``[P, K]`` every agent's cost of each prompt (USD).
        seed: member ``m`` draws its holdout and batches from ``seed * 1000 + m``.

    Returns:
        ``{"epochs": [M] epochs each MLP member ran, "holdout_quality_mse": [M] its best holdout
        error}``, and for a critic with a kNN member ``"neighbors"`` (its ``k``) and
        ``"neighbors_loo_quality_mse"`` (``{k: leave-one-out error}``).

    Raises:
        ValueError: fewer than 2 prompts, or shapes that do not match.
    """
    p, k = quality.shape
    if p < 2 or features.shape[0] != p or cost_usd.shape != quality.shape or k != critic.num_actions:
        raise ValueError(f"outcome fit: features {tuple(features.shape)}, quality {tuple(quality.shape)}, "
                         f"cost {tuple(cost_usd.shape)} for a critic of {critic.num_actions} agents")
    target = torch.cat([quality, critic.fit_cost_scale(cost_usd)], dim=1).float()
    stats: dict[str, Any] = {"epochs": [], "holdout_quality_mse": []}
    for m, member in enumerate(critic.members):
        epochs, best = _fit_member(member, features.float(), target, k, seed * 1000 + m, cfg)
        stats["epochs"].append(epochs)
        stats["holdout_quality_mse"].append(best)
    if critic.neighbor_features is not None:
        k, errors = fit_neighbor_member(critic, features.float(), target)
        stats["neighbors"], stats["neighbors_loo_quality_mse"] = k, errors
    return stats


def fit_neighbor_member(critic: OutcomeCritic, features: torch.Tensor, target: torch.Tensor,
                        grid: tuple[int, ...] = KNN_GRID, chunk: int = 1024) -> tuple[int, dict[int, float]]:
    """Give ``critic``'s kNN member the train set and the ``k`` of ``grid`` whose leave-one-out
    quality error is the smallest (ties: the smaller ``k``).

    Each train prompt is predicted by the mean target of its ``k`` nearest *other* train prompts
    (Euclidean on the first ``critic.neighbor_features`` columns), and the error is the mean
    squared error of the quality half, the criterion the MLP members stop on. The error does not
    depend on a cost weight, so one ``k`` serves every request's.

    Args:
        features: ``[P, F]`` float32.
        target: ``[P, 2K]`` float32, quality and standardised log cost (the members' targets).
        grid: the candidate ``k`` (those ``>= P`` are dropped; ``P - 1`` when none is left).
        chunk: prompts whose distances are held at once (``chunk x P`` float32).

    Returns:
        ``(k, {k: leave-one-out quality error for every candidate})``.

    Raises:
        ValueError: fewer than 2 prompts, or a critic without a kNN member.
    """
    if critic.neighbor_features is None:
        raise ValueError("this outcome critic has no kNN member")
    p, k_agents = len(features), critic.num_actions
    if p < 2:
        raise ValueError(f"a kNN member needs at least 2 train prompts, got {p}")
    candidates = [g for g in grid if g < p] or [p - 1]
    x = features[:, : critic.neighbor_features].float()
    sq = x.pow(2).sum(1)
    quality = target[:, :k_agents].float()
    sums = torch.zeros(len(candidates), dtype=torch.float64)
    for start in range(0, p, chunk):
        rows = torch.arange(start, min(start + chunk, p))
        distance = sq - 2.0 * x[rows] @ x.T
        distance[torch.arange(len(rows)), rows] = float("inf")  # leave the prompt itself out
        idx = distance.topk(max(candidates), dim=1, largest=False).indices  # [chunk, kmax], nearest first
        running = quality[idx].cumsum(1)  # [chunk, kmax, K]
        for i, k in enumerate(candidates):
            sums[i] += (running[:, k - 1] / k - quality[rows]).pow(2).mean(1).sum().double()
    errors = {k: float(sums[i] / p) for i, k in enumerate(candidates)}
    best = min(candidates, key=lambda k: (errors[k], k))
    critic.set_neighbors(x, target, best)
    return best, errors


def _fit_member(member: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, seed: int,
                cfg: OutcomeFitConfig) -> tuple[int, float]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for layer in member:
        if isinstance(layer, torch.nn.Linear):
            layer.reset_parameters()
    perm = torch.randperm(len(x), generator=gen)
    n_hold = min(max(1, round(cfg.holdout * len(x))), len(x) - 1)
    hold, train = perm[:n_hold], perm[n_hold:]
    opt = torch.optim.AdamW(member.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_state, stale, ran = float("inf"), None, 0, 0
    member.train()
    for epoch in range(1, cfg.max_epochs + 1):
        ran = epoch
        for idx in train[torch.randperm(len(train), generator=gen)].split(cfg.batch_size):
            loss = torch.nn.functional.mse_loss(member(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            err = torch.nn.functional.mse_loss(member(x[hold])[:, :k], y[hold, :k]).item()
        if err < best - 1e-5:
            best, best_state, stale = err, {n: v.clone() for n, v in member.state_dict().items()}, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        member.load_state_dict(best_state)
    member.eval()
    return ran, best


def train_outcome_policy(cfg: TrainConfig, splits: EmbeddedSplits, layout: ObsLayout, meta: dict[str, Any]) -> Path:
    """Build an outcome actor for ``layout``, fit it on the train split of ``splits``
    score it on validation, and save the checkpoint.

    Args:
        cfg: the run's config (``network``, ``seed``, ``env.cost_weight``, ``out_dir``, ``checkpoint_dir``).
        meta: the checkpoint's ``policy.json`` content (:func:`training.run.checkpoint_meta`).

    Returns:
        The new checkpoint's directory.
    """
    torch.manual_seed(cfg.seed)
    actor, critic = build_networks(cfg.network, NetworkShape.of_layout(layout))
    assert isinstance(actor, OutcomeActor)
    train = splits.splits["train"]
    features = outcome_features(layout, splits.embeddings("train"), train.prompt_tokens)
    fit = fit_outcome_critic(actor.critic, features, torch.as_tensor(train.quality, dtype=torch.float32),
                             torch.as_tensor(train.cost_usd, dtype=torch.float32), cfg.seed)
    actor.eval()
    policy = Policy.draft(Path(cfg.out_dir), meta, actor, critic.eval())
    meta["eval"] = {"val": evaluate(policy, train, splits.splits["val"], splits.embeddings("val"), cfg.env.cost_weight),
                    "outcome_fit": fit}
    record_serving_encoder(meta, cfg, splits, policy)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(meta["eval"], indent=2), encoding="utf-8")
    return save_checkpoint(cfg.checkpoint_dir, actor, critic, meta)
