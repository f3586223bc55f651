"""The fidelity row of the bandit bake-off: one shuffle through the real system, beside the
in-process loop of ``benchmarks/bandit_stream.py`` on the same stream.

For each backend (``sqlite``, ``redis``): ``agent-router init`` from the agents file, ``agent-router
serve`` as its own process (uvicorn, the embedding cache of ``var/embeddings``, exploration asked by
each request), and for every prompt of the shuffle ``POST /v1/route {"prompt", "explore": true}``
then ``POST /v1/feedback {"decision_id", "quality", "cost_usd"}`` over HTTP. Rounds: with Redis,
``agent-router retrain --every-records N`` runs beside the server, started before the first request
as a production worker is, and every publish reaches the server by pub/sub (a hot swap); the rounds
run while the client goes on, so a version serves a few hundred prompts later than in process
(``served.jsonl`` in the work directory: the prompt at which each version began to serve). With
SQLite (no publish channel), the client runs ``agent-router retrain`` once N new feedbacks are in
and ``POST /admin/policy/reload`` swaps the saved version in. The reward is ``quality -
cost_weight * cost_usd`` of the agent the server chose.

    .venv/bin/python benchmarks/bandit_fidelity.py [--dataset NAME=PROMPTS,AGENTS,CW] [--seed 100]
        [--backends sqlite,redis] [--redis-url redis://127.0.0.1:6379/0]

With ``--scenario break|new-agent`` (``benchmarks/bandit_scenarios.py``) the world changes at
``--change-at`` of the stream: the favourite agent breaks (quality 0), or it is held out of the
agents file ``init`` reads and joins at the change through ``POST /admin/agents`` (with the admin
token, on the first replica), as an operator adds it. ``--replicas 2`` (Redis only) runs two
servers on the same Redis and checkpoint root and sends the requests to them in turn, each
feedback to the replica that routed it; ``retrain --every-records`` publishes, and both hot-swap.
The figures after the change are the in-process harness's (:func:`benchmarks.bandit_scenarios.change_figures`).

Prints each row's progressive-validation figures, its difference to the in-process row (goal:
within 0.01 at the end), and one JSON object last.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bandit_loop import make_learner  # noqa: E402
from benchmarks.bandit_scenarios import Change, change_figures, make_change  # noqa: E402
from benchmarks.bandit_stream import Setting, World, load, parse_setting, run_learner, stream_figures  # noqa: E402
from benchmarks.common import load_average, machine, print_json_line, print_table  # noqa: E402
from cli.retrain import READY  # noqa: E402
from env.dataset import load_agents  # noqa: E402
from training.retrain.config import RetrainConfig  # noqa: E402
from training.retrain.job import round_size  # noqa: E402

ADMIN = "fidelity-admin-token"
ROUND = 200
GOAL = 0.01


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def _wait_ready(url: str, proc: subprocess.Popen, deadline: float, log: Path) -> None:
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"the server did not start; see {log}")
        time.sleep(0.3)


def http_stream(setting: Setting, ds: Any, order: np.ndarray, backend: str, redis_url: str, work: Path,
                change: Change | None = None, replicas: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Rewards ``[P]`` and chosen agents ``[P]`` of one shuffle through real servers (see the module docstring)."""
    root = work / "checkpoints"
    agents_file = setting.agents
    specs = {a.name: a.model_dump() for a in load_agents(setting.agents)}
    if change is not None and change.scenario == "new-agent":  # the operator's agents file before the change
        agents_file = str(work / "agents-at-start.json")
        Path(agents_file).write_text(json.dumps([s for n, s in specs.items() if n != change.name]))
    subprocess.run(_cli("init", "--agents", agents_file, "--out", str(root), "--cost-weight",
                        str(setting.cost_weight)), check=True, capture_output=True, env=_env({}))
    env = {"ROUTER_CHECKPOINT": str(root), "ROUTER_EMBED_CACHE_DIR": "var/embeddings", "ROUTER_ADMIN_TOKEN": ADMIN,
           "ROUTER_LOG_LEVEL": "warning"}
    prefix = f"fidelity-{uuid.uuid4().hex[:8]}"
    if backend == "redis":
        env |= {"ROUTER_REDIS_URL": redis_url, "ROUTER_REDIS_PREFIX": prefix}
    else:
        env |= {"ROUTER_SQLITE_PATH": str(work / "experience.sqlite3")}
    procs, urls = [], []
    for r in range(replicas):
        port = _port()
        log_path = work / f"server-{r}.log"
        with log_path.open("wb") as log:
            procs.append(subprocess.Popen(_cli("serve", "--port", str(port)), stdout=log, stderr=subprocess.STDOUT,
                                          env=_env(env | {"ROUTER_OUTBOX_PATH": str(work / f"outbox-{r}.sqlite3")})))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 180
        for url, proc, r in zip(urls, procs, range(replicas), strict=True):
            _wait_ready(url, proc, deadline, work / f"server-{r}.log")
        if backend == "redis":  # a worker running before the traffic, as in production
            with (work / "retrain.log").open("wb") as log:
                procs.append(subprocess.Popen(_cli("retrain", "--every-records", str(ROUND), "--every", "1s",
                                                   "--metrics-file", str(work / "rounds.jsonl")),
                                              stdout=log, stderr=subprocess.STDOUT, env=_env(env)))
            while READY not in (work / "retrain.log").read_text(errors="replace"):
                if time.monotonic() > deadline + 180 or procs[-1].poll() is not None:
                    raise RuntimeError(f"the retrain worker did not start; see {work / 'retrain.log'}")
                time.sleep(0.3)
        rewards, actions = np.empty(len(order)), np.empty(len(order), dtype=np.int64)
        served: list[tuple[int, str]] = []  # (prompt index, version) at each change of the served version
        names = ds.agent_names
        new, learned = 0, 0
        cadence = RetrainConfig(min_records=ROUND)
        clients = [httpx.Client(base_url=url, timeout=60) for url in urls]
        with contextlib.ExitStack() as stack:
            for c in clients:
                stack.enter_context(c)
            for t, i in enumerate(order):
                client = clients[t % replicas]
                if change is not None and t == change.at and change.scenario == "new-agent":
                    client.post("/admin/agents", headers={"Authorization": f"Bearer {ADMIN}"},
                                json=specs[change.name]).raise_for_status()
                world = change.dataset if change is not None and t >= change.at else ds
                body = client.post("/v1/route", json={"prompt": ds.prompts[i], "explore": True}).raise_for_status()
                body = body.json()
                if not served or served[-1][1] != body["policy_version"]:
                    served.append((t, body["policy_version"]))
                a = names.index(body["agent"])
                actions[t] = a
                q, c = float(world.quality[i, a]), float(world.cost_usd[i, a])
                rewards[t] = q - setting.cost_weight * c
                client.post("/v1/feedback", json={"decision_id": body["decision_id"], "quality": min(1.0, max(0.0, q)),
                                                  "cost_usd": c}).raise_for_status()
                new += 1
                # the in-process loop's cadence: rounds double up to ROUND
                if backend == "sqlite" and new >= round_size(cadence, learned):
                    done = subprocess.run(_cli("retrain", "--json"), capture_output=True, text=True, env=_env(env))
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                    if result["status"] == "saved":
                        client.post("/admin/policy/reload", headers={"Authorization": f"Bearer {ADMIN}"},
                                    json={"checkpoint": result["version"]}).raise_for_status()
                        learned = result["used"]
                    new = 0
        (work / "served.jsonl").write_text("".join(json.dumps({"t": t, "version": v}) + "\n" for t, v in served))
        return rewards, actions
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if backend == "redis":
            import redis

            with redis.Redis.from_url(redis_url) as r:
                for key in r.scan_iter(f"{prefix}:*"):
                    r.delete(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=parse_setting,
                        default=parse_setting("llmrouter-dc=data/llmrouter-dc/prompts.jsonl.gz,"
                                              "data/llmrouter-dc/agents.json,0"))
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--backends", default="sqlite,redis")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--scenario", choices=("none", "break", "new-agent"), default="none",
                        help="the world changes mid-stream (benchmarks/bandit_scenarios.py)")
    parser.add_argument("--change-at", type=float, default=0.5, help="where the change comes, a share of the stream")
    parser.add_argument("--replicas", type=int, default=1, help="servers on the same Redis (redis backend only)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the servers' logs, checkpoints and retrain rounds here (default: a temporary dir)")
    args = parser.parse_args()
    start_load, t0 = load_average(), time.perf_counter()
    setting = args.dataset
    ds, _, contexts = load(setting, args.limit)
    reward = ds.quality.astype(np.float64) - setting.cost_weight * ds.cost_usd.astype(np.float64)
    order = np.random.default_rng(args.seed).permutation(len(ds))
    change = make_change(args.scenario, ds, setting.cost_weight, args.change_at, 10.0)
    after = World.of(change.dataset, setting.cost_weight) if change is not None else None
    serving = ([n for n in ds.agent_names if n != change.name]
               if change is not None and change.scenario == "new-agent" else None)
    changed: dict[str, dict[str, float]] = {}
    rows: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="fidelity-") as scratch:
        tmp = args.workdir or Path(scratch)
        shutil.rmtree(tmp / "in-process", ignore_errors=True)
        for backend in args.backends.split(","):
            shutil.rmtree(tmp / backend.strip(), ignore_errors=True)
        start = time.perf_counter()
        learner = make_learner(setting.agents, ds, setting.cost_weight, args.seed, Path(tmp) / "in-process",
                               serving=serving)
        world = World(reward, ds.quality, ds.cost_usd)
        rewards, _, _, actions = run_learner(learner, contexts, order, world, after,
                                             change.at if change is not None else None, change)
        rows["in-process"] = stream_figures(rewards)
        if change is not None:
            changed["in-process"] = change_figures(rewards, actions, change)
        seconds["in-process"] = time.perf_counter() - start
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            work = Path(tmp) / backend
            work.mkdir(parents=True)
            start = time.perf_counter()
            replicas = args.replicas if backend == "redis" else 1
            name = f"http-{backend}" + (f"-x{replicas}" if replicas > 1 else "")
            try:
                rewards, actions = http_stream(setting, ds, order, backend, args.redis_url, work, change, replicas)
                rows[name] = stream_figures(rewards)
                if change is not None:
                    changed[name] = change_figures(rewards, actions, change)
            except Exception:
                print(f"{name}: failed; its logs:", flush=True)
                for log in work.glob("*.log"):
                    print(log.read_text(errors="replace")[-2000:], flush=True)
                shutil.copytree(work, Path("runs/bandit_fidelity") / backend, dirs_exist_ok=True)
                raise
            seconds[name] = time.perf_counter() - start
    keys = list(rows["in-process"])
    print(f"\n{setting.name} (cost_weight {setting.cost_weight:g}, {len(ds)} prompts, shuffle {args.seed})")
    print_table(["row", *keys, "end - in-process", "seconds"],
                [[name, *(r[k] for k in keys), f"{r['end'] - rows['in-process']['end']:+.4f}", f"{seconds[name]:.0f}"]
                 for name, r in rows.items()])
    goals = {name: {"end_minus_in_process": r["end"] - rows["in-process"]["end"], "goal": GOAL,
                    "met": abs(r["end"] - rows["in-process"]["end"]) <= GOAL}
             for name, r in rows.items() if name != "in-process"}
    for name, g in goals.items():
        print(f"goal {name}: |end - in-process| = {abs(g['end_minus_in_process']):.4f} vs <= {GOAL} "
              f"({'met' if g['met'] else 'NOT met'})")
    if change is not None:
        print(f"\nafter the change ({change.scenario} of {change.name} at arrival {change.at})")
        cols = list(next(iter(changed.values())))
        print_table(["row", *cols], [[name, *(f[k] for k in cols)] for name, f in changed.items()])
    print_json_line({"benchmark": "bandit_fidelity", "setting": setting.name, "cost_weight": setting.cost_weight,
                     "seed": args.seed, "scenario": args.scenario, "replicas": args.replicas,
                     "after_change": changed, "rows": rows, "seconds": seconds, "goals": goals,
                     "wall_s": time.perf_counter() - t0, "machine": machine(start_load)})


if __name__ == "__main__":
    main()
