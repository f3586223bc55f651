"""Behaviour unchanged by a refactor: the main job's checkpoint, trained at an earlier revision and
at this checkout with the same seed, has the same weights (``weights_sha256``), bit for bit.

    .venv/bin/python benchmarks/checkpoint_identity.py --base REV [--config configs/default.yaml]
        [-s key=value ...]

The earlier revision is checked out in a temporary git worktree and trained there with this
checkout's virtual environment (its packages resolve from the worktree); both runs share the
embedding cache of ``var/embeddings``. Prints both hashes and ends with one JSON object; exits 1
when they differ.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import load_average, machine, print_json_line  # noqa: E402


def _entry(tree: Path) -> str:
    """The command-line package of a revision (``cli`` since the house moved it; ``router`` before)."""
    return "cli" if (tree / "cli" / "__main__.py").is_file() else "router"


def train_sha(tree: Path, out: Path, config: str, overrides: list[str]) -> tuple[str, float]:
    """``weights_sha256`` of the checkpoint ``train`` writes in ``tree``, and the seconds it took."""
    cache = ROOT / "var" / "embeddings"
    args = [sys.executable, "-m", _entry(tree), "train", "-c", config, "-q", "-s", f"checkpoint_dir={out / 'ck'}",
            "-s", f"out_dir={out / 'run'}", "-s", f"embed.cache_dir={cache}"]
    for item in overrides:
        args += ["-s", item]
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    subprocess.run(args, cwd=tree, env=env, check=True, capture_output=True, text=True)
    (meta,) = (out / "ck").glob("*/policy.json")
    return json.loads(meta.read_text())["weights_sha256"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the earlier revision (a commit, tag or branch)")
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("-s", "--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    start_load = load_average()
    with tempfile.TemporaryDirectory(prefix="identity-") as scratch:
        tmp = Path(scratch)
        base_tree = tmp / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.base], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            base_sha, base_s = train_sha(base_tree, tmp / "base-run", args.config, args.overrides)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, capture_output=True)
        head_sha, head_s = train_sha(ROOT, tmp / "head-run", args.config, args.overrides)
    same = base_sha == head_sha
    print(f"{args.base}: {base_sha} ({base_s:.0f} s)")
    print(f"this checkout: {head_sha} ({head_s:.0f} s)")
    print(f"goal: the same weights, bit for bit: {'met' if same else 'NOT met'}")
    print_json_line({"benchmark": "checkpoint_identity", "base": args.base, "config": args.config,
                     "overrides": args.overrides, "base_sha256": base_sha, "head_sha256": head_sha,
                     "identical": same, "machine": machine(start_load)})
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
