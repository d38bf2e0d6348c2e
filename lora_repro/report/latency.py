"""The latency table (paper Table 1) and heat maps (Figure 5) from the results store.

Reads the records of one `latency_<device>` experiment (one per variant, per-cell timings in
`epochs`), keeps the latest invocation (`timing.run_id`), and writes:
- `<tables>/<experiment>.csv`: one row per variant x cell (median, mean, std, IQR, overhead);
- `<tables>/<experiment>.md`: Table 1 with the paper's ms and % beside ours, the checks, the grid;
- `<figures>/latency_heatmap_<device>.png`: overhead % over batch x seq, one panel per adapter
  type and bottleneck (Figure 5's layout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from lora_repro.bench.checks import cell, checks, notes, result_text, variant_for
from lora_repro.paths import REPO_ROOT
from lora_repro.report.common import completed_runs, write_figure, write_table
from lora_repro.store import RunStore

PAPER_CSV = REPO_ROOT / "results" / "paper" / "latency_table1.csv"
SHARED_ROWS = ("base", "base_copy", "lora_merged", "lora_unmerged")  # one variant in every Table 1 cell


def collect(experiment: str, store: RunStore | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per variant x cell of the latest invocation (its records share `timing.run_id`), and the
    run's info (device, dtype, threads, ...)."""
    runs = completed_runs(experiment, store)
    if runs.empty:
        raise ValueError(f"the store holds no latency records for experiment {experiment!r}; "
                         "run `python -m experiments.latency` first")
    latest = runs.loc[runs.created_at.idxmax(), "timing.run_id"]
    runs = runs[runs["timing.run_id"] == latest]
    variants = runs.rename(columns={"config.variant.name": "variant", "config.variant.kind": "kind",
                                    "config.variant.bottleneck": "bottleneck", "config.variant.budget": "budget",
                                    "params.trainable": "method_params", "params.total": "total_params"})
    cells = variants.explode("epochs", ignore_index=True)
    frame = pd.concat([cells[["variant", "kind", "bottleneck", "budget", "method_params", "total_params"]],
                       pd.DataFrame(list(cells.epochs))], axis=1)
    frame = frame.sort_values(["batch", "seq", "variant"]).reset_index(drop=True)
    record = (store or RunStore()).read(experiment, runs.key.iloc[0])  # the run's info, as nested dicts
    info = {**record["timing"], "grid": record["config"]["grid"], "hardware": record["env"].get("hardware", {}),
            "peak_rss_bytes": record["memory"].get("peak_rss_bytes"), "model": record["model"]}
    return frame, info


def table1_markdown(frame: pd.DataFrame, paper: pd.DataFrame) -> list[str]:
    cells = paper[["cell", "batch", "seq", "budget"]].drop_duplicates().itertuples(index=False)
    cells = list(cells)
    head = "| | " + " | ".join(f"BS {c.batch}, seq {c.seq}, \\|Θ\\|={c.budget}" for c in cells) + " |"
    lines = [head, "|---|" + "---|" * len(cells)]
    rows = [("base", "Fine-Tune / LoRA"), ("base_copy", "base again (noise control, ours)"),
            ("lora_merged", "LoRA merged (ours)"),
            ("lora_unmerged", "LoRA unmerged r=4 (ours)"), ("adapter_l", "Adapter^L"), ("adapter_h", "Adapter^H")]
    for kind, label in rows:
        parts = []
        for c in cells:
            ref = paper[(paper.cell == c.cell) & (paper.method == kind)]
            text = ""
            if not ref.empty:
                r = ref.iloc[0]
                text = f"paper {r.ms:.1f} ± {r.ms_std:.1f}"
                text += "" if pd.isna(r.overhead_pct) else f" (+{r.overhead_pct:.1f} %)"
            name = kind if kind in SHARED_ROWS else variant_for(frame, kind, c.budget)
            ours = cell(frame, name, c.batch, c.seq) if name else None
            if ours is not None:
                mine = f"ours {ours.median_ms:.1f} (IQR {ours.iqr_ms:.1f})"
                if kind != "base":
                    mine += f" ({ours.overhead_pct_paired:+.1f} %)"
                if kind in ("adapter_l", "adapter_h"):
                    mine += f" [r={int(ours.bottleneck)}, {int(ours.method_params):,}]"
                text = f"{text}; {mine}" if text else mine
            elif text:
                text += "; ours: not measured"
            parts.append(text or "–")
        lines.append(f"| {label} | " + " | ".join(parts) + " |")
    return lines


def grid_markdown(frame: pd.DataFrame) -> list[str]:
    grid = frame[frame.budget.isna()]
    variants = [v for v in ["base_copy", "lora_merged", "merged_zero", "lora_unmerged"] if v in set(grid.variant)]
    for kind in ("adapter_l", "adapter_h"):
        sub = grid[grid.kind == kind].sort_values("bottleneck")
        variants += list(dict.fromkeys(sub.variant))
    lines = ["| batch | seq | base ms (median, IQR) | " + " | ".join(variants) + " |",
             "|---|---|---|" + "---|" * len(variants)]
    for (batch, seq), group in grid.groupby(["batch", "seq"]):
        base = group[group.variant == "base"]
        base_text = f"{base.iloc[0].median_ms:.1f} ({base.iloc[0].iqr_ms:.1f})" if not base.empty else "–"
        cells = []
        for v in variants:
            row = group[group.variant == v]
            cells.append(f"{row.iloc[0].overhead_pct_paired:+.2f} %" if not row.empty else "–")
        lines.append(f"| {batch} | {seq} | {base_text} | " + " | ".join(cells) + " |")
    return lines


def to_markdown(frame: pd.DataFrame, info: dict[str, Any], experiment: str, figure: Path | None,
                command: str) -> str:
    paper = pd.read_csv(PAPER_CSV)
    grid = info.get("grid", {})
    hardware = info.get("hardware", {})
    lines = [
        f"# Inference latency, {info.get('model')}: {experiment} (paper Table 1 / Figure 5)",
        "",
        f"Device: {info.get('device_name')} ({info.get('device')}, {hardware.get('cpu_count')} logical CPUs visible), "
        f"{info.get('num_threads')} torch threads, dtype {info.get('dtype')}, torch {info.get('torch')}, attention "
        f"`{info.get('attn_implementation')}`. Weights: {info.get('weights')}. Forward: {info.get('forward')}. "
        f"Timer: {info.get('timer')}"
        + ("" if info.get("cuda_timing") == "used" else f" ({info.get('cuda_timing')})")
        + f". Per cell: {grid.get('warmup')} warm-up pass(es), then {grid.get('trials')} timed passes per variant"
        + (f" ({grid['check_trials']} for the merge check's base, base_copy, lora_merged and merged_zero in every "
           "cell, and for every variant in the measured Table 1 cells)" if grid.get("check_trials") else "")
        + ", variants interleaved in a rotating order; every variant was built once and shares the base weights. "
        "ms = median (IQR); overhead = median over rounds of (variant pass / base pass of the same round) - 1, "
        "with a distribution-free 95 % interval for that median in the checks (the CSV also has the ratio of "
        "medians). Paper: mean ± std of 100 trials on a "
        "Quadro RTX8000 (a GPU); absolute ms are not comparable across devices, the % overhead is. "
        f"Run wall time {info.get('wall_s', 0) / 60:.1f} min (building the variants {info.get('build_s')} s); "
        f"load average (1, 5, 15 min) before {info.get('loadavg_before')}, after {info.get('loadavg_after')} "
        "(the benchmark's own threads count in `after`; on a quiet machine `before` is near 0). "
        f"Regenerate: `{command}`.",
        "",
        "## Table 1: paper vs ours",
        "",
        *table1_markdown(frame, paper),
        "",
        "Adapter cells use the bottleneck whose parameter count (our formula, `count_params`) is closest to the "
        "paper's |Θ|: shown as [r, count].",
        "",
        "## Checks",
        "",
        "| check | result | numbers |",
        "|---|---|---|",
    ]
    results = checks(frame)
    for item in results:
        lines.append(f"| {item['check']} | {result_text(item)} | {item['numbers']} |")
    lines += notes(results, frame, str(info.get("device")))
    lines += ["", "## Overhead over the grid (% vs base, median paired ratio)", "", *grid_markdown(frame), ""]
    if figure is not None:
        rel = Path("..") / "figures" / figure.name
        lines += [f"Heat maps (Figure 5 layout): [{figure.name}]({rel})", ""]
    return "\n".join(lines)


def heatmap(frame: pd.DataFrame, path: Path, title: str) -> Path:
    """Figure 5: overhead % over batch (rows) x seq (columns), one panel per adapter type x bottleneck."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = frame[frame.budget.isna() & frame.kind.isin(["adapter_h", "adapter_l"])]
    bottlenecks = sorted(grid.bottleneck.dropna().astype(int).unique())
    batches = sorted(frame[frame.budget.isna()].batch.unique())
    seqs = sorted(frame[frame.budget.isna()].seq.unique())
    kinds = [("adapter_h", "Adapter^H"), ("adapter_l", "Adapter^L")]
    values = grid.overhead_pct_paired.to_numpy()
    vmax = max(1.0, float(np.nanmax(np.abs(values)))) if len(values) else 1.0
    fig, axes = plt.subplots(len(kinds), len(bottlenecks), figsize=(3.2 * len(bottlenecks) + 1, 2.8 * len(kinds)),
                             squeeze=False, constrained_layout=True)
    image = None
    for i, (kind, label) in enumerate(kinds):
        for j, r in enumerate(bottlenecks):
            ax = axes[i][j]
            data = np.full((len(batches), len(seqs)), np.nan)
            for row in grid[(grid.kind == kind) & (grid.bottleneck == r)].itertuples():
                data[batches.index(row.batch), seqs.index(row.seq)] = row.overhead_pct_paired
            image = ax.imshow(data, cmap="RdYlGn_r", vmin=-vmax, vmax=vmax, aspect="auto", origin="lower")
            for y in range(len(batches)):
                for x in range(len(seqs)):
                    if not np.isnan(data[y, x]):
                        ax.text(x, y, f"{data[y, x]:.1f}", ha="center", va="center", fontsize=8)
            ax.set_xticks(range(len(seqs)), [str(s) for s in seqs])
            ax.set_yticks(range(len(batches)), [str(b) for b in batches])
            ax.set_title(f"{label}, r={r}", fontsize=10)
            if i == len(kinds) - 1:
                ax.set_xlabel("sequence length")
            if j == 0:
                ax.set_ylabel("batch size")
    if image is not None:
        fig.colorbar(image, ax=axes, label="slow-down vs no adapter (%)", shrink=0.8)
    fig.suptitle(title, fontsize=10)
    write_figure(path, lambda handle: fig.savefig(handle, format="png", dpi=120))
    plt.close(fig)
    return path


def write_latency_report(experiment: str, tables_dir: Path, figures_dir: Path, command: str,
                         store: RunStore | None = None) -> tuple[pd.DataFrame, Path, Path]:
    """CSV + markdown table and the heat map for an experiment; returns (frame, md path, png path)."""
    frame, info = collect(experiment, store)
    device_tag = experiment.removeprefix("latency_")
    figure = heatmap(frame, figures_dir / f"latency_heatmap_{device_tag}.png",
                     f"{info.get('model')} forward-pass slow-down vs base, {info.get('device_name')}, "
                     f"{info.get('num_threads')} threads, {info.get('dtype')}")
    markdown = to_markdown(frame, info, experiment, figure, command)
    write_table(tables_dir / experiment, frame.drop(columns=["times_ms"]), markdown)
    md = tables_dir / f"{experiment}.md"
    return frame, md, figure
