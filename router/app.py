"""The routing server (FastAPI): the app factory and its lifespan. Run it with::

    uvicorn router.app:create_app --factory

The lifespan builds the :class:`~router.context.AppContext` (policy, embedding model, experience
store, load tracker, Redis follower); the endpoints live in :mod:`router.routes`. A checkpoint that
cannot be loaded, or bad settings, stop the server with a one-line error and a non-zero exit code
(uvicorn: 3).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic import ValidationError

from contract.errors import UserError
from router.auth import log_admin_mode
from router.context import open_context
from router.errors import install_error_handlers
from router.limits import BodySizeLimitMiddleware
from router.logging import configure_logging
from router.metrics import ObservabilityMiddleware, RouterMetrics
from router.proxy.openai_api import OpenAIError, openai_error_response
from router.routes import admin_agents, admin_policy, agents, chat, feedback, health, metrics, route
from router.settings import Settings
from router.startup import OneLineStartupErrors, describe_settings_error

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; nothing is loaded until its lifespan starts.

    Args:
        settings: the configuration; None reads :class:`Settings` from ``ROUTER_*`` environment
            variables now. Invalid variables are reported when the app starts (one line, as
            ``UserError``), so that ``uvicorn --factory`` prints no traceback.

    Returns:
        The FastAPI app; while it runs, ``app.state.context`` is its
        :class:`~router.context.AppContext`.

    Raises (at startup, from the lifespan):
        UserError: invalid settings; :class:`~policy.checkpoint.CheckpointError` for a missing,
            corrupt or unfitting checkpoint; an embedding model that cannot be loaded; a
            malformed Redis URL or an SQLite file that cannot be opened.
    """
    settings_error: UserError | None = None
    if settings is None:
        try:
            settings = Settings()
        except ValidationError as exc:
            settings_error = UserError(describe_settings_error(exc))
    failures: list[UserError] = []
    app_metrics = RouterMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            if settings_error is not None:
                raise settings_error
            assert settings is not None
            configure_logging(settings.log_level, settings.log_format)
            log_admin_mode(settings)
            if settings.max_body_bytes < 6 * settings.max_prompt_chars + 4096:
                logger.warning("ROUTER_MAX_BODY_BYTES=%d may refuse (413) prompts under ROUTER_MAX_PROMPT_CHARS=%d "
                               "when their characters are JSON-escaped (6 bytes each)",
                               settings.max_body_bytes, settings.max_prompt_chars)
            async with open_context(settings, app_metrics) as context:
                app.state.context = context
                try:
                    yield
                finally:
                    del app.state.context
        except UserError as exc:
            failures.append(exc)
            raise

    app = FastAPI(
        title="agent-router",
        summary="Routes each prompt to the specialist LLM agent a learned (MAPPO) policy picks.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.metrics = app_metrics
    app_metrics.bind(app)
    body_limit = settings.max_body_bytes if settings is not None else Settings.model_fields["max_body_bytes"].default
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=body_limit)
    app.add_middleware(ObservabilityMiddleware, owner=app,
                       server_timing=settings.server_timing if settings is not None else False)
    app.add_middleware(OneLineStartupErrors, failures=failures)
    install_error_handlers(app)
    app.add_exception_handler(OpenAIError, openai_error_response)
    for module in (route, feedback, chat, agents, health, metrics, admin_policy, admin_agents):
        app.include_router(module.api)
    return app
