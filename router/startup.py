"""Start-up errors as one line: invalid settings, a bad checkpoint, a store that cannot open."""

from __future__ import annotations

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.errors import UserError


def describe_settings_error(exc: ValidationError) -> str:
    """``"invalid settings: ROUTER_PORT: Input should be ...; ..."``."""
    parts = []
    for error in exc.errors():
        loc = error.get("loc", ())
        msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"ROUTER_{'_'.join(str(p) for p in loc).upper()}: {msg}" if loc else msg)
    return "invalid settings: " + "; ".join(parts)


class OneLineStartupErrors:
    """ASGI middleware: a :class:`UserError` raised at startup is reported as one line.

    Starlette sends the formatted traceback in ``lifespan.startup.failed`` (uvicorn logs it);
    this replaces it with ``cannot start: <message>`` and ends the lifespan cleanly.

    Args:
        app: the wrapped app.
        failures: the list the lifespan appends its :class:`UserError` to.
    """

    def __init__(self, app: ASGIApp, failures: list[UserError]) -> None:
        self.app = app
        self.failures = failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        reported = False

        async def send_one_line(message: Message) -> None:
            nonlocal reported
            if message["type"] == "lifespan.startup.failed" and self.failures:
                message = {"type": message["type"], "message": f"cannot start: {self.failures[-1]}"}
                reported = True
            await send(message)

        try:
            await self.app(scope, receive, send_one_line)
        except UserError:
            if not reported:
                raise
