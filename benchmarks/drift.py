"""Drift: an agent breaks after deployment; does the loop follow? The real server over HTTP, the real
Redis, the real retrain job.

1. Serve a checkpoint (``--checkpoint``; default: train ``configs/default.yaml``) with Redis, the
   server's cooldowns and exploration on (``--explore-floor``, ``--explore-temperature``: the
   server's ``ROUTER_EXPLORE_FLOOR`` and ``ROUTER_EXPLORE_TEMPERATURE``).
2. Break the agent the policy sends most traffic to: from now on every answer it gives scores 0.
3. Each round: ``--requests`` train prompts are routed with ``explore: true`` and get feedback from
   the changed world (the dataset's outcome, 0 for the broken agent), then
   ``agent-router retrain --every 1s --rounds 1`` runs once (the continuous job's code path) and the
   server hot-swaps to what it publishes. ``--rounds`` rounds.

Per round it reports the broken agent's share of the traffic, the served quality and cost in the
changed world, the gate's verdict and the version served, against the changed world's best single
agent and oracle on the same prompts. It also reports what exploration costs in the unchanged
world: the mean over the first round's prompts of ``q(greedy) - sum_k mu_k q_k`` with the policy's
returned probabilities and the server's exploration distribution ``mu`` (the dataset's outcomes,
before the break).

Goals (issue 12): the broken agent's share below 2% within 2,000 logged feedbacks and at most 3
retrain rounds; served quality at least the changed world's best single agent + 0.05; exploration
costs at most 0.01 of quality.

Usage::

    .venv/bin/python benchmarks/drift.py [--checkpoint DIR] [--requests 500] [--rounds 4]
        [--redis-url redis://127.0.0.1:6379/0]

Prints the per-round table, then as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from benchmarks.common import load_average, machine, print_json_line, print_table  # noqa: E402
from tests.harness import Server  # noqa: E402


def _checkpoint(args, work: Path) -> Path:
    if args.checkpoint is not None:
        return args.checkpoint
    from training.config import load_config
    from training.run import run_training

    cfg = load_config(Path("configs/default.yaml"), [f"out_dir={work / 'run'}", f"checkpoint_dir={work / 'ck'}",
                                                     "tensorboard=false"])
    return run_training(cfg, progress=False).parent


def main(argv: list[str] | None = None) -> None:
    from router.service import exploration_distribution
    from training.checkpoint import load_checkpoint, resolve_checkpoint
    from training.config import checkpoint_config
    from training.data import load_splits

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="checkpoint root (default: train one)")
    ap.add_argument("--requests", type=int, default=500, help="routed requests (with feedback) per round")
    ap.add_argument("--rounds", type=int, default=4, help="rounds; a retrain follows each but the last")
    ap.add_argument("--explore-floor", type=float, default=0.05)
    ap.add_argument("--explore-temperature", type=float, default=1.0)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retrain-set", action="append", default=["min_ess=10", "update_epochs=20"],
                    help="retrain -s settings (repeatable)")
    args = ap.parse_args(argv)
    start_load = load_average()
    work = Path(tempfile.mkdtemp(prefix="drift-"))
    source = _checkpoint(args, work)
    # the benchmark's own copy of the checkpoint root: the retrain job writes versions into it
    root = work / "checkpoints"
    version = resolve_checkpoint(source)
    shutil.copytree(version, root / version.name)
    policy = load_checkpoint(root)
    splits = load_splits(checkpoint_config(policy.meta))
    train = splits.splits["train"]
    names = train.agent_names
    prefix = f"drift-{uuid.uuid4().hex[:8]}"
    server = Server(env={"ROUTER_CHECKPOINT": str(root), "ROUTER_REDIS_URL": args.redis_url,
                         "ROUTER_REDIS_PREFIX": prefix, "ROUTER_EXPLORE_FLOOR": str(args.explore_floor),
                         "ROUTER_EXPLORE_TEMPERATURE": str(args.explore_temperature),
                         "ROUTER_OUTBOX_PATH": str(work / "outbox.sqlite3"),
                         "ROUTER_EMBED_CACHE_DIR": str(ROOT / "var" / "embeddings")},
                    log_path=work / "server.log").start()
    rng = random.Random(args.seed)
    order = list(range(len(train)))
    rng.shuffle(order)
    rows: list[dict[str, Any]] = []
    explore_cost: float | None = None
    broken: int | None = None
    try:
        server.wait_ready(timeout_s=180.0)
        with httpx.Client(base_url=server.url, timeout=60.0) as client:
            # the agent the served policy favours on train prompts (greedy), before anything changes
            probe = [order[i % len(order)] for i in range(200)]
            counts = np.zeros(len(names))
            for p in probe:
                counts[names.index(client.post("/v1/route", json={"prompt": train.prompts[p]}).json()["agent"])] += 1
            broken = int(np.argmax(counts))
            quality = train.quality.copy()
            quality[:, broken] = 0.0
            cursor = 0
            for r in range(args.rounds):
                prompts = [order[(cursor + i) % len(order)] for i in range(args.requests)]
                cursor += args.requests
                chosen, versions, gaps = [], set(), []
                for p in prompts:
                    body = client.post("/v1/route", json={"prompt": train.prompts[p], "explore": True}).json()
                    a = names.index(body["agent"])
                    chosen.append(a)
                    versions.add(body["policy_version"])
                    if r == 0:
                        probs = np.array([body["probabilities"][n] for n in names])
                        mu = exploration_distribution(probs, np.ones(len(names), dtype=bool), args.explore_floor,
                                                      args.explore_temperature)
                        gaps.append(float(train.quality[p, int(np.argmax(probs))] - mu @ train.quality[p]))
                    client.post("/v1/feedback", json={"decision_id": body["decision_id"],
                                                      "quality": float(quality[p, a]),
                                                      "cost_usd": float(train.cost_usd[p, a])}).raise_for_status()
                if r == 0:
                    explore_cost = float(np.mean(gaps))
                idx = np.array(prompts)
                ch = np.array(chosen)
                row = {"round": r, "requests": len(prompts), "feedbacks_so_far": cursor,
                       "broken_share": float((ch == broken).mean()),
                       "quality": float(quality[idx, ch].mean()),
                       "cost_usd_per_1k": float(train.cost_usd[idx, ch].mean() * 1000),
                       "best_single": float(quality[idx].mean(0).max()),
                       "oracle": float(quality[idx].max(1).mean()),
                       "versions": sorted(versions)}
                if r < args.rounds - 1:
                    sets = [x for s in args.retrain_set for x in ("-s", s)]
                    run = subprocess.run([sys.executable, "-m", "router", "retrain", "--checkpoint", str(root),
                                          "--redis-url", args.redis_url, "--prefix", prefix, *sets,
                                          "--every", "1s", "--rounds", "1", "--metrics-file",
                                          str(work / "rounds.jsonl"), "--json"],
                                         capture_output=True, text=True, cwd=ROOT, timeout=900)
                    figures = json.loads(run.stdout.strip().splitlines()[-1]) if run.returncode == 0 else {}
                    row |= {"retrain": figures.get("status", f"failed: {run.stderr.strip()[-200:]}"),
                            "verdict": figures.get("verdict"), "published": figures.get("published")}
                    if figures.get("published"):  # wait for the hot swap
                        deadline = time.monotonic() + 30
                        while client.post("/v1/route", json={"prompt": "hello"}).json()["policy_version"] != \
                                figures["published"] and time.monotonic() < deadline:
                            time.sleep(0.2)
                rows.append(row)
                print(f"round {r}: broken {names[broken]} share {row['broken_share']:.3f}, quality "
                      f"{row['quality']:.4f} (best single {row['best_single']:.4f}), retrain {row.get('retrain')}",
                      flush=True)
    finally:
        server.stop()
        import redis

        with redis.Redis.from_url(args.redis_url) as r:
            keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                r.delete(*keys)
    print_table(["round", "feedbacks", "broken share", "quality", "best single", "oracle", "USD/1k", "retrain",
                 "verdict"],
                [[x["round"], x["feedbacks_so_far"], x["broken_share"], x["quality"], x["best_single"], x["oracle"],
                  x["cost_usd_per_1k"], x.get("retrain", "-"), x.get("verdict") or "-"] for x in rows])
    below = [x for x in rows if x["broken_share"] < 0.02]
    first = below[0] if below else None
    last = rows[-1]
    goals = {"broken_share_below_2pct_at_round": first["round"] if first else None,
             "feedbacks_before_it": (first["feedbacks_so_far"] - first["requests"]) if first else None,
             "final_quality_minus_best_single": last["quality"] - last["best_single"],
             "exploration_cost": explore_cost,
             "met": bool(first and first["round"] <= 3 and first["feedbacks_so_far"] - first["requests"] <= 2000
                         and last["quality"] >= last["best_single"] + 0.05 and (explore_cost or 0) <= 0.01)}
    print(f"exploration cost in the unchanged world: {explore_cost:.4f} of quality")
    print_json_line({"benchmark": "drift", "broken_agent": names[broken] if broken is not None else None,
                     "machine": machine(start_load), "rounds": rows, "goals": goals,
                     "settings": {"requests": args.requests, "explore_floor": args.explore_floor,
                                  "explore_temperature": args.explore_temperature,
                                  "retrain_set": args.retrain_set}})


if __name__ == "__main__":
    main()
