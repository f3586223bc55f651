"""The proxy's configuration: the upstreams file, client keys, and what a key spends."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import ValidationError

from contract.errors import UserError
from contract.pricing import AgentPrice
from experience.redis_client import RedisErrors, open_redis
from router.proxy.keys import OPEN_KEY, KeyRefused, LocalKeySpend, RedisKeySpend, authenticate, hash_key, new_key
from router.settings import ClientKey, Settings
from router.upstreams import added_upstreams, load_upstreams

AGENTS = ["calculator", "smollm2"]
PRICES = {"calculator": AgentPrice(cost_per_call_usd=0.0001), "smollm2": AgentPrice(price_per_1m_tokens=0.2)}


def write(tmp_path, content, name="upstreams.yaml"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_upstreams_resolve_keys_from_the_environment_and_prices_from_the_policy(tmp_path):
    path = write(tmp_path, "agents:\n  smollm2:\n    base_url: http://127.0.0.1:9100/v1/\n    model: smollm2\n"
                           "    api_key_env: SMOL_KEY\n  calculator:\n    base_url: http://127.0.0.1:9100/v1\n"
                           "    model: calculator\n    cost_per_call_usd: 0.0\n")
    upstreams = load_upstreams(path, AGENTS, PRICES, environ={"SMOL_KEY": "sk-secret"})
    smol = upstreams["smollm2"]
    assert smol.url == "http://127.0.0.1:9100/v1/chat/completions" and smol.model == "smollm2"
    assert smol.api_key is not None and smol.api_key.get_secret_value() == "sk-secret"
    assert "sk-secret" not in repr(smol) and "sk-secret" not in str(upstreams)
    assert smol.price == PRICES["smollm2"]
    assert upstreams["calculator"].price == AgentPrice(cost_per_call_usd=0.0)  # the file's own price wins
    assert upstreams["calculator"].api_key is None


@pytest.mark.parametrize(("content", "message"), [
    ({"agents": {"gpt-9": {"base_url": "http://x/v1", "model": "m"}}}, "names agents the policy does not know: gpt-9"),
    ({"agents": {"smollm2": {"base_url": "ftp://x", "model": "m"}}}, "base_url"),
    ({"agents": {"smollm2": {"base_url": "http://x", "model": "m", "api_key": "inline"}}}, "api_key"),
    ({"agents": {"smollm2": {"base_url": "http://x", "model": "m", "api_key_env": "NOT_SET_ANYWHERE"}}},
     "reads its API key from $NOT_SET_ANYWHERE, which is not set"),
    ({"agents": {}}, "agents"),
    ("agents: [unclosed", "not valid YAML"),
])
def test_a_bad_upstreams_file_is_one_clear_error(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(UserError, match=message.replace("$", r"\$").replace("[", r"\[")):
        load_upstreams(path, AGENTS, PRICES, environ={})


def test_a_missing_upstreams_file_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        load_upstreams(tmp_path / "nope.yaml", AGENTS, PRICES)


def settings(**fields) -> Settings:
    return Settings.model_validate(fields)


def test_keys_are_checked_by_their_hash_only():
    key = new_key()
    assert key.startswith("ar-") and len(key) > 40
    s = settings(api_keys=[{"name": "team-a", "sha256": hash_key(key)}])
    assert authenticate(s, f"Bearer {key}", "10.0.0.1").name == "team-a"
    for header in (None, "", "Bearer", f"Basic {key}", "Bearer wrong"):
        with pytest.raises(KeyRefused) as info:
            authenticate(s, header, "127.0.0.1")
        assert info.value.status_code == 401 and key not in str(info.value)


def test_without_keys_the_proxy_is_closed_unless_opened_on_loopback():
    with pytest.raises(KeyRefused) as info:
        authenticate(settings(), None, "127.0.0.1")
    assert info.value.status_code == 403 and "ROUTER_API_KEYS" in str(info.value)
    opened = settings(proxy_open=True)
    assert authenticate(opened, None, "127.0.0.1") is OPEN_KEY
    with pytest.raises(KeyRefused):
        authenticate(opened, None, "10.0.0.1")
    with pytest.raises(ValidationError, match="proxy_open needs a loopback host"):
        settings(proxy_open=True, host="0.0.0.0")


def test_key_settings_refuse_plain_keys_and_twin_names():
    with pytest.raises(ValidationError):
        settings(api_keys=[{"name": "a", "sha256": "not-a-hash"}])
    with pytest.raises(ValidationError, match="its own name"):
        settings(api_keys=[{"name": "a", "sha256": "a" * 64}, {"name": "a", "sha256": "b" * 64}])


def check_budget(spend) -> None:
    async def run():
        key = ClientKey(name="k", sha256="a" * 64, budget_usd_per_day=0.01)
        await spend.check(key)
        await spend.add("k", 0.004)
        await spend.check(key)
        await spend.add("k", 0.006)
        assert await spend.spent("k") == pytest.approx(0.01)
        with pytest.raises(KeyRefused) as info:
            await spend.check(key)
        assert info.value.status_code == 429 and "0.01 USD" in str(info.value)
        await spend.check(ClientKey(name="k", sha256="a" * 64))  # no budget: never refused

    asyncio.run(run())


def test_a_key_is_refused_once_its_daily_budget_is_spent():
    check_budget(LocalKeySpend())


@pytest.mark.redis
def test_the_spending_is_shared_through_redis(redis_url, redis_prefix):
    async def make():
        return RedisKeySpend(open_redis(redis_url), redis_prefix, RedisErrors())

    check_budget(asyncio.run(make()))


def test_keys_new_prints_a_key_and_only_its_hash_for_the_settings():
    import subprocess
    import sys

    from tests.harness import ROOT

    run = subprocess.run([sys.executable, "-m", "cli", "keys", "new", "--name", "team-a",
                          "--budget-usd-per-day", "2.5"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    key_line, entry_line = run.stdout.strip().splitlines()
    key = key_line.removeprefix("key: ")
    entry = json.loads(entry_line.removeprefix("ROUTER_API_KEYS entry: "))
    assert entry == {"name": "team-a", "sha256": hash_key(key), "budget_usd_per_day": 2.5}
    assert authenticate(settings(api_keys=[entry]), f"Bearer {key}", None).name == "team-a"
    bad = subprocess.run([sys.executable, "-m", "cli", "keys", "new", "--name", "no spaces"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: keys new: name:") and "Traceback" not in bad.stderr


def test_agents_added_with_an_upstream_are_proxied_once_served_and_never_leak_their_key():
    added = [{"name": "poet", "price_per_1m_tokens": 0.3,
              "upstream": {"base_url": "http://127.0.0.1:9000/v1/", "model": "p", "api_key_env": "POET_KEY"}},
             {"name": "plain", "price_per_1m_tokens": 0.1},
             {"name": "pending", "upstream": {"base_url": "http://h/v1", "model": "q"}},
             {"name": "broken", "upstream": {"base_url": "ftp://h", "model": "b"}},
             {"name": "keyless", "upstream": {"base_url": "http://h/v1", "model": "k", "api_key_env": "NOT_SET_HERE"}}]
    prices = {"poet": AgentPrice(price_per_1m_tokens=0.3)}
    found, unusable = added_upstreams(added, ["poet", "plain", "broken", "keyless"], {}, prices,
                                      environ={"POET_KEY": "sk-secret"})
    assert list(found) == ["poet"]  # "pending" is not served yet; "plain" came without one
    poet = found["poet"]
    assert poet.url == "http://127.0.0.1:9000/v1/chat/completions" and poet.price == prices["poet"]
    assert poet.api_key.get_secret_value() == "sk-secret" and "sk-secret" not in repr(poet)
    assert "http://" in unusable["broken"] and "NOT_SET_HERE" in unusable["keyless"]
    # an agent the file names keeps the file's endpoint
    assert added_upstreams(added, ["poet"], {"poet": poet}, prices, environ={})[0] == {}
