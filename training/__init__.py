"""MAPPO for PromptEnv: networks, rollout buffer, GAE, PPO loss, trainer, checkpoints, evaluation."""
