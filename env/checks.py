"""``check_env_specs``: a short random rollout of a PromptEnv that checks its contract."""

from __future__ import annotations

import torch

from env.prompt_env import PromptEnv


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
