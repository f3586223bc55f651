"""Drift: the world changes after deployment; does the loop follow? The real server over HTTP, the
real Redis, the real retrain job.

1. Serve a checkpoint (``--checkpoint``; default: train ``configs/default.yaml``) with Redis, the
   server's cooldowns and exploration on (``--explore-floor``, ``--explore-temperature``: the
   server's ``ROUTER_EXPLORE_FLOOR`` and ``ROUTER_EXPLORE_TEMPERATURE``; ``--cooldown-s``: its
   ``ROUTER_COOLDOWN_S``, unset: the server's default, 0: no cooldowns).
2. Change the world for the agent the policy sends most traffic to (greedy, on 200 train prompts):

   * ``--scenario break`` (default): every answer it gives scores 0 from now on.
   * ``--scenario price``: its price is multiplied by ``--price-factor`` (default 10): the
     feedback's ``cost_usd`` for it is that many times the dataset's, its quality unchanged.

3. Each round: ``--requests`` train prompts are routed with ``explore: true`` and get feedback from
   the changed world (the dataset's outcome with the change), then
   ``agent-router retrain --every 1s --rounds 1`` runs once (the continuous job's code path, with
   ``--retrain-set`` settings) and the server hot-swaps to what it publishes. ``--rounds`` rounds.

Per round it reports the changed agent's share of the traffic, the served quality and cost in the
changed world, the gate's verdict and the version served, against the changed world's best single
agent and oracle on the same prompts. After each retrain it also scores the round's candidate
(published or rejected) on the validation split with every agent free, as the ceiling below does:
the changed agent's greedy share and mean probability, and the candidate's value in the changed
world (``candidate``), with the gate's estimates of candidate - serving: on held-out logged
decisions (``logged_diff``) and on the dataset's split, which does not know of the change
(``static_candidate - static_serving``). ``break`` scores quality; ``price`` scores the reward the
retrain job trains on, ``quality - cost_weight * cost_usd`` with the job's ``cost_weight`` (a
``--retrain-set cost_weight=...``, else the checkpoint's training ``env.cost_weight``), and the
best single agent and the oracle are by that reward. A price change is invisible to a loop whose
``cost_weight`` is 0 (the default config's): train the checkpoint with ``-s env.cost_weight=500``
(or pass ``--retrain-set cost_weight=...``) for the price scenario to mean anything.

It also reports what exploration costs in the unchanged world: the mean of
``v(greedy) - sum_k mu_k v_k`` with the policy's returned probabilities, the server's exploration
distribution ``mu`` over every agent and the dataset's outcomes before the change (``v`` quality
for ``break``, the reward for ``price``), over the first round's prompts (``exploration_cost``) and
over the 200 probe prompts routed before any feedback (``exploration_cost_before_change``). The
first is biased low once a cooldown masks an agent during round 0 (the returned probabilities are
0 for it, so the greedy choice is the runner-up); the second is not.

And the changed world's ceiling on the same embeddings: the evaluation's kNN and MLP predictors
(``training.evaluation.classifiers``) fitted on the train split with the changed world's outcomes,
routed at the scenario's willingness to pay (0 for ``break``, ``cost_weight`` for ``price``) and
scored on the validation split under the changed world, beside the changed world's best single
agent on validation (``ceiling_minus_best_single``), the oracle, and the served policy (first and
last version) routed greedily on validation. It says whether "+0.05 over the best single agent" is
within reach of a router on these embeddings at all.

Goals, ``break`` (issue 12): the broken agent's share below 2% within 2,000 logged feedbacks and at
most 3 retrain rounds; served quality in the last round at least the changed world's best single
agent + 0.05; exploration costs at most 0.01 of quality (both figures above).

Goals, ``price``: the repriced agent's share in the last round at most half its share in round 0;
the served reward in the last round at least the changed world's best single agent by reward (on
the same prompts); exploration costs at most 0.01 of reward (both figures).

Usage::

    .venv/bin/python benchmarks/drift.py [--scenario break|price] [--price-factor 10]
        [--checkpoint DIR] [--requests 500] [--rounds 4] [--explore-floor 0.05]
        [--explore-temperature 1] [--cooldown-s 60] [--redis-url redis://127.0.0.1:6379/0]
        [--retrain-set min_ess=10 --retrain-set update_epochs=20 --retrain-set lr=0.003 ...]

``--retrain-set`` replaces the default settings (``min_ess=10``, ``update_epochs=20``): pass all
of them each time.

For a price scenario that means something, serve a policy that cares about cost, e.g.::

    .venv/bin/agent-router train -c configs/default.yaml -s env.cost_weight=500 -s checkpoint_dir=ck500
    .venv/bin/python benchmarks/drift.py --scenario price --checkpoint ck500

Prints the per-round table and the ceiling table, then as its last line one JSON object. Figures
measured with these commands: docs/retraining.md, "Drift benchmark".
"""

from __future__ import annotations

import argparse
import dataclasses
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

#: ``--retrain-set`` when none is given
DEFAULT_RETRAIN_SET = ("min_ess=10", "update_epochs=20")


def _checkpoint(args, work: Path) -> Path:
    if args.checkpoint is not None:
        return args.checkpoint
    from training.config import load_config
    from training.run import run_training

    cfg = load_config(Path("configs/default.yaml"), [f"out_dir={work / 'run'}", f"checkpoint_dir={work / 'ck'}",
                                                     "tensorboard=false"])
    return run_training(cfg, progress=False).parent


def retrain_cost_weight(retrain_set: list[str], train_cost_weight: float) -> float:
    """The ``cost_weight`` the retrain job trains on: the last ``cost_weight=...`` of its settings,
    else the serving policy's training ``env.cost_weight`` (``RetrainConfig.cost_weight``)."""
    given = [s.split("=", 1)[1] for s in retrain_set if s.split("=", 1)[0].strip() == "cost_weight"]
    return float(given[-1]) if given and given[-1].strip().lower() not in ("none", "null", "") else train_cost_weight


def explore_gap(probs: list[np.ndarray], value: np.ndarray, floor: float, temperature: float) -> float:
    """Mean over prompts of ``v(greedy) - sum_k mu_k v_k``: the value ``[P, K]`` exploration gives
    up, with ``mu`` the server's exploration distribution of each returned distribution ``probs[p]``
    over every agent."""
    from router.service import exploration_distribution

    gaps = []
    for pi, v in zip(probs, value, strict=True):
        mu = exploration_distribution(pi, np.ones(len(pi), dtype=bool), floor, temperature)
        gaps.append(float(v[int(np.argmax(pi))] - mu @ v))
    return float(np.mean(gaps))


def change_world(quality: np.ndarray, cost_usd: np.ndarray, scenario: str, agent: int,
                 price_factor: float) -> tuple[np.ndarray, np.ndarray]:
    """``(quality, cost_usd)`` of the changed world: ``agent``'s quality 0 (``break``) or its cost
    times ``price_factor`` (``price``)."""
    quality, cost_usd = quality.copy(), cost_usd.copy()
    if scenario == "break":
        quality[:, agent] = 0.0
    else:
        cost_usd[:, agent] *= price_factor
    return quality, cost_usd


def changed_world_value(splits, split: str, scenario: str, agent: int, price_factor: float,
                        weight: float) -> np.ndarray:
    """``[P, K]``: the changed world's ``quality - weight * cost_usd`` on ``split``."""
    ds = splits.splits[split]
    q, c = change_world(ds.quality, ds.cost_usd, scenario, agent, price_factor)
    return q - weight * c


def policy_on_split(policy, splits, split: str, value: np.ndarray, agent: int) -> dict[str, float]:
    """``policy`` routed greedily on ``split`` with every agent free (zero load): its mean
    ``value`` ``[P, K]``, ``agent``'s greedy share and its mean probability."""
    from training.evaluation.offline import zero_load_probabilities

    probs = zero_load_probabilities(policy.actor, policy.layout, splits.embeddings(split),
                                    splits.splits[split].prompt_tokens)
    choice = probs.argmax(-1)
    return {"value": float(value[np.arange(len(choice)), choice].mean()),
            "changed_agent_share": float((choice == agent).mean()),
            "changed_agent_prob": float(probs[:, agent].mean())}


def changed_world_ceiling(splits, policies: dict[str, Any], scenario: str, agent: int, price_factor: float,
                          weight: float, seed: int) -> dict[str, Any]:
    """The changed world's value (quality at ``weight`` 0) on the validation split of: the kNN and
    MLP predictors fitted on train with the changed world's outcomes (routed at willingness to pay
    ``weight``), the best single agent (chosen on validation, and chosen on train), the oracle,
    and each of ``policies`` routed greedily."""
    from training.evaluation.classifiers import fit_predictors, route_wtp
    from training.evaluation.offline import policy_choices

    train, val = splits.splits["train"], splits.splits["val"]
    x_train, x_val = splits.embeddings("train"), splits.embeddings("val")
    changed = {}
    for name, ds in (("train", train), ("val", val)):
        q, c = change_world(ds.quality, ds.cost_usd, scenario, agent, price_factor)
        changed[name] = dataclasses.replace(ds, quality=q, cost_usd=c)
    value = {name: ds.quality - weight * ds.cost_usd for name, ds in changed.items()}
    rows = np.arange(len(val))

    def score(choice: np.ndarray) -> float:
        return float(value["val"][rows, choice].mean())

    predictors = fit_predictors(x_train, changed["train"], seed=seed, cost_weight=weight)
    on_train = int(np.argmax(value["train"].mean(0)))
    best = float(value["val"].mean(0).max())
    found: dict[str, Any] = {
        "split": "val", "prompts": len(val), "cost_weight": weight,
        "best_single": best, "best_single_agent": val.agent_names[int(np.argmax(value["val"].mean(0)))],
        "best_single_chosen_on_train": score(np.full(len(val), on_train)),
        "oracle": float(value["val"].max(1).mean()),
        "knn_neighbors": int(predictors["knn"].model.n_neighbors)}
    for name, p in predictors.items():
        found[name] = score(route_wtp(*p.predict(x_val), weight))
    tokens = val.prompt_tokens
    for name, policy in policies.items():
        choice = policy_choices(policy, x_val, tokens)
        found[name] = score(choice)
        found[f"{name}_changed_agent_share"] = float((choice == agent).mean())
    found["ceiling_minus_best_single"] = {name: found[name] - best for name in ("knn", "mlp")}
    return found


def main(argv: list[str] | None = None) -> None:
    from policy.checkpoint import load_checkpoint, resolve_checkpoint
    from training.config import checkpoint_config
    from training.data import load_splits
    from training.evaluation.classifiers import route_wtp

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", choices=["break", "price"], default="break",
                    help="break: the favoured agent's quality becomes 0; price: its price is multiplied")
    ap.add_argument("--price-factor", type=float, default=10.0, help="price scenario: the favoured agent's "
                    "price multiplier")
    ap.add_argument("--checkpoint", type=Path, default=None, help="checkpoint root (default: train one)")
    ap.add_argument("--requests", type=int, default=500, help="routed requests (with feedback) per round")
    ap.add_argument("--rounds", type=int, default=4, help="rounds; a retrain follows each but the last")
    ap.add_argument("--explore-floor", type=float, default=0.05)
    ap.add_argument("--explore-temperature", type=float, default=1.0)
    ap.add_argument("--cooldown-s", type=float, default=None,
                    help="the server's ROUTER_COOLDOWN_S (unset: its default; 0: no cooldowns)")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retrain-set", action="append", default=None,
                    help="retrain -s settings (repeatable; replaces the default min_ess=10, update_epochs=20)")
    args = ap.parse_args(argv)
    if args.retrain_set is None:
        args.retrain_set = list(DEFAULT_RETRAIN_SET)
    price = args.scenario == "price"
    start_load = load_average()
    work = Path(tempfile.mkdtemp(prefix="drift-"))
    source = _checkpoint(args, work)
    # the benchmark's own copy of the checkpoint root: the retrain job writes versions into it
    root = work / "checkpoints"
    version = resolve_checkpoint(source)
    shutil.copytree(version, root / version.name)
    policy = load_checkpoint(root)
    train_cfg = checkpoint_config(policy.meta)
    splits = load_splits(train_cfg)
    train = splits.splits["train"]
    names = train.agent_names
    # the reward the retrain job trains on (and the price scenario scores)
    weight = retrain_cost_weight(args.retrain_set, train_cfg.env.cost_weight)
    if price and weight == 0:
        print("note: the retrain job's cost_weight is 0 (the checkpoint's env.cost_weight): its reward is quality "
              "alone, so a price change is invisible to the loop", flush=True)
    prefix = f"drift-{uuid.uuid4().hex[:8]}"
    env = {"ROUTER_CHECKPOINT": str(root), "ROUTER_REDIS_URL": args.redis_url,
           "ROUTER_REDIS_PREFIX": prefix, "ROUTER_EXPLORE_FLOOR": str(args.explore_floor),
           "ROUTER_EXPLORE_TEMPERATURE": str(args.explore_temperature),
           "ROUTER_OUTBOX_PATH": str(work / "outbox.sqlite3"),
           "ROUTER_EMBED_CACHE_DIR": str(ROOT / "var" / "embeddings")}
    if args.cooldown_s is not None:
        env["ROUTER_COOLDOWN_S"] = str(args.cooldown_s)
    server = Server(env=env, log_path=work / "server.log").start()
    rng = random.Random(args.seed)
    order = list(range(len(train)))
    rng.shuffle(order)
    rows: list[dict[str, Any]] = []
    explore_cost: float | None = None
    explore_cost_before: float | None = None
    changed: int | None = None
    val_value: np.ndarray | None = None
    try:
        server.wait_ready(timeout_s=180.0)
        with httpx.Client(base_url=server.url, timeout=60.0) as client:
            # the agent the served policy favours on train prompts (greedy), before anything changes
            probe = [order[i % len(order)] for i in range(200)]
            counts = np.zeros(len(names))
            probe_probs = []
            for p in probe:
                body = client.post("/v1/route", json={"prompt": train.prompts[p]}).json()
                counts[names.index(body["agent"])] += 1
                probe_probs.append(np.array([body["probabilities"][n] for n in names]))
            changed = int(np.argmax(counts))
            quality, cost = change_world(train.quality, train.cost_usd, args.scenario, changed, args.price_factor)
            reward = quality - weight * cost
            # what exploration is scored on in the unchanged world
            before = train.quality - weight * train.cost_usd if price else train.quality
            explore_cost_before = explore_gap(probe_probs, before[probe], args.explore_floor, args.explore_temperature)
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
                        gaps.append(explore_gap([probs], before[[p]], args.explore_floor, args.explore_temperature))
                    client.post("/v1/feedback", json={"decision_id": body["decision_id"],
                                                      "quality": float(quality[p, a]),
                                                      "cost_usd": float(cost[p, a])}).raise_for_status()
                if r == 0:
                    explore_cost = float(np.mean(gaps))
                idx = np.array(prompts)
                ch = np.array(chosen)
                row = {"round": r, "requests": len(prompts), "feedbacks_so_far": cursor}
                if price:
                    row |= {"repriced_share": float((ch == changed).mean()),
                            "quality": float(quality[idx, ch].mean()),
                            "cost_usd_per_1k": float(cost[idx, ch].mean() * 1000),
                            "reward": float(reward[idx, ch].mean()),
                            "best_single": float(reward[idx].mean(0).max()),
                            "best_single_agent": names[int(np.argmax(reward[idx].mean(0)))],
                            "oracle": float(reward[idx].max(1).mean()),
                            # ties to the cheaper agent (in the changed world)
                            "oracle_repriced_share": float((route_wtp(quality[idx], cost[idx], weight)
                                                            == changed).mean())}
                else:
                    row |= {"broken_share": float((ch == changed).mean()),
                            "quality": float(quality[idx, ch].mean()),
                            "cost_usd_per_1k": float(train.cost_usd[idx, ch].mean() * 1000),
                            "best_single": float(quality[idx].mean(0).max()),
                            "oracle": float(quality[idx].max(1).mean())}
                row["versions"] = sorted(versions)
                if r < args.rounds - 1:
                    sets = [x for s in args.retrain_set for x in ("-s", s)]
                    run = subprocess.run([sys.executable, "-m", "cli", "retrain", "--checkpoint", str(root),
                                          "--redis-url", args.redis_url, "--prefix", prefix, *sets,
                                          "--every", "1s", "--rounds", "1", "--metrics-file",
                                          str(work / "rounds.jsonl"), "--json"],
                                         capture_output=True, text=True, cwd=ROOT, timeout=900)
                    figures = json.loads(run.stdout.strip().splitlines()[-1]) if run.returncode == 0 else {}
                    row |= {"retrain": figures.get("status", f"failed: {run.stderr.strip()[-200:]}"),
                            "verdict": figures.get("verdict"), "published": figures.get("published"),
                            "candidate_version": figures.get("version"),
                            "logged_diff": (figures["candidate_dr"] - figures["serving_dr"]
                                            if "candidate_dr" in figures else None),
                            "static_serving": figures.get("static_serving_reward"),
                            "static_candidate": figures.get("static_candidate_reward"),
                            "gate_reason": figures.get("reason")}
                    # the round's candidate, published or rejected, on validation with every agent free
                    cand_dir = next((d for d in (root / str(figures.get("version")),
                                                 root / "rejected" / str(figures.get("version"))) if d.is_dir()),
                                    None) if figures.get("version") else None
                    if cand_dir is not None:
                        if val_value is None:
                            val_value = changed_world_value(splits, "val", args.scenario, changed,
                                                            args.price_factor, weight if price else 0.0)
                        row["candidate"] = policy_on_split(load_checkpoint(cand_dir), splits, "val", val_value,
                                                           changed)
                    if figures.get("published"):  # wait for the hot swap
                        deadline = time.monotonic() + 30
                        while client.post("/v1/route", json={"prompt": "hello"}).json()["policy_version"] != \
                                figures["published"] and time.monotonic() < deadline:
                            time.sleep(0.2)
                rows.append(row)
                cand = row.get("candidate")
                cand_text = (f"; candidate on val, all agents free: share {cand['changed_agent_share']:.3f}, mean "
                             f"prob {cand['changed_agent_prob']:.3f}, value {cand['value']:.4f}" if cand else "")
                if price:
                    print(f"round {r}: repriced {names[changed]} share {row['repriced_share']:.3f}, reward "
                          f"{row['reward']:.4f} (best single {row['best_single']:.4f}), retrain {row.get('retrain')} "
                          f"({row.get('verdict')}){cand_text}", flush=True)
                else:
                    print(f"round {r}: broken {names[changed]} share {row['broken_share']:.3f}, quality "
                          f"{row['quality']:.4f} (best single {row['best_single']:.4f}), retrain "
                          f"{row.get('retrain')} ({row.get('verdict')}){cand_text}", flush=True)
    finally:
        server.stop()
        import redis

        with redis.Redis.from_url(args.redis_url) as r:
            keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                r.delete(*keys)
    if price:
        print_table(["round", "feedbacks", "repriced share", "quality", "USD/1k", "reward", "best single",
                     "oracle", "oracle share", "retrain", "verdict"],
                    [[x["round"], x["feedbacks_so_far"], x["repriced_share"], x["quality"], x["cost_usd_per_1k"],
                      x["reward"], x["best_single"], x["oracle"], x["oracle_repriced_share"], x.get("retrain", "-"),
                      x.get("verdict") or "-"] for x in rows])
    else:
        print_table(["round", "feedbacks", "broken share", "quality", "best single", "oracle", "USD/1k", "retrain",
                     "verdict"],
                    [[x["round"], x["feedbacks_so_far"], x["broken_share"], x["quality"], x["best_single"],
                      x["oracle"], x["cost_usd_per_1k"], x.get("retrain", "-"), x.get("verdict") or "-"]
                     for x in rows])
    if any("candidate" in x for x in rows):
        print(f"each round's candidate on the validation split, every agent free ({'reward' if price else 'quality'}"
              " in the changed world):")
        print_table(["round", "candidate", "retrain", "verdict", "logged diff", "static diff", "changed share",
                     "changed prob", "value"],
                    [[x["round"], x.get("candidate_version") or "-", x["retrain"], x.get("verdict") or "-",
                      x["logged_diff"] if x.get("logged_diff") is not None else "-",
                      x["static_candidate"] - x["static_serving"] if x.get("static_serving") is not None else "-",
                      x["candidate"]["changed_agent_share"], x["candidate"]["changed_agent_prob"],
                      x["candidate"]["value"]] for x in rows if "candidate" in x])
    last = rows[-1]
    if price:
        first_share, last_share = rows[0]["repriced_share"], last["repriced_share"]
        goals = {"checks": "repriced share in the last round <= 0.5 x its share in round 0; last round's reward >= "
                           "the changed world's best single agent by reward on the same prompts; exploration cost "
                           "(reward, unchanged world) <= 0.01",
                 "cost_weight": weight,
                 "repriced_share_round_0": first_share, "repriced_share_last": last_share,
                 "share_halved": bool(last_share <= 0.5 * first_share),
                 "final_reward_minus_best_single": last["reward"] - last["best_single"],
                 "final_reward_minus_oracle": last["reward"] - last["oracle"],
                 "exploration_cost": explore_cost, "exploration_cost_before_change": explore_cost_before}
        goals["met"] = bool(goals["share_halved"] and goals["final_reward_minus_best_single"] >= 0
                            and max(explore_cost or 0, explore_cost_before or 0) <= 0.01)
    else:
        below = [x for x in rows if x["broken_share"] < 0.02]
        first = below[0] if below else None
        goals = {"broken_share_below_2pct_at_round": first["round"] if first else None,
                 "feedbacks_before_it": (first["feedbacks_so_far"] - first["requests"]) if first else None,
                 "final_quality_minus_best_single": last["quality"] - last["best_single"],
                 "exploration_cost": explore_cost, "exploration_cost_before_change": explore_cost_before,
                 "met": bool(first and first["round"] <= 3 and first["feedbacks_so_far"] - first["requests"] <= 2000
                             and last["quality"] >= last["best_single"] + 0.05
                             and max(explore_cost or 0, explore_cost_before or 0) <= 0.01)}
    print(f"exploration cost in the unchanged world: {explore_cost:.4f} of {'reward' if price else 'quality'} "
          f"(round 0's prompts); {explore_cost_before:.4f} on the {len(probe)} probe prompts, before any feedback")
    final = load_checkpoint(root)
    ceiling = changed_world_ceiling(splits, {"policy_first": policy, "policy_last": final}, args.scenario, changed,
                                    args.price_factor, weight if price else 0.0, args.seed)
    ceiling |= {"policy_first_version": policy.version, "policy_last_version": final.version}
    print(f"changed world on the validation split ({'reward' if price else 'quality'}, cost_weight "
          f"{ceiling['cost_weight']:g}):")
    print_table(["router", "val", "minus best single"],
                [[n, ceiling[n], ceiling[n] - ceiling["best_single"]]
                 for n in ("best_single", "best_single_chosen_on_train", "knn", "mlp", "policy_first", "policy_last",
                           "oracle")])
    print_json_line({"benchmark": "drift", "scenario": args.scenario,
                     ("repriced_agent" if price else "broken_agent"): names[changed] if changed is not None else None,
                     "machine": machine(start_load), "rounds": rows, "goals": goals, "changed_world_ceiling": ceiling,
                     "settings": {"requests": args.requests, "explore_floor": args.explore_floor,
                                  "explore_temperature": args.explore_temperature, "cooldown_s": args.cooldown_s,
                                  "retrain_set": args.retrain_set, "cost_weight": weight,
                                  "price_factor": args.price_factor if price else None,
                                  "checkpoint_version": policy.version}})


if __name__ == "__main__":
    main()
