"""Figures of ``agent-router eval --plot-dir``: the cost-quality (Pareto) curves and a per-task bar chart."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Routers drawn in the per-task chart, in this order.
BAR_ROUTERS = ("policy", "knn", "mlp", "best_single", "cheapest", "random", "oracle")
#: One colour per router in both figures.
COLORS = {"policy": "C0", "knn": "C1", "mlp": "C2", "best_single": "C3", "cheapest": "C4", "random": "C5",
          "oracle": "C6", "zero_router": "C7", "policy_threshold": "C9"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(report: Mapping[str, Any], path: str | Path) -> Path:
    """``pareto.png``: every router's operating points (markers) and its non-decreasing convex
    hull (line, extended flat to the table's highest cost), cost in USD per 1k requests."""
    plt = _pyplot()
    path = Path(path)
    lo, hi = report["cost_range_usd_per_1k"]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    for name, pts in report["curves"].items():
        color = COLORS.get(name, "C8")
        aiq = report["routers"].get(name, {}).get("aiq")
        label = f"{name} (AIQ {aiq:.3f})" if aiq is not None else name
        mine = name in ("policy", "policy_threshold")  # drawn on top, larger
        ax.scatter([p["cost_usd_per_1k"] for p in pts], [p["quality"] for p in pts], s=40 if mine else 14,
                   color=color, alpha=0.9 if mine else 0.6, marker="o" if len(pts) > 1 else "D",
                   zorder=4 if mine else 2, edgecolors="black" if mine else "none")
        hull = report["hulls"][name]
        xs, ys = [h[0] for h in hull] + [hi], [h[1] for h in hull] + [hull[-1][1]]
        ax.plot(xs, ys, color=color, lw=1.4, ls="--" if name in ("oracle", "zero_router") else "-", label=label)
    ax.set_xlim(lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo))
    ax.set_xlabel("cost (USD per 1k requests)")
    ax.set_ylabel("mean quality")
    ax.set_title(f"cost-quality on {report.get('split') or 'split'} ({report['prompts']} prompts): "
                 "points and non-decreasing convex hulls")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_per_task(report: Mapping[str, Any], path: str | Path) -> Path:
    """``per_task.png``: mean quality per task, one bar per router."""
    import numpy as np

    plt = _pyplot()
    path = Path(path)
    per_task = report["per_task"]
    tasks = list(per_task)
    routers = [r for r in BAR_ROUTERS if tasks and r in per_task[tasks[0]]["routers"]]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.9 * len(tasks) + 3), 4.8), dpi=110)
    width = 0.8 / max(1, len(routers))
    x = np.arange(len(tasks))
    for i, name in enumerate(routers):
        ax.bar(x + (i - (len(routers) - 1) / 2) * width,
               [per_task[t]["routers"][name]["quality"] for t in tasks], width, label=name,
               color=COLORS.get(name, "C8"))
    ax.set_xticks(x)
    ax.set_xticklabels([f"{t}\n(n={per_task[t]['prompts']})" for t in tasks], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("mean quality")
    ax.set_ylim(0, 1.2)
    ax.set_title(f"quality per task on {report.get('split') or 'split'}, cost_weight={report['cost_weight']:g}")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, ncol=max(1, len(routers)), loc="upper center")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_plots(report: Mapping[str, Any], plot_dir: str | Path) -> list[Path]:
    """Write ``pareto.png`` and ``per_task.png`` into ``plot_dir`` (created)."""
    plot_dir = Path(plot_dir)
    plot_dir.mkdir(parents=True, exist_ok=True)
    return [plot_pareto(report, plot_dir / "pareto.png"), plot_per_task(report, plot_dir / "per_task.png")]
