"""VMAS scenarios as a :class:`env.base.MultiAgentEnv` (discrete actions).

VMAS (Bettini et al. 2022, "VMAS: A Vectorized Multi-Agent Simulator for Collective Robot
Learning", arXiv 2207.03530) already steps ``B`` worlds as batched torch tensors on one device; this
adapter only reshapes its per-agent lists into the trainer's tensors:

- obs ``[B, N, D]`` float32: agent ``i``'s observation (dict observations flattened in key
  order), zero-padded to the largest agent's ``D``;
- state ``[B, N * D]`` float32: all agents' obs concatenated (the MAPPO critic input);
- action ``[B, N]`` int64 in ``[0, A)``: VMAS's flat discrete action per agent (for ``navigation``
  ``A = 9``: the 3 x 3 product of {none, -, +} forces on x and y); ``action_mask [B, N, A]`` bool is
  True everywhere unless agents have different action counts (then the surplus actions are masked);
- reward ``[B, N]`` float32: ``scenario.reward(agent)``;
- ``terminated [B]``: ``scenario.done()`` (e.g. navigation: every agent on its goal);
  ``truncated [B]``: VMAS's step counter reached ``max_steps`` and the world did not terminate at
  that step (the two flags are disjoint; VMAS's own ``done`` is their union);
- done worlds are reset (``reset_at`` per world, or one vectorised ``reset`` when all are done);
  ``final_obs``/``final_state`` keep the true next obs of the step that ended the episode;
- ``info``: the scenario's per-agent info scalars (``[B, N]`` float32; navigation: ``pos_rew``,
  ``final_rew``, ``agent_collisions``), which the trainer averages into its metrics.
"""

from __future__ import annotations

from typing import Any

import torch

from env.adapters._common import action_mask_rows, pad_stack, require
from env.base import MultiAgentStep
from env.specs import BatchedEnvSpecs


def _flatten_obs(obs: Any, B: int) -> torch.Tensor:
    """One agent's VMAS observation (tensor or nested dict of tensors) -> ``[B, d]`` float32."""
    if isinstance(obs, dict):
        return torch.cat([_flatten_obs(obs[k], B) for k in obs], dim=-1)
    return obs.reshape(B, -1).float()


class VmasEnv(BatchedEnvSpecs):
    """A VMAS scenario with ``num_worlds`` vectorised worlds and discrete actions.

    Args:
        scenario: a VMAS scenario name (``"navigation"``, ``"balance"``, ...) or a
            ``vmas.simulator.scenario.BaseScenario`` instance.
        num_worlds: ``B``.
        device: where VMAS simulates and every returned tensor lives.
        seed: seeds VMAS's own random state (VMAS keeps one for the process, apart from torch's global one).
        max_steps: episode length before truncation; None for none (then only ``scenario.done()`` ends
            an episode).
        **scenario_kwargs: passed to the scenario (``n_agents=3``, ``collisions=False``, ...).

    Raises:
        MissingExtraError: vmas is not installed.
        ValueError: a scenario whose action space is not discrete per agent.
    """

    def __init__(self, scenario: Any, num_worlds: int = 32, device: str | torch.device = "cpu", seed: int = 0,
                 max_steps: int | None = 100, **scenario_kwargs: Any) -> None:
        require("vmas", "vmas")
        import vmas

        self.device = torch.device(device)
        self.num_worlds = num_worlds
        self.max_steps = max_steps
        self._seed = seed
        self._env = vmas.make_env(scenario, num_envs=num_worlds, device=self.device, continuous_actions=False,
                                  max_steps=max_steps, seed=seed, terminated_truncated=True, **scenario_kwargs)
        spaces = list(self._env.action_space)
        if not all(hasattr(s, "n") for s in spaces):
            raise ValueError(f"VMAS scenario {scenario!r}: expected one Discrete action space per agent, got {spaces}")
        self.agent_names = [a.name for a in self._env.agents]
        self.num_routers = len(self.agent_names)
        self._agent_actions = [int(s.n) for s in spaces]
        obs = self._observe()
        self._obs_dims = [_flatten_obs(o, num_worlds).shape[-1] for o in obs]
        self.obs_dim = max(self._obs_dims)
        self.state_dim = self.num_routers * self.obs_dim
        self._mask = action_mask_rows(self._agent_actions).to(self.device)

    @property
    def num_actions(self) -> int:
        """``A``: the largest agent's number of discrete actions."""
        return max(self._agent_actions)

    def _mask_b(self) -> torch.Tensor:
        return self._mask.unsqueeze(0).expand(self.num_worlds, *self._mask.shape)

    def _stack(self, obs: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        o = pad_stack([_flatten_obs(x, self.num_worlds) for x in obs], self.obs_dim)
        return o, o.reshape(self.num_worlds, self.state_dim)

    def _observe(self) -> list[Any]:
        return self._env.get_from_scenario(get_observations=True, get_rewards=False, get_infos=False,
                                           get_dones=False)[0]

    def reset(self, seed: int | None = None) -> MultiAgentStep:
        """Reset every world (reseeding VMAS when ``seed`` is given); rewards zero, nothing done."""
        obs, state = self._stack(self._env.reset(seed=seed))
        zeros = torch.zeros(self.num_worlds, self.num_routers, device=self.device)
        done = torch.zeros(self.num_worlds, dtype=torch.bool, device=self.device)
        return MultiAgentStep(obs, state, self._mask_b(), zeros, done, done, obs, state)

    def step(self, action: torch.Tensor) -> MultiAgentStep:
        """Apply ``action`` (``[B, N]`` int64) and auto-reset the worlds that ended.

        Raises:
            ValueError: wrong action shape.
        """
        B, N = self.num_worlds, self.num_routers
        if action.shape != (B, N):
            raise ValueError(f"action must have shape {(B, N)}, got {tuple(action.shape)}")
        action = action.to(self.device, torch.long)
        obs, rews, terminated, truncated, infos = self._env.step([action[:, i : i + 1] for i in range(N)])
        reward = torch.stack([r.reshape(B) for r in rews], dim=1).float()
        terminated = terminated.reshape(B).bool()
        truncated = truncated.reshape(B).bool() & ~terminated
        final_obs, final_state = self._stack(obs)
        done = terminated | truncated
        n_done = int(done.sum())
        if n_done:
            if n_done == B:
                self._env.reset(return_observations=False)
            else:
                for i in done.nonzero().flatten().tolist():
                    self._env.reset_at(i, return_observations=False)
            next_obs, next_state = self._stack(self._observe())
        else:
            next_obs, next_state = final_obs, final_state
        return MultiAgentStep(next_obs, next_state, self._mask_b(), reward, terminated, truncated,
                              final_obs, final_state, self._info(infos))

    def _info(self, infos: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """The info scalars every agent reports, as ``[B, N]`` float32."""
        B = self.num_worlds
        keys = [k for k in infos[0] if all(
            isinstance(i.get(k), torch.Tensor) and i[k].numel() == B for i in infos)]
        return {k: torch.stack([i[k].reshape(B).float() for i in infos], dim=1) for k in keys}
