"""The whole loop on a laptop (``agent-router demo``): two real agents, the proxy, feedback, retraining,
hot swap, and a router that learns which agent answers arithmetic.

1. **Agents up.** ``agent-router agents serve`` with the calculator and SmolLM2-135M-Instruct.
2. **A cold start.** ``agent-router init`` writes a policy from the agents file alone: no outcome
   data. It explores both agents uniformly and, greedy, sends everything to the first (SmolLM2).
3. **Proxy up.** ``agent-router serve`` with both agents as upstreams, exploring
   (``ROUTER_PROXY_EXPLORE``: inverse gap weighting, uniform at first), on SQLite.
4. **Traffic.** The ``openai`` client asks arithmetic and general questions through the proxy; the
   checker posts each answer's quality to ``/v1/feedback`` with the decision id of the response.
5. **Retrain, hot swap.** ``agent-router retrain`` learns from the logged feedback (the learner of
   ``docs/learning.md``), judges the candidate on held-out logged decisions and saves it when it passes;
   ``POST /admin/policy/reload`` swaps it in.
6. **The result.** The share of held-out arithmetic prompts the router sends to the calculator
   (its greedy choice, ``POST /v1/route``), before and after.

Processes run from the project directory; everything is written under ``--workdir``. Prints each
step and, as its last line, one JSON object with the figures.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agents.calculator import find_expression
from agents.checker import expected_value, score
from contract.errors import UserError

#: The agents of the demo and their nominal prices (USD; both run locally).
DEMO_AGENTS = [
    {"name": "smollm2", "description": "SmolLM2-135M-Instruct (local, transformers)", "price_per_1m_tokens": 0.02,
     "cost_per_call_usd": None, "capacity": None},
    {"name": "calculator", "description": "exact arithmetic tool", "price_per_1m_tokens": None,
     "cost_per_call_usd": 1e-6, "capacity": None},
]
TEMPLATES = ["What is {a} * {b} + {c}?", "Compute {a} - {b} * {c}.", "Calculate ({a} + {b}) * {c}.",
             "What is {a} times {b} minus {c}?", "How much is {a} * {b} - {c}?", "Work out {a} + {b} * {c}, please."]


@dataclass
class DemoConfig:
    """What the demo runs (``agent-router demo`` options)."""

    workdir: Path = Path("var/demo")
    requests: int = 80
    held_out: int = 40
    arithmetic_share: float = 0.5
    max_tokens: int = 24
    router_port: int = 8765
    agents_port: int = 9765
    seed: int = 0
    shipped_prompts: Path = Path("data/llmrouter-dc/prompts.jsonl.gz")
    embed_cache: Path = Path("var/embeddings")


def arithmetic_prompts(count: int, rng: random.Random) -> list[str]:
    """``count`` arithmetic questions whose value is none of their operands."""
    out: list[str] = []
    while len(out) < count:
        a, b, c = rng.randint(12, 99), rng.randint(3, 60), rng.randint(2, 40)
        text = rng.choice(TEMPLATES).format(a=a, b=b, c=c)
        value = expected_value(text)
        if value is not None and value not in {str(a), str(b), str(c)} and text not in out:
            out.append(text)
    return out


def general_prompts(path: Path, count: int, rng: random.Random, max_chars: int = 400) -> list[str]:
    """``count`` distinct short prompts of the shipped dataset that hold no arithmetic expression."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            texts = [json.loads(line)["prompt"] for line in f]
    except OSError as exc:
        raise UserError(f"demo: cannot read the shipped prompts {path}: {exc}") from None
    pool = sorted({t for t in texts if len(t) <= max_chars and find_expression(t) is None})
    if len(pool) < count:
        raise UserError(f"demo: {path} has only {len(pool)} short prompts without arithmetic; {count} needed")
    rng.shuffle(pool)
    return pool[:count]


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise UserError(f"demo: a process exited with {proc.returncode}; its log ({log}):\n{tail}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise UserError(f"demo: {url} did not answer within {timeout_s:.0f} s; see {log}")


@contextmanager
def process(args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """A child process (stdout and stderr to ``log``), stopped on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})})
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def _run(args: list[str], log: Path, what: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise UserError(f"demo: {what} failed ({done.returncode}); see {log}:\n{done.stderr.strip()[-1500:]}")
    return done.stdout


def calculator_share(router_url: str, prompts: list[str]) -> float:
    """Share of ``prompts`` the served policy's greedy choice sends to the calculator."""
    with httpx.Client(base_url=router_url, timeout=60) as http:
        picks = [http.post("/v1/route", json={"prompt": p}).json()["agent"] for p in prompts]
    return sum(p == "calculator" for p in picks) / len(picks)


def traffic(cfg: DemoConfig, router_url: str, prompts: list[str]) -> dict[str, Any]:
    """Ask each prompt through the proxy with the ``openai`` client; post the checker's quality."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{router_url}/v1", api_key="local", max_retries=0, timeout=120)
    counts: dict[str, int] = {}
    quality = 0.0
    with httpx.Client(base_url=router_url, timeout=60) as http:
        for i, prompt in enumerate(prompts):
            raw = client.chat.completions.with_raw_response.create(
                model="router", messages=[{"role": "user", "content": prompt}], max_tokens=cfg.max_tokens,
                user=f"demo-user-{i}")
            answer = raw.parse()
            q = score(prompt, answer.choices[0].message.content or "")
            quality += q
            counts[answer.model] = counts.get(answer.model, 0) + 1
            http.post("/v1/feedback", json={"decision_id": raw.headers["x-router-decision-id"],
                                            "quality": q}).raise_for_status()
    return {"requests": len(prompts), "by_agent": counts, "mean_quality": quality / len(prompts)}


def run_demo(cfg: DemoConfig, say=print) -> dict[str, Any]:
    """Run the six steps of the module docstring.

    Returns:
        The figures: calculator share on held-out arithmetic before and after, traffic, versions.

    Raises:
        UserError: a step failed (the message names its log under ``cfg.workdir``).
    """
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(cfg.seed)
    n_arith = round(cfg.requests * cfg.arithmetic_share)
    traffic_general = general_prompts(cfg.shipped_prompts, cfg.requests - n_arith, rng)
    arithmetic = arithmetic_prompts(n_arith + cfg.held_out, rng)
    traffic_arith, held_arith = arithmetic[:n_arith], arithmetic[n_arith:]
    requests = traffic_arith + traffic_general
    rng.shuffle(requests)
    agents_url = f"http://127.0.0.1:{cfg.agents_port}/v1"
    router_url = f"http://127.0.0.1:{cfg.router_port}"
    started = time.monotonic()
    say(f"1. agents up: calculator and smollm2 on {agents_url}")
    with process(_cli("agents", "serve", "--port", str(cfg.agents_port), "--log-level", "warning"),
                 cfg.workdir / "agents.log", {"HF_HUB_OFFLINE": "1"}) as agents:
        _wait(f"http://127.0.0.1:{cfg.agents_port}/healthz", agents, cfg.workdir / "agents.log")
        say("2. cold start: agent-router init from the agents file alone, no outcome data")
        agents_file = cfg.workdir / "agents.json"
        agents_file.write_text(json.dumps({"agents": DEMO_AGENTS}, indent=2))
        checkpoints = cfg.workdir / "checkpoints"
        shutil.rmtree(checkpoints, ignore_errors=True)  # each demo starts cold
        _run(_cli("init", "--agents", str(agents_file), "--out", str(checkpoints)), cfg.workdir / "init.log",
             "writing the cold-start policy")
        upstreams = cfg.workdir / "upstreams.json"
        upstreams.write_text(json.dumps({"agents": {a["name"]: {"base_url": agents_url, "model": a["name"]}
                                                    for a in DEMO_AGENTS}}, indent=2))
        sqlite = cfg.workdir / "experience.sqlite3"
        sqlite.unlink(missing_ok=True)
        env = {"ROUTER_CHECKPOINT": str(checkpoints), "ROUTER_UPSTREAMS_FILE": str(upstreams),
               "ROUTER_PROXY_OPEN": "true", "ROUTER_ADMIN_OPEN": "true", "ROUTER_PROXY_EXPLORE": "true",
               "ROUTER_SQLITE_PATH": str(sqlite),
               "ROUTER_EMBED_CACHE_DIR": str(cfg.embed_cache), "ROUTER_LOG_LEVEL": "warning",
               "ROUTER_UPSTREAM_FIRST_TOKEN_TIMEOUT_S": "120", "ROUTER_UPSTREAM_TIMEOUT_S": "300",
               "HF_HUB_OFFLINE": "1"}
        say(f"3. proxy up on {router_url}/v1 (exploring)")
        with process(_cli("serve", "--port", str(cfg.router_port)), cfg.workdir / "router.log", env) as router:
            _wait(f"{router_url}/readyz", router, cfg.workdir / "router.log")
            before = calculator_share(router_url, held_arith)
            first_version = httpx.get(f"{router_url}/healthz").json()["policy_version"]
            say(f"   held-out arithmetic routed to the calculator: {before:.0%} ({first_version})")
            say(f"4. traffic: {len(requests)} questions ({n_arith} arithmetic) through the proxy, "
                "the checker posts each quality")
            sent = traffic(cfg, router_url, requests)
            say(f"   answered by {sent['by_agent']}, mean quality {sent['mean_quality']:.2f}")
            say("5. retrain on the logged feedback, then hot swap")
            out = _run(_cli("retrain", "--checkpoint", str(checkpoints), "--sqlite-path", str(sqlite), "--json"),
                       cfg.workdir / "retrain.log", "retraining")
            result = json.loads(out.strip().splitlines()[-1])
            say(f"   retrain: {result['status']} {result.get('version') or ''} ({result['gate']['reason']})")
            reload = httpx.post(f"{router_url}/admin/policy/reload", timeout=120)
            if reload.status_code != 200:
                raise UserError(f"demo: hot swap failed ({reload.status_code}): {reload.text[:300]}")
            version = reload.json().get("version")
            after = calculator_share(router_url, held_arith)
            say(f"6. held-out arithmetic routed to the calculator: {before:.0%} before, {after:.0%} after "
                f"({version})")
    return {"demo": "proxy-loop", "calculator_share_before": before, "calculator_share_after": after,
            "held_out_arithmetic": len(held_arith), "traffic": sent, "retrain_status": result["status"],
            "gate": result["gate"]["reason"], "versions": [first_version, version],
            "seconds": round(time.monotonic() - started, 1)}
