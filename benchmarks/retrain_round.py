"""How long one learning round takes: ``run_retrain`` on a cold-start policy over N logged records.

Issue 20's goal: a round over 10,000 records in at most 10 s on 2 CPU cores. The records are real
experience records of a cold start (``agent-router init`` on the shipped llmrouter-dc agents file)
routing the dataset's prompts with exploration, each with the chosen agent's quality, written as
the server writes them into an in-memory log (``benchmarks/bandit_loop.MemorySource``); the
embeddings come from the on-disk cache (the first run embeds the prompts). The timed part is the
retrain job alone: reading and parsing the records, the reward critic's fit, the actor's fit, the
gate and the checkpoint's write.

    .venv/bin/python benchmarks/retrain_round.py [--records 10000] [--repeats 3]

Prints each repeat's seconds, the mean and sd, the ratio to the goal, and one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bandit_loop import MemorySource  # noqa: E402
from benchmarks.common import load_average, machine, print_json_line  # noqa: E402
from contract.experience import ExperienceRecord, Feedback  # noqa: E402
from env.dataset import load_dataset  # noqa: E402
from env.embedder import Embedder  # noqa: E402
from policy.checkpoint import load_checkpoint  # noqa: E402
from router.service import RoutingService  # noqa: E402
from training.cold_start import init_policy  # noqa: E402
from training.retrain.config import RetrainConfig  # noqa: E402
from training.retrain.job import run_retrain  # noqa: E402

GOAL_S = 10.0


def logged_records(agents: Path, prompts: Path, records: int, root: Path, seed: int) -> MemorySource:
    """``records`` experience records of a cold start exploring on the dataset's prompts (repeated as
    needed), in a :class:`MemorySource`."""
    ds = load_dataset(prompts, agents)
    emb = Embedder("all-MiniLM-L6-v2", cache_dir="var/embeddings", progress=False).encode(ds.prompts)
    init_policy(agents, root, embed_dim=emb.shape[1], seed=seed)
    service = RoutingService(load_checkpoint(root), embedder=None, seed=seed)  # type: ignore[arg-type]
    source = MemorySource("memory:retrain_round")
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC).isoformat()
    for i in rng.integers(0, len(ds), size=records):
        decision = service.route(ds.prompts[i], explore=True, embedding=emb[i])
        feedback = Feedback(quality=float(ds.quality[i, decision.action]), feedback_at=now)
        record = ExperienceRecord.join(service.decision_context(decision, ds.prompts[i], None), feedback)
        source.records.append(json.dumps(record.to_json_dict()))
    return source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--agents", type=Path, default=Path("data/llmrouter-dc/agents.json"))
    parser.add_argument("--prompts", type=Path, default=Path("data/llmrouter-dc/prompts.jsonl.gz"))
    args = parser.parse_args()
    start_load = load_average()
    seconds = []
    for repeat in range(args.repeats):
        work = Path(tempfile.mkdtemp(prefix="retrain-round-"))
        try:
            source = logged_records(args.agents, args.prompts, args.records, work / "checkpoints", repeat)
            cfg = RetrainConfig(checkpoint_root=work / "checkpoints", publish=False, seed=repeat)
            t0 = time.perf_counter()
            result = run_retrain(cfg, source=source)
            seconds.append(time.perf_counter() - t0)
            print(f"repeat {repeat}: {result.status}, {result.used} records trained on, "
                  f"{result.gate['logged']['decisions'] if result.gate.get('logged') else 0} held out, "
                  f"{seconds[-1]:.2f} s", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    mean, sd = statistics.mean(seconds), statistics.stdev(seconds) if len(seconds) > 1 else 0.0
    print(f"round over {args.records} records: {mean:.2f} ± {sd:.2f} s; goal <= {GOAL_S:g} s: ratio "
          f"{mean / GOAL_S:.2f} ({'met' if mean <= GOAL_S else 'NOT met'})")
    print_json_line({"benchmark": "retrain_round", "records": args.records, "seconds": seconds, "mean_s": mean,
                     "sd_s": sd, "goal_s": GOAL_S, "ratio_to_goal": mean / GOAL_S, "met": mean <= GOAL_S,
                     "machine": machine(start_load)})


if __name__ == "__main__":
    main()
