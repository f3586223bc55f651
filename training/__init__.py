"""MAPPO for PromptEnv: rollout buffer, GAE, PPO loss, trainer, evaluation, tuning, the cold start,
and the retrain job (the learner from logged feedback). It writes what ``policy`` reads and reads
what ``experience`` logged; it never imports the server."""
