"""The routing service: the FastAPI app and its settings, the routing capability, hot swap, live load,
cooldowns, metrics and the OpenAI-compatible proxy. It stands on ``policy`` and ``experience``,
never on the trainer."""
