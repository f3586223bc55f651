"""Helpers shared by the benchmark scripts: machine description, table printing, smoothing, the JSON line."""

from __future__ import annotations

import json
import math
import os
import platform
from typing import Any

import torch

from training.json_safe import finite_or_null


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (NaN where the OS has none): how shared the CPU was."""
    return [round(x, 2) for x in (os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3)]


def machine(load_at_start: list[float] | None = None) -> dict[str, Any]:
    """Where the benchmark ran: CPU count, torch threads and the load averages at the start and the end."""
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "loadavg_1_5_15_start": load_at_start,
        "loadavg_1_5_15_end": load_average(),
    }


def tail_mean(values: list[float], fraction: float = 0.1, at_least: int = 1) -> float:
    """Mean of the last ``max(at_least, fraction * len)`` finite values (NaN when there are none)."""
    k = max(at_least, int(len(values) * fraction))
    tail = [v for v in values[-k:] if math.isfinite(v)]
    return sum(tail) / len(tail) if tail else math.nan


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points, skipping NaNs."""
    out = []
    for i in range(len(values)):
        part = [v for v in values[max(0, i - window + 1) : i + 1] if math.isfinite(v)]
        out.append(sum(part) / len(part) if part else math.nan)
    return out


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """A plain fixed-width table on stdout (floats to 3 decimals)."""
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def print_json_line(figures: dict[str, Any]) -> None:
    """Every figure as one JSON object on the last line of stdout (NaN written as null)."""

    print(json.dumps(finite_or_null(figures), sort_keys=False), flush=True)
