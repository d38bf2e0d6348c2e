"""The sweep figures (matplotlib, Agg: headless): rank, weight types at a fixed budget, budget, and
the φ heat maps in the paper's layout (i on the vertical axis, j on the horizontal)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from lora_repro.analysis.sweep import Sweep


def _save(fig, path: Path, tight: bool = True) -> Path:
    from lora_repro.io import atomic_write

    if tight:
        fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110), binary=True)
    plt.close(fig)
    return path


def _spread(ax, x, points: pd.DataFrame, runs: pd.DataFrame, metric: str, label: str, keys: list[str]) -> None:
    """Mean line, min-max bars and every seed's value as a dot: the seed spread drawn."""
    ax.errorbar(x, points["mean"], yerr=[points["mean"] - points["min"], points["max"] - points["mean"]],
                marker="o", capsize=3, label=label)
    for xi, (_, point) in zip(x, points.iterrows(), strict=True):
        mine = runs
        for key in keys:
            mine = mine[mine[key].astype(str) == str(point[key])]
        ax.scatter([xi] * len(mine), mine[metric], s=10, color="grey", alpha=0.6, zorder=3)


def rank_figure(sweep: Sweep, path: Path) -> Path:
    """Metric against r (log2 x), one line per other swept setting, seeds as dots."""
    points, keys = sweep.points, sweep.swept
    others = [k for k in keys if k != "config.method.r"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, group in (points.groupby(others, dropna=False) if others else [("", points)]):
        _spread(ax, group["config.method.r"], group, sweep.runs, sweep.metric, str(label) or "LoRA", keys)
    ax.set_xscale("log", base=2)
    ranks = sorted(points["config.method.r"].unique())
    ax.set_xticks(ranks, [str(int(r)) for r in ranks])
    ax.set_xlabel("LoRA rank r")
    ax.set_ylabel(sweep.metric.removeprefix("best.") + " x 100")
    ax.set_title(f"{sweep.name}: metric vs rank (mean, min-max, seeds)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def targets_figure(sweep: Sweep, path: Path) -> Path:
    """Bars per set of adapted weight types at a fixed budget, min-max bars and seeds as dots."""
    points, keys = sweep.points, sweep.swept
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(points))
    ax.bar(x, points["mean"], color="tab:blue", alpha=0.5)
    _spread(ax, x, points, sweep.runs, sweep.metric, "mean (min-max)", keys)
    ax.set_xticks(x, [p.replace(" ", "\n") for p in points["point"]], fontsize=7)
    low = float(sweep.runs[sweep.metric].min())
    ax.set_ylim(low - 2, float(sweep.runs[sweep.metric].max()) + 1)
    ax.set_ylabel(sweep.metric.removeprefix("best.") + " x 100")
    ax.set_title(f"{sweep.name}: weight types at a fixed budget")
    return _save(fig, path)


def budget_figure(sweep: Sweep, path: Path) -> Path:
    """Metric against trainable parameters (log x), one line per method (Figure 2's layout)."""
    points, keys = sweep.points, sweep.swept
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, group in points.groupby("config.method.name"):
        group = group.sort_values("trainable")
        _spread(ax, group["trainable"], group, sweep.runs, sweep.metric, str(method), keys)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (without the head)")
    ax.set_ylabel(sweep.metric.removeprefix("best.") + " x 100")
    ax.set_title(f"{sweep.name}: metric vs trainable parameters")
    ax.legend(fontsize=8)
    return _save(fig, path)


SWEEP_FIGURES = {"rank": rank_figure, "targets": targets_figure, "budget": budget_figure}


def sweep_figure(sweep: Sweep, out_dir: Path) -> Path:
    return SWEEP_FIGURES[sweep.kind](sweep, out_dir / f"{sweep.stem}_{sweep.kind}.png")


def heatmaps(panels: Mapping[str, np.ndarray], path: Path, title: str, vmax: float = 1.0,
             xlabel: str = "j", ylabel: str = "i") -> Path:
    """One φ heat map per panel, i = 1.. on the vertical axis (top down), j = 1.. across, as in Fig. 3/4."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    image = None
    for ax, (name, grid) in zip(axes[0], panels.items(), strict=True):
        image = ax.imshow(grid, vmin=0, vmax=vmax, cmap="viridis", aspect="auto",
                          extent=(0.5, grid.shape[1] + 0.5, grid.shape[0] + 0.5, 0.5))
        ax.set_title(name, fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path, tight=False)  # tight_layout would squeeze the shared colour bar
