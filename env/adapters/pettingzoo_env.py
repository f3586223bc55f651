"""``B`` copies of a PettingZoo ParallelEnv as one batched :class:`env.base.MultiAgentEnv` on torch tensors.

PettingZoo (Terry et al. 2021, arXiv 2009.14471) is not vectorised, so the copies are stepped in a
Python loop; this is meant for small benchmarks such as the MPE tasks (Lowe et al. 2017,
"Multi-Agent Actor-Critic for Mixed Cooperative-Competitive Environments", arXiv 1706.02275),
e.g. ``mpe2.simple_spread_v3.parallel_env(N=3, continuous_actions=False, max_cycles=25)``.

- Agents are in the fixed order of ``possible_agents``; ``N = len(possible_agents)``.
- obs ``[B, N, D]`` float32: each agent's observation flattened and zero-padded to the largest
  agent's ``D``; with dict observations (``{"observation", "action_mask"}``) the ``observation`` part.
- state ``[B, N * D]`` float32: all agents' obs concatenated.
- action ``[B, N]`` int64; ``action_mask [B, N, A]`` bool from ``obs["action_mask"]`` when the env
  provides it, else True for each agent's ``Discrete(n)`` actions (``A`` = the largest ``n``).
- reward ``[B, N]`` float32; agents absent from a step (already removed by the env) get reward 0,
  zero obs and an all-True mask, and their actions are not sent.
- A copy's episode ends when the env has no agents left. ``terminated[b]``: every agent that acted in
  the last step was terminated; ``truncated[b]``: the episode ended otherwise (a time limit such as
  ``max_cycles``). The two are disjoint.
- Ended copies are reset (seed None: the copy's generator continues) and ``final_obs``/``final_state``
  keep the obs returned by the step that ended the episode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from env.base import MultiAgentStep
from env.specs import BatchedEnvSpecs


def _dict_space(space: Any) -> dict | None:
    """The sub-spaces of a gymnasium ``Dict`` space, else None (duck-typed: no gymnasium import)."""
    spaces = getattr(space, "spaces", None)
    return spaces if isinstance(spaces, dict) else None


class PettingZooEnv(BatchedEnvSpecs):
    """``num_worlds`` copies of a PettingZoo ParallelEnv stepped together.

    Args:
        env_fn: builds one ParallelEnv (called ``num_worlds`` times).
        num_worlds: ``B``.
        seed: copy ``b`` is reset with ``seed + b`` by :meth:`reset` (when it gets no seed of its own).
        device: where the returned tensors live (stepping is on the CPU).

    Raises:
        ValueError: an agent whose action space is not ``Discrete``.
    """

    def __init__(self, env_fn: Callable[[], Any], num_worlds: int = 8, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        self.envs = [env_fn() for _ in range(num_worlds)]
        self.num_worlds, self.device, self._seed = num_worlds, torch.device(device), seed
        first = self.envs[0]
        self.agent_names = list(first.possible_agents)
        self.num_routers = len(self.agent_names)
        self._has_mask = []
        dims = []
        for name in self.agent_names:
            space = first.observation_space(name)
            sub = _dict_space(space)
            self._has_mask.append(sub is not None and "action_mask" in sub)
            obs_space = sub["observation"] if sub is not None else space
            dims.append(int(np.prod(obs_space.shape)))
        self._agent_actions = []
        for name in self.agent_names:
            space = first.action_space(name)
            if not hasattr(space, "n"):
                raise ValueError(f"agent {name!r}: expected a Discrete action space, got {space}")
            self._agent_actions.append(int(space.n))
        self.obs_dim = max(dims)
        self.state_dim = self.num_routers * self.obs_dim
        self._index = {name: i for i, name in enumerate(self.agent_names)}

    @property
    def num_actions(self) -> int:
        """``A``: the largest agent's number of discrete actions."""
        return max(self._agent_actions)

    def _fill(self, b: int, obs: dict[str, Any], obs_out: np.ndarray, mask_out: np.ndarray) -> None:
        """Write copy ``b``'s obs dict into row ``b`` of ``obs_out [B, N, D]`` and ``mask_out [B, N, A]``."""
        obs_out[b] = 0.0
        mask_out[b] = True
        for name, o in obs.items():
            i = self._index[name]
            if self._has_mask[i]:
                mask_out[b, i, : self._agent_actions[i]] = np.asarray(o["action_mask"], dtype=bool)
                mask_out[b, i, self._agent_actions[i]:] = False
                o = o["observation"]
            else:
                mask_out[b, i, self._agent_actions[i]:] = False
            flat = np.asarray(o, dtype=np.float32).reshape(-1)
            obs_out[b, i, : flat.shape[0]] = flat

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        B, N = self.num_worlds, self.num_routers
        return np.zeros((B, N, self.obs_dim), np.float32), np.ones((B, N, self.num_actions), bool)

    def _tensors(self, obs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        o = torch.from_numpy(obs).to(self.device)
        return o, o.reshape(self.num_worlds, self.state_dim)

    def reset(self, seed: int | None = None) -> MultiAgentStep:
        """Reset every copy, copy ``b`` with seed ``(seed or the constructor's seed) + b``."""
        base = self._seed if seed is None else seed
        obs_np, mask_np = self._arrays()
        for b, env in enumerate(self.envs):
            obs, _ = env.reset(seed=base + b)
            self._fill(b, obs, obs_np, mask_np)
        obs, state = self._tensors(obs_np)
        zeros = torch.zeros(self.num_worlds, self.num_routers, device=self.device)
        done = torch.zeros(self.num_worlds, dtype=torch.bool, device=self.device)
        return MultiAgentStep(obs, state, torch.from_numpy(mask_np).to(self.device), zeros, done, done, obs, state)

    def step(self, action: torch.Tensor) -> MultiAgentStep:
        """Step every copy with ``action`` (``[B, N]`` int64) and reset the copies whose episode ended.

        Raises:
            ValueError: wrong action shape.
        """
        B, N = self.num_worlds, self.num_routers
        if action.shape != (B, N):
            raise ValueError(f"action must have shape {(B, N)}, got {tuple(action.shape)}")
        act = action.detach().cpu().numpy()
        final_np, mask_np = self._arrays()
        reward = np.zeros((B, N), np.float32)
        terminated = np.zeros(B, bool)
        truncated = np.zeros(B, bool)
        ended: list[int] = []
        for b, env in enumerate(self.envs):
            acting = list(env.agents)
            obs, rew, term, _, _ = env.step({name: int(act[b, self._index[name]]) for name in acting})
            self._fill(b, obs, final_np, mask_np)
            for name, r in rew.items():
                reward[b, self._index[name]] = r
            if not env.agents:
                ended.append(b)
                terminated[b] = all(term.get(name, False) for name in acting)
                truncated[b] = not terminated[b]
        obs_np = final_np.copy() if ended else final_np
        for b in ended:
            obs, _ = self.envs[b].reset()
            self._fill(b, obs, obs_np, mask_np)
        final_obs, final_state = self._tensors(final_np)
        obs, state = self._tensors(obs_np) if ended else (final_obs, final_state)
        dev = self.device
        return MultiAgentStep(obs, state, torch.from_numpy(mask_np).to(dev), torch.from_numpy(reward).to(dev),
                              torch.from_numpy(terminated).to(dev), torch.from_numpy(truncated).to(dev),
                              final_obs, final_state)
