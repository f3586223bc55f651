"""PPO's ``target_kl`` early stop, decided on the device (an option of the trainer's update, off
unless ``ppo.target_kl`` is set).

Stopping on the host reads ``approx_kl`` back once per minibatch, a sync that stalls a GPU. When
the optimizer can skip a step on a device flag (``_step_supports_amp_scaling``: fused Adam, as the
trainer's, or fused SGD; the flag ``GradScaler`` uses), :class:`DeviceKLStop` instead keeps a
``stop`` flag on the device: once a minibatch's ``approx_kl`` (averaged over ranks) is over the
limit, every further step is still computed but skipped by the optimizer (parameters, moments and
step count unchanged), and the skipped minibatches are left out of the means. The result equals
stopping on the host (the means up to float rounding); :meth:`DeviceKLStop.restore` sets the
minibatch generator back to where the host loop leaves it, so the next update draws the same
minibatches either way.
"""

from __future__ import annotations

import torch

from training.distributed import all_reduce_mean


def supports_device_stop(optimizer: torch.optim.Optimizer) -> bool:
    """True when ``optimizer`` skips its step on ``found_inf`` (fused Adam or SGD)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


class DeviceKLStop:
    """The early stop of :func:`training.update.ppo_update` on the device (see the module docstring).

    Args:
        kl_limit: ``1.5 * target_kl``.
        optimizer: one that :func:`supports_device_stop`.
        device: the batch's device.
    """

    #: the loop never breaks: stopped steps are skipped by the optimizer instead
    stopped = False

    def __init__(self, kl_limit: float, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
        self.kl_limit, self.optimizer = kl_limit, optimizer
        self.stop = torch.zeros((), dtype=torch.bool, device=device)  # an earlier minibatch was over the limit
        self.counted: list[torch.Tensor] = []  # 1.0 where a minibatch's loss terms are in the means
        self.step_count = torch.zeros((), dtype=torch.long, device=device)
        self.epochs_drawn = torch.zeros((), dtype=torch.long, device=device)
        #: the generator's state after each epoch's permutation
        self.epoch_states: list[torch.Tensor] = []

    def begin_epoch(self, generator: torch.Generator) -> None:
        self.epoch_states.append(generator.get_state())
        self.epochs_drawn += ~self.stop

    def allows_step(self, approx_kl: torch.Tensor) -> bool:
        self.counted.append((~self.stop).float())
        self.stop = self.stop | (all_reduce_mean(approx_kl) > self.kl_limit)
        self.optimizer.found_inf = self.stop.float()  # type: ignore[attr-defined]  # 1.0: the step changes nothing
        return True

    def stepped(self) -> None:
        self.step_count += ~self.stop

    def close(self) -> None:
        if hasattr(self.optimizer, "found_inf"):
            del self.optimizer.found_inf

    def metrics(self, stats: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor | float]:
        """0-d tensors: the means of the counted minibatches, ``grad_steps``, ``early_stop`` and
        ``epochs_drawn``."""
        weight = torch.stack(self.counted)
        out: dict[str, torch.Tensor | float] = {k: (torch.stack(v) * weight).sum() / weight.sum()
                                                for k, v in stats.items()}
        return out | {"grad_steps": self.step_count, "early_stop": self.stop, "epochs_drawn": self.epochs_drawn}

    def restore(self, generator: torch.Generator, values: dict[str, float]) -> None:
        """After a stop, set ``generator`` to its state after the last epoch the host loop would
        have drawn (``values``: the read :meth:`metrics`)."""
        if values["early_stop"]:
            generator.set_state(self.epoch_states[int(values["epochs_drawn"]) - 1])
