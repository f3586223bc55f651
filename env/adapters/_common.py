"""Helpers shared by the benchmark adapters: padding per-agent tensors, specs, errors, a spec check.

Shapes: ``B`` worlds, ``N`` agents, ``D`` obs features (the largest agent's), ``A`` actions (the
largest agent's action count).
"""

from __future__ import annotations

import torch

from contract.errors import UserError
from env.base import MultiAgentStep


class MissingExtraError(UserError, ModuleNotFoundError):
    """An optional dependency of a benchmark adapter is not installed (the message names the extra)."""


class UnknownEnvError(UserError, ValueError):
    """A benchmark env name that no adapter knows."""


def require(module: str, extra: str) -> None:
    """Import ``module`` or raise :class:`MissingExtraError` telling which extra installs it."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f'{module} is not installed: pip install -e ".[{extra}]"') from None


def pad_stack(per_agent: list[torch.Tensor], dim: int) -> torch.Tensor:
    """``N`` tensors ``[B, d_i]`` -> ``[B, N, dim]`` float32, zero-padded on the right where ``d_i < dim``."""
    B = per_agent[0].shape[0]
    out = torch.zeros(B, len(per_agent), dim, dtype=torch.float32, device=per_agent[0].device)
    for i, x in enumerate(per_agent):
        out[:, i, : x.shape[-1]] = x
    return out


def action_mask_rows(num_actions: list[int]) -> torch.Tensor:
    """``[N, A]`` bool, ``A = max(num_actions)``: True for agent ``i``'s actions ``0 .. num_actions[i] - 1``."""
    A = max(num_actions)
    return torch.arange(A).unsqueeze(0) < torch.tensor(num_actions).unsqueeze(1)


def check_adapter_specs(env, steps: int = 10, seed: int = 0) -> list[MultiAgentStep]:
    """Run ``steps`` uniformly random allowed actions and check every output against the env's specs.

    Also checks that ``terminated`` and ``truncated`` are disjoint and that ``final_obs == obs``
    wherever a world is not done. Returns the steps (reset first) for further checks.

    Raises:
        AssertionError: naming the first tensor that breaks its spec.
    """
    gen = torch.Generator().manual_seed(seed)
    out = env.reset(seed=seed)
    outs = [out]
    for name, spec in (("obs", env.observation_spec), ("state", env.state_spec),
                       ("action_mask", env.action_mask_spec)):
        spec.check(name, getattr(out, name))
    for _ in range(steps):
        logits = torch.rand(out.action_mask.shape, generator=gen).to(out.action_mask.device)
        action = logits.masked_fill(~out.action_mask, -1.0).argmax(-1)
        env.action_spec.check("action", action)
        out = env.step(action)
        outs.append(out)
        for name, spec in (("obs", env.observation_spec), ("state", env.state_spec),
                           ("action_mask", env.action_mask_spec), ("final_obs", env.observation_spec),
                           ("final_state", env.state_spec), ("reward", env.reward_spec),
                           ("terminated", env.done_spec), ("truncated", env.done_spec)):
            spec.check(name, getattr(out, name))
        assert not (out.terminated & out.truncated).any(), "terminated and truncated overlap"
        live = ~out.done
        assert torch.equal(out.final_obs[live], out.obs[live]), "final_obs differs from obs in a live world"
        assert out.action_mask.any(-1).all(), "an agent has no allowed action"
    return outs
