"""Offline retraining from logged feedback (``agent-router retrain``).

* :mod:`.source`: the experience log, read through a Redis consumer group or from the SQLite store.
* :mod:`.trajectories`: records -> per-session trajectories, padded ``[L, S]`` tensors.
* :mod:`.offline_ppo`: clipped PPO on those, with the logged propensities as the old policy.
* :mod:`.job`: the whole job: watermark, recovery, training, the gate, checkpoint, publish, ack.
"""

from training.retrain.config import RetrainConfig
from training.retrain.job import RetrainResult, run_retrain

__all__ = ["RetrainConfig", "RetrainResult", "run_retrain"]
