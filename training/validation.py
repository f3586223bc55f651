"""Validation while training: the greedy policy's reward on the held-out split, and the best weights.

The figures are the offline ones of :mod:`training.evaluation.offline` (each validation prompt routed once,
every agent free, ``reward = quality - cost_weight * cost_usd``), so they sit beside the training
reward in ``metrics.jsonl``, TensorBoard and ``reward_curve.png`` and show the generalisation gap.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from contract.observation import ObsLayout
from env.dataset import RoutingDataset
from training.evaluation.offline import greedy_choices, summarize


class Validator:
    """Scores the actor on a split every ``every`` iterations and keeps the best state.

    Args:
        layout: the policy's observation layout.
        split: the validation split; embeddings: its ``[P, E]`` float32 embeddings.
        cost_weight: reward per USD.
        every: iterations between evaluations (the last iteration is always evaluated).

    Attributes:
        best: ``{"iteration", "val_reward"}`` of the best evaluation so far (None before the first).
        best_state: the actor's, critic's and value normaliser's state dicts then.
    """

    def __init__(self, layout: ObsLayout, split: RoutingDataset, embeddings: np.ndarray, cost_weight: float,
                 every: int) -> None:
        self.layout, self.split, self.cost_weight, self.every = layout, split, cost_weight, every
        self._embeddings, self._tokens = embeddings, split.prompt_tokens
        self.best: dict[str, Any] | None = None
        self.best_state: dict[str, Any] | None = None

    def __call__(self, trainer: Any) -> dict[str, float]:
        """After an iteration of ``trainer`` (a :class:`~training.trainer.MAPPOTrainer`): ``{}``, or
        on an evaluation ``val_reward``, ``val_quality`` and ``val_cost_usd_per_1k``."""
        last = trainer.iteration >= trainer.num_iterations
        if not len(self.split) or (trainer.iteration % self.every and not last):
            return {}
        was_training = trainer.actor.training
        trainer.actor.eval()
        choice = greedy_choices(trainer.actor, self.layout, self._embeddings, self._tokens)
        scores = summarize(choice, self.split.quality, self.split.cost_usd, self.cost_weight)
        trainer.actor.train(was_training)
        if self.best is None or scores["reward"] > self.best["val_reward"]:
            self.best = {"iteration": trainer.iteration, "val_reward": scores["reward"]}
            self.best_state = copy.deepcopy({"actor": trainer.actor.state_dict(),
                                             "critic": trainer.critic.state_dict(),
                                             "value_norm": trainer.value_norm.state_dict()})
        return {f"val_{k}": v for k, v in scores.items()}

    def restore_best(self, trainer: Any) -> None:
        """Load the best state into ``trainer``'s networks and value normaliser."""
        if self.best_state is not None:
            trainer.actor.load_state_dict(self.best_state["actor"])
            trainer.critic.load_state_dict(self.best_state["critic"])
            trainer.value_norm.load_state_dict(self.best_state["value_norm"])
