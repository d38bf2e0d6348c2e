"""Sweep reports: one experiment's records, grouped by every swept key, seeds aggregated, the
paper's numbers for the same shape beside ours (Tables 5, 6, 15, 18).

A key is swept when its config column varies within the experiment; `seed` is aggregated over,
never grouped by, and a method's name alone never makes a row (a rank sweep has one row per r).
The kind of sweep follows from what varies: the method (budget, Figure 2), the adapted weight
types (Table 5), or the rank (Table 6 on GLUE, Table 18 on E2E).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lora_repro.paths import REPO_ROOT
from lora_repro.store import load_dataframe

PAPER_CSV = REPO_ROOT / "results" / "paper" / "sweep_tables.csv"
SEED = "config.seed"
METHOD_NAME = "config.method.name"
# Columns that vary between runs without being a swept setting.
NOT_SWEPT = {SEED, "config.force", "config.output_dir", "config.experiment_name", "config.method.label"}
STATS = ("mean", "median", "std", "min", "max", "count")


class SweepInputError(ValueError):
    """The experiment has no completed runs or no metric to report; the message says what to run."""


@dataclass
class Sweep:
    """One experiment's runs (one row per record) and the keys that define its points."""

    name: str
    runs: pd.DataFrame
    swept: list[str]
    metric: str
    kind: str

    @property
    def stem(self) -> str:
        """File name stem of its tables and figures: the experiment name, prefixed with sweep_ if it lacks it."""
        return self.name if self.name.startswith("sweep") else f"sweep_{self.name}"

    @property
    def points(self) -> pd.DataFrame:
        return aggregate(self.runs, self.swept, self.metric)


def _hashable(value):
    return "+".join(map(str, value)) if isinstance(value, list) else value


def swept_keys(runs: pd.DataFrame) -> list[str]:
    """Config columns whose value differs between runs (lists compared as 'q+v'), seed excluded.

    A setting counts when it varies within one method: a budget sweep's per-method learning rate or
    LoRA alpha, the same for every run of that method, is part of the method, not swept. A column
    outside the method config that splits the runs exactly as a kept one does (a sweep's helper key
    that the method reads) is left out.
    """
    columns = sorted((c for c in runs.columns if c.startswith("config.") and c not in NOT_SWEPT),
                     key=lambda c: (c != METHOD_NAME, not c.startswith("config.method."), c))
    keys, partitions = [], set()
    for column in columns:
        values = runs[column].map(_hashable)
        codes = tuple(pd.factorize(values, use_na_sentinel=False)[0])
        varies = values.nunique(dropna=False) > 1 if column == METHOD_NAME else \
            values.groupby(runs[METHOD_NAME]).nunique(dropna=False).max() > 1
        if varies and (column.startswith("config.method.") or codes not in partitions):
            keys.append(column)
            partitions.add(codes)
    return keys


def headline_metric(runs: pd.DataFrame) -> str:
    """GLUE's headline metric of the task (accuracy, Matthews, Pearson), BLEU for NLG."""
    from lora_repro.metrics.glue import headline

    tasks = runs["task"].unique()
    if len(tasks) != 1:
        raise SweepInputError(f"a sweep report covers one task; the experiment holds {sorted(tasks)}")
    if runs["config.task.kind"].iloc[0] == "glue":
        return f"best.{headline(tasks[0])}"
    return "best.BLEU"


def sweep_kind(swept: list[str]) -> str:
    if METHOD_NAME in swept:
        return "budget"
    if "config.method.targets" in swept:
        return "targets"
    return "rank"


def load_sweep(name: str, root: str | Path | None = None, metric: str | None = None) -> Sweep:
    """The completed runs of experiment `name` and what was swept in it."""
    frame = load_dataframe(root, name)
    if frame.empty or not (frame["status"] == "completed").any():
        raise SweepInputError(f"the store has no completed runs of experiment {name!r}; "
                              f"run `make sweep-...` (or experiments.run -m +experiment={name}) first")
    runs = frame[frame["status"] == "completed"].reset_index(drop=True)
    metric = metric or headline_metric(runs)
    if metric not in runs:
        raise SweepInputError(f"metric {metric!r} is not in the records of {name!r}; choose one of "
                              f"{sorted(c for c in runs.columns if c.startswith('best.'))}")
    runs[metric] = runs[metric] * 100  # fractions -> the paper's percentages
    for column in runs.columns:
        if column.startswith("config."):
            runs[column] = runs[column].map(_hashable)
    swept = swept_keys(runs)
    return Sweep(name, runs, swept, metric, sweep_kind(swept))


def aggregate(runs: pd.DataFrame, swept: list[str], metric: str) -> pd.DataFrame:
    """One row per point (every swept key but the seed): metric mean/median/std/min/max over seeds, n,
    trainable parameters and summed machine time."""
    keys = [key for key in swept if key != SEED] or ["method"]
    grouped = runs.groupby(keys, dropna=False, sort=True)
    table = grouped[metric].agg(list(STATS)).rename(columns={"count": "n"})
    table["trainable"] = grouped["params.trainable"].median().astype("int64")
    table["wall_s"] = grouped["timing.wall_s"].sum()
    table = table.reset_index()
    table.insert(0, "point", [point_label(row, keys) for _, row in table.iterrows()])
    if METHOD_NAME in keys:  # budget: each method's sizes in order
        table = table.sort_values([METHOD_NAME, "trainable"], kind="stable")
    elif "config.method.r" in keys and pd.api.types.is_numeric_dtype(table["config.method.r"]):
        table = table.sort_values(["config.method.r", *[k for k in keys if k != "config.method.r"]], kind="stable")
    return table.reset_index(drop=True)


def point_label(row: pd.Series, keys: list[str]) -> str:
    """e.g. 'lora r=4 targets=q+v': the short names of the swept keys with their values."""
    parts = []
    for key in keys:
        value = row[key]
        if pd.isna(value) if not isinstance(value, str) else False:
            continue
        short = key.rpartition(".")[2]
        parts.append(str(value) if short == "name" else f"{short}={_plain(value)}")
    return " ".join(parts)


def _plain(value) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def paper_rows(sweep: Sweep) -> pd.DataFrame:
    """The paper's numbers of the same shape: Table 5 (targets), 6 (rank, GLUE), 18 (rank, E2E), 15 (budget)."""
    paper = pd.read_csv(PAPER_CSV)
    nlg = sweep.runs["config.task.kind"].iloc[0] != "glue"
    wanted = {"targets": "sweep_targets", "budget": "sweep_budget", "rank": "sweep_rank_e2e" if nlg else "sweep_rank"}
    return paper[paper["sweep"] == wanted[sweep.kind]].drop(columns=["sweep"]).reset_index(drop=True)


def caption(sweep: Sweep) -> str:
    """Model, scale, seeds, machine time and hardware, all read from the records."""
    runs = sweep.runs
    hardware = runs.get("env.hardware.cuda_device")
    device = next((d for d in (hardware if hardware is not None else []) if isinstance(d, str)), None)
    cpus = sorted({int(c) for c in runs.get("env.hardware.cpu_count", pd.Series(dtype=float)).dropna()})
    machine = device or f"CPU ({'/'.join(map(str, cpus)) or '?'} cores, {runs['env.hardware.machine'].iloc[0]})"
    seeds = sorted(int(s) for s in runs[SEED].unique())
    listed = {column: ", ".join(sorted(runs[column].unique())) for column in ("model", "task", "scale")}
    swept = ", ".join(k.removeprefix("config.") for k in sweep.swept)
    return (f"Sweep {sweep.name}: {listed['model']} on {listed['task']}, scale {listed['scale']}, seeds {seeds}, "
            f"{len(runs)} runs; swept {swept}; metric {sweep.metric.removeprefix('best.')} x 100 over seeds "
            f"(mean, median, std, min, max); machine time (sum of run wall times) "
            f"{runs['timing.wall_s'].sum() / 60:.1f} min on {machine}.")


def markdown(sweep: Sweep) -> str:
    points = sweep.points
    shown = points[["point", *STATS[:-1], "n", "trainable", "wall_s"]].rename(columns={"wall_s": "machine s"})
    lines = [f"# {sweep.name}", "", caption(sweep), "", shown.to_markdown(index=False, floatfmt=".2f"), ""]
    paper = paper_rows(sweep)
    if not paper.empty:
        source = "; ".join(paper["source"].unique())
        lines += ["## The paper's numbers for the same shape", "", f"Source: {source}.", "",
                  paper.drop(columns=["source"]).dropna(axis=1, how="all").to_markdown(index=False), ""]
    return "\n".join(lines)


def write_tables(sweep: Sweep, out_dir: Path) -> dict[str, Path]:
    """results/tables/<stem>.md and .csv (the aggregated points)."""
    from lora_repro.io import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / f"{sweep.stem}.md", "csv": out_dir / f"{sweep.stem}.csv"}
    atomic_write_text(paths["md"], markdown(sweep))
    atomic_write_text(paths["csv"], sweep.points.to_csv(index=False, float_format="%.4f"))
    return paths
