"""``max_cost_usd_per_1k`` on ``POST /v1/route``, over HTTP: a budget in place of ``cost_weight``
allows only the agents whose expected cost of the prompt fits; larger ``cost_weight`` never
chooses a dearer agent; bad values, both at once, and budgets nothing fits are 422."""

from __future__ import annotations

import httpx
import pytest

from contract.pricing import AgentPrice, call_cost_usd, prompt_tokens
from tests.harness import AGENTS, agent_specs, priced_checkpoint

PROMPT = "x" * 400  # 100 tokens by the dataset's rule


def expected_cost_1k(agent: str) -> float:
    spec = agent_specs()[AGENTS.index(agent)]
    price = AgentPrice(price_per_1m_tokens=spec["price_per_1m_tokens"], cost_per_call_usd=spec["cost_per_call_usd"])
    return 1000.0 * call_cost_usd(price, prompt_tokens(PROMPT))


@pytest.fixture(scope="module")
def priced_server(start_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("priced")
    version = priced_checkpoint(root / "checkpoints")
    return start_server({"ROUTER_CHECKPOINT": str(version),
                         "ROUTER_SQLITE_PATH": str(root / "experience.sqlite3")}).wait_ready()


@pytest.mark.parametrize(("budget", "agent"), [(None, 6), (7.0, 6), (2.0, 8), (1.0, 1), (0.1, 0)])
def test_a_budget_allows_only_the_agents_that_fit(priced_server, budget, agent):
    body = {"prompt": PROMPT} | ({} if budget is None else {"max_cost_usd_per_1k": budget})
    r = httpx.post(f"{priced_server.url}/v1/route", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["agent"] == AGENTS[agent]
    if budget is not None:
        assert expected_cost_1k(r.json()["agent"]) <= budget
        assert r.json()["cost_weight"] == 0.0  # within the budget it routes for quality


def test_a_larger_cost_weight_never_chooses_a_dearer_agent(priced_server):
    with httpx.Client(base_url=priced_server.url, timeout=30) as c:
        agents = [c.post("/v1/route", json={"prompt": PROMPT, "cost_weight": w}).json()["agent"]
                  for w in (0, 1, 3, 10, 30, 100, 300, 1000, 1e4, 1e6)]
    costs = [expected_cost_1k(a) for a in agents]
    assert costs == sorted(costs, reverse=True) and costs[0] > costs[-1], list(zip(agents, costs, strict=True))


@pytest.mark.parametrize(("body", "words"), [
    ({"prompt": PROMPT, "max_cost_usd_per_1k": -1}, "greater than 0"),
    ({"prompt": PROMPT, "max_cost_usd_per_1k": 0}, "greater than 0"),
    ({"prompt": PROMPT, "max_cost_usd_per_1k": "cheap"}, "valid number"),
    ({"prompt": PROMPT, "max_cost_usd_per_1k": 1.0, "cost_weight": 10}, "not both"),
    ({"prompt": PROMPT, "max_cost_usd_per_1k": 0.1, "candidates": AGENTS[1:]}, "no allowed agent fits"),
])
def test_bad_budgets_are_422(priced_server, body, words):
    r = httpx.post(f"{priced_server.url}/v1/route", json=body, timeout=30)
    assert r.status_code == 422, r.text
    assert "max_cost_usd_per_1k" in str(r.json()["detail"]) and words in str(r.json()["detail"])


def test_nan_budget_is_422(priced_server):
    r = httpx.post(f"{priced_server.url}/v1/route", content='{"prompt": "x", "max_cost_usd_per_1k": NaN}',
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 422 and "finite" in r.json()["detail"]


def test_a_policy_without_prices_refuses_a_budget(client):
    r = client.post("/v1/route", json={"prompt": "hi", "max_cost_usd_per_1k": 1.0})
    assert r.status_code == 422 and "does not know the agents' prices" in r.json()["detail"]
