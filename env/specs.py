"""Tensor specs (:class:`TensorSpec`) of the batched multi-agent envs, and their properties."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorSpec:
    """Shape, dtype and inclusive value range of one tensor the env produces or takes."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    low: float | None = None
    high: float | None = None

    def check(self, name: str, x: torch.Tensor) -> None:
        """Raise ``AssertionError`` naming ``name`` when ``x`` does not conform."""
        assert isinstance(x, torch.Tensor), f"{name}: expected a tensor, got {type(x).__name__}"
        assert tuple(x.shape) == self.shape, f"{name}: shape {tuple(x.shape)} != spec {self.shape}"
        assert x.dtype == self.dtype, f"{name}: dtype {x.dtype} != spec {self.dtype}"
        if x.dtype.is_floating_point:
            assert torch.isfinite(x).all(), f"{name}: non-finite values"
        if x.numel() and self.low is not None:
            assert x.min().item() >= self.low, f"{name}: min {x.min().item()} < {self.low}"
        if x.numel() and self.high is not None:
            assert x.max().item() <= self.high, f"{name}: max {x.max().item()} > {self.high}"


class BatchedEnvSpecs:
    """Spec properties (:class:`TensorSpec`) of a batched multi-agent env with ``num_worlds``,
    ``num_routers``, ``obs_dim``, ``state_dim`` and ``num_actions``; rewards and obs are unbounded
    unless a subclass narrows ``reward_spec`` (PromptEnv does)."""

    num_worlds: int
    num_routers: int
    obs_dim: int
    state_dim: int

    @property
    def num_actions(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def observation_spec(self) -> TensorSpec:
        return TensorSpec((self.num_worlds, self.num_routers, self.obs_dim), torch.float32)

    @property
    def state_spec(self) -> TensorSpec:
        return TensorSpec((self.num_worlds, self.state_dim), torch.float32)

    @property
    def action_spec(self) -> TensorSpec:
        return TensorSpec((self.num_worlds, self.num_routers), torch.int64, 0, self.num_actions - 1)

    @property
    def action_mask_spec(self) -> TensorSpec:
        return TensorSpec((self.num_worlds, self.num_routers, self.num_actions), torch.bool)

    @property
    def reward_spec(self) -> TensorSpec:
        return TensorSpec((self.num_worlds, self.num_routers), torch.float32)

    @property
    def done_spec(self) -> TensorSpec:
        return TensorSpec((self.num_worlds,), torch.bool)
