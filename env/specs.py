"""Tensor specs of PromptEnv and ``check_env_specs``: a short rollout that checks the contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from env.prompt_env import PromptEnv


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


def check_env_specs(env: PromptEnv, steps: int | None = None, seed: int = 0) -> None:
    """Run a random rollout of ``steps`` (default ``2 T + 1``) and check every output.

    Checks obs, state, action mask, reward, terminated and truncated against the env's specs;
    that truncation happens exactly every ``T`` steps and auto-reset zeroes the load; and that
    queues never go negative.

    Raises:
        AssertionError: with the name of the first tensor that breaks its spec.
    """
    steps = steps if steps is not None else 2 * env.episode_len + 1
    gen = torch.Generator(device=env.device).manual_seed(seed)
    out = env.reset(seed=seed)
    env.observation_spec.check("obs", out.obs)
    env.state_spec.check("state", out.state)
    env.action_mask_spec.check("action_mask", out.action_mask)
    for t in range(1, steps + 1):
        logits = torch.rand(out.action_mask.shape, generator=gen, device=env.device)
        action = logits.masked_fill(~out.action_mask, -1.0).argmax(-1)
        env.action_spec.check("action", action)
        out = env.step(action)
        for name, spec in (
            ("obs", env.observation_spec),
            ("state", env.state_spec),
            ("action_mask", env.action_mask_spec),
            ("final_obs", env.observation_spec),
            ("final_state", env.state_spec),
            ("reward", env.reward_spec),
            ("terminated", env.done_spec),
            ("truncated", env.done_spec),
        ):
            spec.check(name, getattr(out, name))
        expect_trunc = t % env.episode_len == 0
        assert bool(out.truncated.all()) == expect_trunc, f"truncated at step {t}: expected {expect_trunc}"
        assert (env.queue >= 0).all(), "queue went negative"
        if expect_trunc:
            assert (env.queue == 0).all(), "auto-reset did not clear the queues"
        assert out.action_mask.any(-1).all(), "a router has no allowed agent"


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
