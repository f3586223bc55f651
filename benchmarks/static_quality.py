"""What static embeddings cost in routing quality: the same policy trained and evaluated on MiniLM's
vectors and on each static distillation, on each shipped dataset's validation split.

For every dataset, encoder (``torch``, then ``static`` of each ``--distillations`` version) and
training seed, it runs ``agent-router train`` with the dataset's one-checkpoint config (the outcome
actor of ``configs/tradeoffs.yaml`` / ``configs/routellm-tradeoffs.yaml``: about 10 s to fit) and
``agent-router eval --split val --cost-weight 0 --json``, and reads the quality of the policy and of
the eval's kNN and MLP, fitted on the same vectors. The issue's goal: the policy on static vectors
within 0.01 of the policy on MiniLM's, on every dataset (docs/evaluation.md#static-embeddings).

Usage::

    .venv/bin/python benchmarks/static_quality.py [--datasets llmrouter-dc,routellm-evals]
        [--distillations 1,2] [--seeds 0,1,2] [--split-seed 0]

Prints a table (mean ± sd over the seeds), each distillation's margin to MiniLM against the goal,
then as its last line one JSON object. Checkpoints and runs go to a temporary directory; static
models to ``var/static`` and embeddings to ``var/embeddings``, as training uses them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import load_average, machine, print_json_line, print_table  # noqa: E402

CONFIGS = {"llmrouter-dc": "configs/tradeoffs.yaml", "routellm-evals": "configs/routellm-tradeoffs.yaml"}
ROUTERS = ("policy", "knn", "mlp")
#: The issue's goal: static's policy at most this far below MiniLM's.
GOAL = 0.01


def run_cli(args: list[str]) -> str:
    """``python -m cli <args>`` in the project; its stdout. Exits with the CLI's error line on failure."""
    done = subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: agent-router {args[0]} failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def qualities(dataset: str, encoder: str, seed: int, split_seed: int, work: Path) -> dict[str, float]:
    """Train one policy and evaluate it: ``{router: validation quality at cost_weight 0}``."""
    run = work / f"{dataset}-{encoder}-{seed}"
    sets = ["-s", f"seed={seed}", "-s", f"data.split_seed={split_seed}", "-s", f"out_dir={run / 'run'}",
            "-s", f"checkpoint_dir={run / 'checkpoints'}", "-s", "tensorboard=false"]
    if encoder != "torch":  # static-<version>
        sets += ["-s", "embed.encoder=static", "-s", f"embed.static_version={encoder.removeprefix('static-')}"]
    run_cli(["train", "--quiet", "-c", CONFIGS[dataset], *sets])
    report = json.loads(run_cli(["eval", "--checkpoint", str(run / "checkpoints"), "--split", "val",
                                 "--cost-weight", "0", "--json", *sets[2:]]).strip().splitlines()[-1])
    return {router: float(report["routers"][router]["quality"]) for router in ROUTERS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default=",".join(CONFIGS), help="Comma-separated: " + ", ".join(CONFIGS))
    ap.add_argument("--distillations", default="1,2", help="Static distillations (env.static_embedder.DISTILLATIONS).")
    ap.add_argument("--seeds", default="0,1,2", help="Training seeds (the eval's MLP takes the same seed).")
    ap.add_argument("--split-seed", type=int, default=0)
    args = ap.parse_args(argv)
    datasets = [d for d in args.datasets.split(",") if d]
    unknown = [d for d in datasets if d not in CONFIGS]
    if unknown:
        raise SystemExit(f"error: unknown dataset {unknown[0]!r}: one of {', '.join(CONFIGS)}")
    encoders = ["torch", *(f"static-{v}" for v in args.distillations.split(",") if v)]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    start_load = load_average()
    found: dict[str, dict[str, dict[str, list[float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="static-quality-") as tmp:
        for dataset in datasets:
            for encoder in encoders:
                runs = [qualities(dataset, encoder, seed, args.split_seed, Path(tmp)) for seed in seeds]
                found.setdefault(dataset, {})[encoder] = {r: [q[r] for q in runs] for r in ROUTERS}
                print(f"{dataset} {encoder}: " + ", ".join(
                    f"{r} {statistics.fmean(v):.4f}" for r, v in found[dataset][encoder].items()), file=sys.stderr)

    def spread(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.3f} ± {sd:.3f}"

    print_table(["dataset", "router", *encoders],
                [[d, r, *(spread(found[d][e][r]) for e in encoders)] for d in datasets for r in ROUTERS])
    summary: dict[str, dict[str, float]] = {}
    for dataset in datasets:
        base = statistics.fmean(found[dataset]["torch"]["policy"])
        for encoder in encoders[1:]:
            margin = statistics.fmean(found[dataset][encoder]["policy"]) - base
            summary.setdefault(dataset, {})[encoder] = margin
            status = "met" if margin >= -GOAL else "NOT met"
            print(f"{dataset}: policy on {encoder} - on MiniLM = {margin:+.4f} (goal >= -{GOAL}): {status}")
    print_json_line({"benchmark": "static_quality", "split_seed": args.split_seed, "seeds": seeds,
                     "machine": machine(start_load), "goal": -GOAL,
                     "quality": {d: {e: {r: statistics.fmean(v) for r, v in rs.items()} for e, rs in es.items()}
                                 for d, es in found.items()},
                     "policy_minus_minilm": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
