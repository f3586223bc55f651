"""How much routing quality the prompt embeddings carry: supervised routers on the same embeddings,
over several seeded splits, at cost_weight 0.

For each split seed (``--split-seeds``) it fits, on the train split, the eval's kNN and MLP
predictors (``training.evaluation.classifiers``) and a network of the policy's size trained
directly on the policy's objective, the expected quality ``sum_k softmax(f(x))_k q_k`` (exact,
with every agent's outcome: what the ``expected`` estimator optimises, without RL's sampling,
clipping or critic), then routes the validation split greedily. The spread of these routers is
the band a learned policy on these embeddings can be expected to reach; the best single agent
and the oracle bound it from below and above.

Usage::

    .venv/bin/python benchmarks/embedding_ceiling.py [--config configs/default.yaml] [--split-seeds 0 1 2]

Prints a table, then as its last line one JSON object (mean and sd per router).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import load_average, machine, print_json_line, print_table  # noqa: E402


def expected_quality_net(x: np.ndarray, quality: np.ndarray, seed: int, epochs: int = 8) -> torch.nn.Module:
    """An MLP (256, 256, tanh) maximising the expected quality of its softmax over agents (Adam,
    lr 1e-3, batches of 128)."""
    torch.manual_seed(seed)
    xt, qt = torch.as_tensor(x), torch.as_tensor(quality, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.Tanh(), torch.nn.Linear(256, 256),
                              torch.nn.Tanh(), torch.nn.Linear(256, quality.shape[1]))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for b in torch.randperm(len(xt)).split(128):
            loss = -(net(xt[b]).softmax(-1) * qt[b]).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def main(argv: list[str] | None = None) -> None:
    from training.config import load_config
    from training.data import load_splits
    from training.evaluation.classifiers import fit_knn, fit_mlp, route_wtp

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    ap.add_argument("--split-seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--nets", type=int, default=3, help="seeds of the expected-quality network per split")
    args = ap.parse_args(argv)
    start_load = load_average()
    scores: dict[str, list[float]] = {}
    for split_seed in args.split_seeds:
        splits = load_splits(load_config(args.config, [f"data.split_seed={split_seed}"]))
        train, val = splits.splits["train"], splits.splits["val"]
        x_train, x_val = splits.embeddings("train"), splits.embeddings("val")
        rows = np.arange(len(val))

        def quality(choice: np.ndarray, val=val, rows=rows) -> float:
            return float(val.quality[rows, choice].mean())

        best = int(np.argmax(train.quality.mean(0)))
        found = {"best_single": quality(np.full(len(val), best)), "oracle": float(val.quality.max(1).mean()),
                 "knn": quality(route_wtp(*fit_knn(x_train, train).predict(x_val), 0.0)),
                 "mlp": quality(route_wtp(*fit_mlp(x_train, train, seed=split_seed).predict(x_val), 0.0))}
        nets = []
        for s in range(args.nets):
            net = expected_quality_net(x_train, train.quality, s)
            with torch.no_grad():
                nets.append(quality(net(torch.as_tensor(x_val)).argmax(-1).numpy()))
        found["expected_quality_net"] = statistics.fmean(nets)
        for name, value in found.items():
            scores.setdefault(name, []).append(value)
        print(f"split seed {split_seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in found.items()), flush=True)
    summary = {name: {"mean": statistics.fmean(v), "sd": statistics.pstdev(v)} for name, v in scores.items()}
    print_table(["router", "val quality mean", "sd"], [[n, s["mean"], s["sd"]] for n, s in summary.items()])
    margins = [n - max(k, m) for n, k, m in zip(scores["expected_quality_net"], scores["knn"], scores["mlp"],
                                                  strict=True)]
    margin = statistics.fmean(margins)
    print(f"expected-quality net - max(kNN, MLP), per split: {' '.join(f'{x:+.4f}' for x in margins)}; "
          f"mean {margin:+.4f} (the issue's goal for the policy: +0.02)")
    print_json_line({"benchmark": "embedding_ceiling", "config": str(args.config), "split_seeds": args.split_seeds,
                     "machine": machine(start_load), "summary": summary, "net_minus_best_baseline": margin})


if __name__ == "__main__":
    main()
