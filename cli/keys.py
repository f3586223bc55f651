"""``agent-router keys``: client keys of the OpenAI-compatible proxy."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from contract.errors import UserError


def new(
    name: Annotated[str, typer.Option(help="The key's name, shown in metrics and logs (letters, digits, _.-).")],
    budget_usd_per_day: Annotated[float | None, typer.Option(
        help="USD the key may spend per UTC day (unset: no limit).", min=0.0)] = None,
) -> None:
    """Make a client key: prints the key (give it to the client; it is not kept) and its entry for
    ROUTER_API_KEYS (only the key's SHA-256)."""
    from pydantic import ValidationError

    from router.proxy.keys import hash_key, new_key
    from router.settings import ClientKey

    key = new_key()
    try:
        entry = ClientKey(name=name, sha256=hash_key(key), budget_usd_per_day=budget_usd_per_day)
    except ValidationError as exc:
        raise UserError(f"keys new: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
    typer.echo(f"key: {key}")
    typer.echo(f"ROUTER_API_KEYS entry: {json.dumps(entry.model_dump(exclude_none=True))}")
