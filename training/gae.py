"""Generalised Advantage Estimation as a pure function.

Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
Estimation", arXiv 1506.02438, eq. 16; the terminated/truncated split follows Pardo et al. 2018,
"Time Limits in Reinforcement Learning", arXiv 1712.00378 (a time limit bootstraps, a terminal
state does not). Same semantics as ``torchrl.objectives.value.functional.generalized_advantage_estimate``.
"""

from __future__ import annotations

import torch


def generalized_advantage_estimate(
    reward: torch.Tensor,
    value: torch.Tensor,
    next_value: torch.Tensor,
    done: torch.Tensor,
    terminated: torch.Tensor,
    gamma: float,
    gae_lambda: float,
    *,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns over a rollout, time first.

    ``delta_t = r_t + gamma * (1 - terminated_t) * V(s'_t) - V(s_t)`` and
    ``A_t = delta_t + gamma * gae_lambda * (1 - done_t) * A_{t+1}``, where ``s'_t`` is the true
    next state of step ``t`` (the final obs of a truncated episode, not the reset obs).

    Args:
        reward: ``[T, *batch]`` float, reward of step t.
        value: ``[T, *batch]`` float, ``V(s_t)``.
        next_value: ``[T, *batch]`` float, ``V(s'_t)``.
        done: ``[T, *batch]`` bool, the episode ended at step t (terminated or truncated): stops
            the accumulation of advantages across the episode boundary.
        terminated: ``[T, *batch]`` bool, ``s'_t`` is terminal: its value is not bootstrapped.
        gamma: discount in [0, 1].
        gae_lambda: GAE lambda in [0, 1].
        out: optional preallocated ``(advantage, returns)`` ``[T, *batch]`` of ``value``'s dtype and
            device, written in place and returned (must not overlap the inputs).

    Returns:
        ``(advantage, returns)``, both ``[T, *batch]`` like ``value``; ``returns = advantage + value``.

    Raises:
        ValueError: tensors of different shapes.

    Cost: ``delta`` is built in place in ``advantage`` (4 element-wise ops); the recursion then runs
    backwards in place, 2 ops per step over ``[*batch]`` and no allocation. With ``gamma * gae_lambda
    == 0`` there is no recursion: ``A_t = delta_t``.
    """
    shape = value.shape
    for name, x in (("reward", reward), ("next_value", next_value), ("done", done), ("terminated", terminated)):
        if x.shape != shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, value has {tuple(shape)}")
    if out is None:
        advantage, returns = torch.empty_like(value), torch.empty_like(value)
    else:
        advantage, returns = out
        for name, x in (("advantage", advantage), ("returns", returns)):
            if x.shape != shape:
                raise ValueError(f"out {name} has shape {tuple(x.shape)}, value has {tuple(shape)}")
    # delta_t = r_t + gamma * (1 - terminated_t) * V(s'_t) - V(s_t), built in ``advantage``
    torch.mul(next_value, gamma, out=advantage)
    advantage.masked_fill_(terminated.bool(), 0.0).add_(reward).sub_(value)
    discount = gamma * gae_lambda
    if discount != 0 and value.shape[0] > 1:
        # A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}, backwards, in place
        not_done_discount = torch.full_like(value, discount).masked_fill_(done.bool(), 0.0)
        carry = torch.empty_like(value[0])
        for t in range(value.shape[0] - 2, -1, -1):
            torch.mul(not_done_discount[t], advantage[t + 1], out=carry)
            advantage[t].add_(carry)
    torch.add(advantage, value, out=returns)
    return advantage, returns
