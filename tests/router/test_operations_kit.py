"""The operators' kit (docs/operations.md): docker-compose.yml parses and runs only real
``agent-router`` commands with options they have, Prometheus scrapes both replicas, Grafana is
provisioned with the dashboard, and every metric a panel or an alert rule queries is exported by a
running server on the real Redis."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import httpx
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from policy.versions import VersionKeys
from tests.harness import ROOT

COMPOSE = ROOT / "docker-compose.yml"
DASHBOARD = ROOT / "deploy/grafana/dashboards/agent-router.json"
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"
#: series Prometheus makes itself (not the server's)
PROMETHEUS_OWN = {"up"}


def _services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _invocations(command: list[str] | str) -> list[list[str]]:
    """Every ``agent-router ...`` call in a compose command (an exec list, or ``sh -c`` text)."""
    words = command if isinstance(command, list) else shlex.split(command)
    if words[:2] == ["sh", "-c"]:
        return [shlex.split(part)[0:] for part in re.findall(r"agent-router [^|;&]*", words[2])]
    return [words] if words and words[0] == "agent-router" else []


def _queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load(ALERTS.read_text())["groups"]
    return exprs + [rule["expr"] for group in rules for rule in group["rules"]]


def _family(name: str) -> str:
    return re.sub(r"_(total|bucket|sum|count|info)$", "", name)


def test_compose_runs_redis_with_aof_two_replicas_retrain_prometheus_and_grafana():
    services = _services()
    assert {"redis", "train", "router-1", "router-2", "retrain", "prometheus", "grafana"} <= set(services)
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    for name in ("router-1", "router-2"):
        assert services[name]["command"][:2] == ["agent-router", "serve"]
        env = services[name]["environment"]
        assert env["ROUTER_REDIS_URL"].startswith("redis://redis:") and env["ROUTER_CHECKPOINT"] == "/app/checkpoints"
        assert env["ROUTER_ADMIN_TOKEN"].startswith("${ROUTER_ADMIN_TOKEN:?")  # no default secret
    assert services["retrain"]["command"][:3] == ["agent-router", "retrain", "--every"]
    targets = yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(targets) == ["router-1:8000", "router-2:8000"]
    named = set(yaml.safe_load(COMPOSE.read_text())["volumes"])
    for volume in [v for s in services.values() for v in s.get("volumes", [])]:
        source = volume.split(":")[0]
        assert (ROOT / source).exists() if source.startswith("./") else source in named, volume
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/agent-router.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_every_command_in_compose_is_a_real_agent_router_command():
    calls = [call for service in _services().values() if "command" in service
             for call in _invocations(service["command"])]
    assert len(calls) >= 4
    for call in calls:
        sub = call[1]
        out = subprocess.run([sys.executable, "-m", "cli", sub, "--help"], capture_output=True, text=True,
                             cwd=ROOT, timeout=120, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})
        assert out.returncode == 0, (call, out.stderr)
        for word in call[2:]:
            if word.startswith("-"):
                assert re.search(rf"(^|[\s,]){re.escape(word)}([\s,]|$)", out.stdout, re.M), (call, word)
            elif word.endswith((".yaml", ".yml")):
                assert (ROOT / word).is_file(), word


def test_every_queried_metric_is_exported_by_a_running_server(redis_server, redis_url):
    server, prefix = redis_server
    figures = {"round": 3, "status": "published", "published": "v1", "verdict": "better", "serving_dr": 0.61,
               "candidate_dr": 0.64, "serving_snips": 0.6, "candidate_snips": 0.63, "serving_ess": 120.0,
               "candidate_ess": 95.0}
    client = redis.Redis.from_url(redis_url)
    client.set(VersionKeys(prefix).last_round, json.dumps(figures))
    client.close()
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for explore in (False, True):
            route = c.post("/v1/route", json={"prompt": "kit check", "explore": explore}).json()
            assert c.post("/v1/feedback", json={"decision_id": route["decision_id"], "quality": 0.7}).status_code == 202
        text = c.get("/metrics").text
    exported = {_family(f.name) for f in text_string_to_metric_families(text)}
    queried = {name for q in _queries() for name in re.findall(r"\b[a-z_]+(?=[{\[\s)]|$)", q)
               if name.startswith("router_") or name in PROMETHEUS_OWN}
    assert len(queried) >= 12
    missing = sorted(n for n in queried - PROMETHEUS_OWN if _family(n) not in exported)
    assert not missing, missing
    samples = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["router_feedback_quality_count"].value >= 1
    assert samples["router_retrain_round"].value == 3


@pytest.mark.parametrize("path", [DASHBOARD])
def test_the_dashboard_has_the_panels_operators_expect(path):
    titles = " | ".join(p["title"].lower() for p in json.loads(path.read_text())["panels"])
    for words in ("traffic share", "quality per agent", "exploration", "retraining rounds", "gate verdict",
                  "latency", "first token", "spend per key", "outbox"):
        assert words in titles, words
