"""The rank sweep's saved runs, analysed as in the paper's Sec. 7: φ heat maps (Figures 3, 4, 6, 7),
the ΔW-vs-W table (Table 7) and Figure 8, written beside the sweep table.

Which runs: r=8 against r=64 (or the sweep's smallest and largest r) with the same seed and with
different seeds, and r=64 of two seeds; each φ of trained matrices is shown beside φ of the same
runs' initial matrices (runs of one seed share their first draws) and a random Gaussian control.
Table 7 takes W_q of the middle layer (the paper: layer 48 of 96) at r=4 and r=64 of the first seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lora_repro.analysis import plots
from lora_repro.analysis.amplification import amplification_row, base_weight, delta_weight, w_delta_similarity
from lora_repro.analysis.subspace import (
    Factors,
    initial_factors,
    layer_phi,
    phi_grid,
    random_like,
    trained_factors,
)
from lora_repro.analysis.sweep import SEED, Sweep, SweepInputError, load_sweep
from lora_repro.checkpoints import record_weights
from lora_repro.paths import results_dir
from lora_repro.store import RunStore

TARGETS = ("q", "v")


@dataclass
class LowRankReport:
    """What the analysis found: φ summaries per layer, the Table 7 rows, the figures it drew."""

    phi_summary: pd.DataFrame
    amplification: pd.DataFrame
    figures: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _pick_rank(ranks: list[int], wanted: int, fallback) -> int:
    return wanted if wanted in ranks else fallback(ranks)


class _Runs:
    """The sweep's records by (r, seed), with their trained and initial factors loaded once."""

    def __init__(self, sweep: Sweep, root: str | Path | None):
        records = {r["key"]: r for r in RunStore(root).records(sweep.name)}
        lora = sweep.runs[sweep.runs["config.method.name"] == "lora"]
        self.by_point = {(int(row["config.method.r"]), int(row[SEED])): records[row["key"]]
                         for _, row in lora.sort_values("created_at").iterrows()}
        self._cache: dict[tuple, Factors] = {}

    def factors(self, r: int, seed: int, initial: bool = False) -> Factors:
        key = (r, seed, initial)
        if key not in self._cache:
            record = self.by_point[(r, seed)]
            self._cache[key] = initial_factors(record) if initial else trained_factors(record)
        return self._cache[key]

    def seeds(self, r: int) -> list[int]:
        return sorted(seed for rank, seed in self.by_point if rank == r)


def _phi_panels(runs: _Runs, low: int, high: int, layer: int, target: str) -> tuple[dict, dict]:
    """(r_low vs r_high panels, seed vs seed panels) for one layer and target."""
    seeds = runs.seeds(high)
    first = seeds[0]
    rank_panels = {}
    if first in runs.seeds(low):
        for initial, what in ((False, "trained"), (True, "initial")):
            rank_panels[f"r={low} vs r={high}, seed {first} ({what})"] = layer_phi(
                runs.factors(low, first, initial), runs.factors(high, first, initial), layer, target)
    seed_panels = {}
    if len(seeds) > 1:
        other = seeds[1]
        if first in runs.seeds(low):
            rank_panels[f"r={low} s{first} vs r={high} s{other} (trained)"] = layer_phi(
                runs.factors(low, first), runs.factors(high, other), layer, target)
        for initial, what in ((False, "trained"), (True, "initial")):
            seed_panels[f"r={high}: seed {first} vs {other} ({what})"] = layer_phi(
                runs.factors(high, first, initial), runs.factors(high, other, initial), layer, target)
        a_shape = runs.factors(high, first)[(layer, target)]["A"]
        seed_panels["random Gaussian control"] = phi_grid(random_like(a_shape, 0), random_like(a_shape, 1))
    return rank_panels, seed_panels


Panels = dict[tuple[int, str], tuple[dict, dict]]  # (layer, target) -> (rank panels, seed panels)


def comparison_kind(name: str) -> str:
    """What a panel named by _phi_panels compares: 'rank, same seed', 'rank, different seeds' or 'seeds',
    each ', trained' or ', initial'; or 'random control'. The observations are judged on these kinds."""
    if name.startswith("random"):
        return "random control"
    state = "initial" if name.endswith("(initial)") else "trained"
    if " vs r=" in name:
        return f"rank, {'same seed' if ', seed ' in name else 'different seeds'}, {state}"
    return f"seeds, {state}"


def _summary_rows(panels: Panels, low: int, high: int) -> list[dict]:
    """φ at i = j = 1 and the mean over the i <= r_low, j <= r_low block, for every layer and target."""
    rows = []
    for (layer, target), (rank_panels, seed_panels) in sorted(panels.items()):
        for name, grid in {**rank_panels, **seed_panels}.items():
            rows.append({"layer": layer, "target": target, "comparison": name, "kind": comparison_kind(name),
                         "r_low": low, "r_high": high, "phi_1_1": grid[0, 0],
                         "phi_mean_low_block": float(grid[:low, :low].mean())})
    return rows


def _layer_figures(panels: Panels, low: int, high: int, stem: str, out_dir: Path) -> dict[str, Path]:
    """Figures 6 and 7 analogues: the first trained comparison of each kind, one panel per layer."""
    figures = {}
    for target in TARGETS:
        for kind, index, rows, vmax in (("r", 0, low, 1.0), ("seeds", 1, high, 0.5)):
            per_layer = {f"layer {layer}: {next(iter(pair[index]))}": next(iter(pair[index].values()))[:rows]
                         for (layer, t), pair in sorted(panels.items()) if t == target and pair[index]}
            if per_layer:
                figures[f"phi_layers_{kind}_{target}"] = plots.heatmaps(
                    per_layer, out_dir / f"{stem}_phi_layers_{kind}_{target}.png",
                    f"φ per layer, ΔW_{target} (Figure {6 if kind == 'r' else 7} analogue)", vmax=vmax)
    return figures


def _amplification(runs: _Runs, ranks: list[int], layer: int, alpha_of: dict[int, float]) -> tuple[pd.DataFrame, dict]:
    """Table 7 rows for W_q of `layer` at each rank (first seed), and Figure 8's φ grids."""
    from lora_repro.analysis.subspace import rebuild_model

    seed = runs.seeds(ranks[0])[0]
    record = runs.by_point[(ranks[0], seed)]
    family = record["config"]["model"]["family"]
    weight = base_weight(rebuild_model(record["config"]).state_dict(), family, layer, "q")
    rows, grids = [], {}
    max_i = max(1, weight.shape[1] // 10)  # the top 10 % of W's directions (App. H.3)
    for r in ranks:
        delta = delta_weight(runs.factors(r, seed), layer, "q", alpha_of[r])
        rows.append({"layer": layer, "seed": seed, **amplification_row(weight, delta, r)})
        similarity = w_delta_similarity(weight, delta, r, max_i)
        grids[f"W_q vs ΔW_q, r={r}"] = similarity["delta"]
        grids[f"W_q vs random rank-{r}"] = similarity["random"]
    return pd.DataFrame(rows), grids


def analyse(sweep: Sweep, out_dir: Path, root: str | Path | None = None, low_r: int = 8, high_r: int = 64,
            table7_ranks: tuple[int, int] = (4, 64), layer: int | None = None) -> LowRankReport:
    """φ and Table 7 for a rank sweep's saved runs; figures under `out_dir`."""
    runs = _Runs(sweep, root)
    ranks = sorted({r for r, _ in runs.by_point})
    if len(ranks) < 2:
        raise ValueError(f"sweep {sweep.name!r} has LoRA runs at ranks {ranks}; φ needs two ranks")
    low, high = _pick_rank(ranks, low_r, min), _pick_rank(ranks, high_r, max)
    notes = [] if (low, high) == (low_r, high_r) else [f"r={low_r}/{high_r} not in the sweep: r={low}/{high} used"]
    factors = runs.factors(high, runs.seeds(high)[0])
    layers = sorted({layer for layer, _ in factors})
    layer = layers[len(layers) // 2] if layer is None else layer
    panels = {(each, target): _phi_panels(runs, low, high, each, target) for each in layers for target in TARGETS}
    report = LowRankReport(pd.DataFrame(_summary_rows(panels, low, high)), pd.DataFrame(), notes=notes)
    report.figures.update(_layer_figures(panels, low, high, sweep.stem, out_dir))
    for target in TARGETS:
        rank_panels, seed_panels = panels[(layer, target)]
        report.figures[f"phi_r{low}_r{high}_{target}"] = plots.heatmaps(
            {k: v[:low] for k, v in rank_panels.items()}, out_dir / f"{sweep.stem}_phi_r{low}_r{high}_{target}.png",
            f"φ(A_r={low}, A_r={high}, i, j), ΔW_{target}, layer {layer}")
        if seed_panels:
            report.figures[f"phi_seeds_{target}"] = plots.heatmaps(
                seed_panels, out_dir / f"{sweep.stem}_phi_seeds_{target}.png",
                f"φ(A_r={high} seed a, A_r={high} seed b, i, j), ΔW_{target}, layer {layer}", vmax=0.5)
    t7 = [_pick_rank(ranks, table7_ranks[0], min), _pick_rank(ranks, table7_ranks[1], max)]
    alpha_of = {r: float(runs.by_point[(r, runs.seeds(r)[0])]["config"]["method"].get("alpha") or r) for r in ranks}
    report.amplification, grids = _amplification(runs, sorted(set(t7)), layer, alpha_of)
    report.figures["w_vs_delta"] = plots.heatmaps(grids, out_dir / f"{sweep.stem}_w_vs_delta.png",
                                                  f"Figure 8 analogue: φ(W_q top-i, ΔW_q top-j), layer {layer}",
                                                  ylabel="i (W_q)", xlabel="j (ΔW_q)")
    return report


SECTIONS_START = "## ΔW against W"  # where the weight-based sections of a rank sweep's table begin


def markdown(report: LowRankReport) -> str:
    """The φ summary and Table 7 analogue as markdown, under the sweep table."""
    amp = report.amplification.rename(columns={"proj_delta": "‖UᵀWVᵀ‖ (ΔW)", "proj_W": "‖UᵀWVᵀ‖ (W)",
                                               "proj_random": "‖UᵀWVᵀ‖ (random)", "delta_norm": "‖ΔW‖_F",
                                               "W_norm": "‖W‖_F"})
    lines = [SECTIONS_START + " (Table 7 analogue; paper: 21.5 at r=4, 1.9 at r=64)", "",
             amp.round(4).to_markdown(index=False), "",
             "## Subspace similarity φ of the A matrices (Figures 3, 4, 6, 7 analogue)", "",
             report.phi_summary.to_markdown(index=False, floatfmt=".3f"), ""]
    return "\n".join(lines + [f"Note: {note}." for note in report.notes]) + "\n"


def summary_numbers(report: LowRankReport) -> dict[str, float]:
    """Headline numbers for captions and dashboards: mean φ(1,1) per comparison, amplification per r."""
    means = report.phi_summary.groupby("comparison")["phi_1_1"].mean()
    numbers = {f"phi_1_1/{name}": float(value) for name, value in means.items()}
    numbers.update({f"amplification/r={int(row.r)}": float(row.amplification)
                    for row in report.amplification.itertuples()})
    return {k: v for k, v in numbers.items() if np.isfinite(v)}


def table_paths(tables_dir: Path, stem: str) -> dict[str, Path]:
    """Where a rank sweep's φ summary and Table 7 analogue are kept as CSV (beside its table)."""
    return {"phi": tables_dir / f"{stem}_phi.csv", "table7": tables_dir / f"{stem}_table7.csv"}


def write_tables(report: LowRankReport, tables_dir: Path, stem: str) -> dict[str, Path]:
    """The φ summary and Table 7 as CSV, so the notebooks can show them where the weights are not on disk."""
    from lora_repro.io import atomic_write_text

    paths = table_paths(tables_dir, stem)
    atomic_write_text(paths["phi"], report.phi_summary.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(paths["table7"], report.amplification.to_csv(index=False, float_format="%.6g"))
    return paths


FIGURE_ORDER = ("phi_r", "phi_seeds", "phi_layers", "w_vs_delta")  # Figures 3, 4, 6/7, 8


def _ordered(figures: dict[str, Path]) -> dict[str, Path]:
    """The φ and Figure 8 heat maps in the paper's order (Figure 3, 4, 6/7, 8), others left out."""
    rank = {key: next((i for i, prefix in enumerate(FIGURE_ORDER) if key.startswith(prefix)), None) for key in figures}
    shown = sorted((key for key in figures if rank[key] is not None), key=lambda key: (rank[key], key))
    return {key: figures[key] for key in shown}


def missing_weights(sweep: Sweep, root: str | Path | None = None) -> list[str]:
    """Keys of the sweep's runs whose saved weights are not on this machine (a fresh clone has none)."""
    keys = set(sweep.runs["key"])
    return [r["key"] for r in RunStore(root).records(sweep.name) if r["key"] in keys and not _has_weights(r)]


@dataclass
class LowRankView:
    """φ and Table 7 of a rank sweep as a notebook shows them: computed now from the saved weights
    (source "weights"), else the sweep report's committed CSV and PNG files ("committed"), else nothing
    ("none"); `message` says in one line which, and why."""

    source: str
    message: str
    phi_summary: pd.DataFrame
    amplification: pd.DataFrame
    figures: dict[str, Path]


def view(name: str, figures_dir: Path, root: str | Path | None = None) -> LowRankView:
    """The rank sweep `name`'s φ and Table 7: from its weights when every run's are on disk, else committed."""
    try:
        sweep = load_sweep(name, root)
        missing = missing_weights(sweep, root)
    except SweepInputError as err:
        sweep, reason = None, str(err)
    if sweep is not None and not missing:
        report = analyse(sweep, figures_dir, root)
        return LowRankView("weights", f"{name}: φ and Table 7 computed from the saved weights of {len(sweep.runs)} "
                           "runs", report.phi_summary, report.amplification, _ordered(report.figures))
    if sweep is not None:
        reason = (f"{len(missing)} of {len(sweep.runs)} runs of {name} have no saved weights on disk (e.g. "
                  f"{missing[0]}; set LORA_REPRO_CACHE to the cache holding weights/{name}/)")
    return committed_view(name, root, reason)


def committed_view(name: str, root: str | Path | None, reason: str) -> LowRankView:
    """The φ summary, Table 7 and heat maps that `make table-sweep-...` wrote under the store's results."""
    from lora_repro.analysis.results import shown

    base = Path(root) if root is not None else results_dir()
    stem = name if name.startswith("sweep") else f"sweep_{name}"
    tables = table_paths(base / "tables", stem)
    figures = _ordered({path.stem.removeprefix(f"{stem}_"): path for path in (base / "figures").glob(f"{stem}_*.png")})
    if not all(path.is_file() for path in tables.values()):
        return LowRankView("none", f"{reason}; and no committed φ tables ({shown(tables['phi'])}): "
                           "run `make sweep-rank`", pd.DataFrame(), pd.DataFrame(), figures)
    return LowRankView("committed", f"{reason}; showing the committed outputs under {shown(base)}/",
                       pd.read_csv(tables["phi"]), pd.read_csv(tables["table7"]), figures)


def _has_weights(record: dict) -> bool:
    path = record_weights(record)
    return path is not None and path.is_file()
