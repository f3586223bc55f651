"""Where each agent answers: the OpenAI-compatible endpoints the proxy calls (``ROUTER_UPSTREAMS_FILE``).

The file (YAML or JSON) maps agent names to endpoints::

    agents:
      calculator:
        base_url: http://127.0.0.1:9100/v1     # POST {base_url}/chat/completions
        model: calculator                      # the upstream's model name
      gpt-4o-mini:
        base_url: https://api.openai.com/v1
        model: gpt-4o-mini
        api_key_env: OPENAI_API_KEY            # the *name* of the variable holding the key

Keys are read from the environment when the server starts and are never written to a file, a
log line, a metric or an error message. Prices (for the cost of a call) are the policy's agent
prices unless the entry gives its own ``price_per_1m_tokens`` or ``cost_per_call_usd``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from contract.errors import UserError
from contract.pricing import AgentPrice
from router.errors import describe_validation_errors


class UpstreamEntry(BaseModel):
    """One agent's endpoint as the file gives it.

    Attributes:
        base_url: ``http(s)://host[:port]/path`` of the OpenAI-compatible API (``/v1`` included).
        model: the model name sent upstream.
        api_key_env: name of the environment variable holding the API key; None: no key sent.
        price_per_1m_tokens, cost_per_call_usd: the agent's price (USD), overriding the policy's.
    """

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(min_length=1, max_length=2000)
    model: str = Field(min_length=1, max_length=200)
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    price_per_1m_tokens: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    cost_per_call_usd: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class UpstreamsFile(BaseModel):
    """The whole file: ``{"agents": {name: UpstreamEntry}}``."""

    model_config = ConfigDict(extra="forbid")

    agents: dict[str, UpstreamEntry] = Field(min_length=1)


@dataclass(frozen=True)
class Upstream:
    """An agent's endpoint, ready to call.

    Attributes:
        agent: the agent's name (the policy's).
        url: ``{base_url}/chat/completions``.
        model: the upstream's model name.
        api_key: the key (sent as ``Authorization: Bearer``), or None.
        price: the agent's price list.
    """

    agent: str
    url: str
    model: str
    api_key: SecretStr | None
    price: AgentPrice

    def __repr__(self) -> str:  # never the key
        return f"Upstream(agent={self.agent!r}, url={self.url!r}, model={self.model!r})"


def load_upstreams(path: Path, agents: Sequence[str], prices: Mapping[str, AgentPrice],
                   environ: Mapping[str, str] | None = None) -> dict[str, Upstream]:
    """Read ``path`` and resolve each entry's key from the environment.

    Args:
        path: the YAML or JSON file.
        agents: the served policy's agents; every entry must name one.
        prices: each agent's price list from the policy (an entry's own price wins).
        environ: where keys are read (None: ``os.environ``).

    Returns:
        agent name -> :class:`Upstream`.

    Raises:
        UserError: the file cannot be read or parsed, names an agent the policy does not know, or
            names a key variable that is not set (the message names the variable, never a value).
    """
    environ = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"ROUTER_UPSTREAMS_FILE: cannot read {path}: {exc.strerror or exc}") from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        parsed = UpstreamsFile.model_validate(raw)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"ROUTER_UPSTREAMS_FILE: {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                        f"{str(exc).splitlines()[0]}") from None
    except ValidationError as exc:
        raise UserError(f"ROUTER_UPSTREAMS_FILE: {path}: {describe_validation_errors(exc.errors())}") from None
    unknown = sorted(set(parsed.agents) - set(agents))
    if unknown:
        raise UserError(f"ROUTER_UPSTREAMS_FILE: {path} names agents the policy does not know: {', '.join(unknown)}; "
                        f"the agents are {', '.join(agents)}")
    try:
        return {name: make_upstream(name, entry, prices, environ) for name, entry in parsed.agents.items()}
    except UserError as exc:
        raise UserError(f"ROUTER_UPSTREAMS_FILE: {exc}") from None


def make_upstream(name: str, entry: UpstreamEntry, prices: Mapping[str, AgentPrice],
                  environ: Mapping[str, str] | None = None) -> Upstream:
    """Agent ``name``'s :class:`Upstream` from its ``entry`` (the file's, or ``POST /admin/agents``'
    ``upstream``), its key read from ``environ`` (None: ``os.environ``), its price the entry's own
    else ``prices[name]``.

    Raises:
        UserError: the entry names a key variable that is not set (the message names the variable,
            never a value).
    """
    environ = os.environ if environ is None else environ
    key = None
    if entry.api_key_env is not None:
        value = environ.get(entry.api_key_env)
        if not value:
            raise UserError(f"agent {name!r} reads its API key from ${entry.api_key_env}, which is not set")
        key = SecretStr(value)
    own = entry.price_per_1m_tokens is not None or entry.cost_per_call_usd is not None
    price = (AgentPrice(price_per_1m_tokens=entry.price_per_1m_tokens, cost_per_call_usd=entry.cost_per_call_usd)
             if own else prices.get(name, AgentPrice()))
    return Upstream(agent=name, url=f"{entry.base_url}/chat/completions", model=entry.model, api_key=key, price=price)


def policy_prices(agent_specs: Sequence[Mapping[str, Any]]) -> dict[str, AgentPrice]:
    """Each agent's price list from a policy's agent records (``policy.json`` ``agent_specs``)."""
    return {str(spec["name"]): AgentPrice(price_per_1m_tokens=spec.get("price_per_1m_tokens"),
                                          cost_per_call_usd=spec.get("cost_per_call_usd"))
            for spec in agent_specs}


def added_upstreams(added: Sequence[Mapping[str, Any]], agents: Sequence[str], known: Mapping[str, Upstream],
                    prices: Mapping[str, AgentPrice], environ: Mapping[str, str] | None = None,
                    ) -> tuple[dict[str, Upstream], dict[str, str]]:
    """The upstreams of agents added at run time (``POST /admin/agents`` entries with an ``upstream``)
    that the served policy routes to (``agents``) and the file does not name (``known``).

    Returns:
        ``(agent -> Upstream, agent -> why its entry cannot be used)``.
    """
    out: dict[str, Upstream] = {}
    unusable: dict[str, str] = {}
    for spec in added:
        name, entry = str(spec.get("name")), spec.get("upstream")
        if entry is None or name not in agents or name in known:
            continue
        try:
            out[name] = make_upstream(name, UpstreamEntry.model_validate(entry), prices, environ)
        except ValidationError as exc:
            unusable[name] = describe_validation_errors(exc.errors())
        except UserError as exc:
            unusable[name] = str(exc)
    return out, unusable
