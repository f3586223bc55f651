"""Raw encode speed of the torch encoder against ONNX Runtime int8 (``ROUTER_ENCODER=onnx-int8``).

One thread each (``torch.set_num_threads(1)``; ONNX Runtime ``intra_op_num_threads=1``), as a
server process runs them. On ``--prompts`` prompts of the shipped dataset (distinct, shuffled with
``--seed``):

* batch 1: each prompt encoded alone; median and p90 ms per prompt;
* batch 8 and 64: encode calls of 8 and 64 prompts (sorted by length and run in passes of
  ``--pass-size``, as the server's ``ROUTER_ENCODE_BATCH``; int8 always runs one prompt per pass,
  see ``env/onnx_embedder.py``); prompts/s over all calls.

The two encoders alternate call by call, so both see the same load on a shared machine; the load
averages at the start and the end are printed with the figures. No on-disk cache is used.

Usage::

    .venv/bin/python benchmarks/encoder_speed.py [--prompts 64] [--onnx-dir var/onnx]

Prints a table, then as its last line one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import load_average, machine, print_json_line, print_table  # noqa: E402
from env.embedder import Embedder  # noqa: E402
from env.onnx_embedder import OnnxEmbedder  # noqa: E402


def shipped_prompts(count: int, seed: int) -> list[str]:
    with gzip.open(ROOT / "data" / "llmrouter-dc" / "prompts.jsonl.gz", "rt", encoding="utf-8") as f:
        prompts = sorted({json.loads(line)["prompt"] for line in f if line.strip()})
    random.Random(seed).shuffle(prompts)
    return prompts[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pass-size", type=int, default=8, help="prompts per forward pass within a call")
    parser.add_argument("--onnx-dir", type=Path, default=ROOT / "var" / "onnx")
    args = parser.parse_args()
    load_start = load_average()
    torch.set_num_threads(1)
    prompts = shipped_prompts(args.prompts, args.seed)
    encoders = {"torch": Embedder(batch_size=args.pass_size, progress=False),
                "onnx-int8": OnnxEmbedder(batch_size=args.pass_size, progress=False, onnx_dir=args.onnx_dir)}
    for embedder in encoders.values():
        embedder.encode(prompts[:4])  # load (and export once) and warm up
    one: dict[str, list[float]] = {name: [] for name in encoders}
    for prompt in prompts:
        for name, embedder in encoders.items():
            start = time.perf_counter()
            embedder.encode([prompt])
            one[name].append((time.perf_counter() - start) * 1000.0)
    throughput: dict[str, dict[int, float]] = {name: {} for name in encoders}
    for size in (8, 64):
        spent = dict.fromkeys(encoders, 0.0)
        for start in range(0, len(prompts) - size + 1, size):
            for name, embedder in encoders.items():
                t0 = time.perf_counter()
                embedder.encode(prompts[start:start + size])
                spent[name] += time.perf_counter() - t0
        done = (len(prompts) // size) * size
        for name in encoders:
            throughput[name][size] = done / spent[name] if spent[name] else float("nan")
    figures = {
        "prompts": len(prompts),
        "pass_size": args.pass_size,
        "quantization": encoders["onnx-int8"].quantization,
        "encoders": {
            name: {
                "batch1_median_ms": statistics.median(one[name]),
                "batch1_p90_ms": statistics.quantiles(one[name], n=10)[-1],
                "batch8_prompts_per_s": throughput[name][8],
                "batch64_prompts_per_s": throughput[name][64],
            }
            for name in encoders
        },
        "machine": machine(load_start),
    }
    rows = [[name, f["batch1_median_ms"], f["batch1_p90_ms"], f["batch8_prompts_per_s"], f["batch64_prompts_per_s"]]
            for name, f in figures["encoders"].items()]
    print_table(["encoder", "batch-1 median ms", "batch-1 p90 ms", "batch-8 prompts/s", "batch-64 prompts/s"], rows)
    print(f"int8 quantisation: {figures['quantization']}; load average 1/5/15 min at start {load_start}, "
          f"at end {figures['machine']['loadavg_1_5_15_end']}")
    print_json_line(figures)


if __name__ == "__main__":
    main()
