"""The GLUE table (paper Table 2) from the results store, with the paper's numbers beside ours.

One row per method: trainable parameters without and with the head, one column per task (the
paper's headline metric x 100: accuracy, CoLA Matthews, STS-B Pearson, MNLI pooled m+mm) and the
average. With several seeds a cell is the median of each run's best epoch, ± half the range. A cell
whose runs started from the method's weights on another task (`train.init_from_task`, the paper's
MNLI trick) is marked with INIT_MARK and the caption names the source.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lora_repro.metrics.glue import headline
from lora_repro.paths import REPO_ROOT
from lora_repro.report.common import column, completed_runs, hardware_text, stale_text, wall_text, write_table
from lora_repro.store import RunStore

PAPER_CSV = REPO_ROOT / "results" / "paper" / "glue_table2.csv"
INIT_MARK = "‡"
TASK_ORDER = ("mnli", "sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb")


def collect(experiment: str, store: RunStore | None = None, keys: set[str] | None = None) -> pd.DataFrame:
    """One row per completed run: method, task, seed, headline score x 100, counts, wall time, hardware."""
    runs = completed_runs(experiment, store, keys)
    if runs.empty:
        return runs
    runs["score"] = runs.apply(lambda row: 100 * row[f"best.{headline(row.task)}"], axis=1)
    runs["init_from"] = column(runs, "config.train.init_from_task")
    return runs.rename(columns={"params.trainable": "trainable", "params.trainable_with_head": "trainable_with_head"})


def summarise(runs: pd.DataFrame, methods: list[str], tasks: list[str]) -> pd.DataFrame:
    """Median and half-range over seeds per method x task, plus the average over tasks."""
    out = []
    for method in methods:
        mine = runs[runs.method == method]
        row: dict = {"method": method}
        if not mine.empty:
            row["trainable"] = int(mine.trainable.median())
            row["trainable_with_head"] = int(mine.trainable_with_head.median())
        for task in tasks:
            scores = mine[mine.task == task].score
            row[task] = scores.median() if len(scores) else float("nan")
            row[f"{task}_spread"] = (scores.max() - scores.min()) / 2 if len(scores) > 1 else float("nan")
            row[f"{task}_seeds"] = len(scores)
            sources = mine[mine.task == task].init_from.dropna().unique()
            row[f"{task}_init"] = ",".join(sorted(sources))  # "" when every run started from pretrained
        row["avg"] = pd.Series([row[t] for t in tasks]).mean(skipna=False)
        out.append(row)
    return pd.DataFrame(out)


def _cell(value: float, spread: float, paper: float | None, init: str = "") -> str:
    if pd.isna(value):
        return "–"
    text = f"{value:.1f}" + (f"±{spread:.1f}" if not pd.isna(spread) else "")
    text += INIT_MARK if init else ""
    return text + (f" ({paper:.1f})" if paper is not None and not pd.isna(paper) else "")


def to_markdown(summary: pd.DataFrame, tasks: list[str], paper_protocol: str, caption: str) -> str:
    paper = pd.read_csv(PAPER_CSV)
    paper = paper[paper.paper_protocol == paper_protocol].set_index("method")
    head = "| method | params | params with head | " + " | ".join(t.upper() for t in tasks) + " | Avg |"
    lines = [caption, "", head, "|" + "---|" * (len(tasks) + 4)]
    for row in summary.itertuples(index=False):
        r = row._asdict()
        ref = paper.loc[r["method"]] if r["method"] in paper.index else None
        cells = [_cell(r[t], r[f"{t}_spread"], None if ref is None else ref[t], r[f"{t}_init"]) for t in tasks]
        paper_avg = None if ref is None else pd.Series([ref[t] for t in tasks]).mean()
        params = f"{r.get('trainable', 0):,}" + (f" ({ref['params_printed']})" if ref is not None else "")
        lines.append(f"| {r['method']} | {params} | {r.get('trainable_with_head', 0):,} | " + " | ".join(cells)
                     + f" | {_cell(r['avg'], float('nan'), paper_avg)} |")
    return "\n".join(lines) + "\n"


def init_text(summary: pd.DataFrame, tasks: list[str]) -> str:
    """The caption's sentence on which cells started from another task's weights (empty if none)."""
    started = [f"{row['method']} {task.upper()} from {row[f'{task}_init'].upper()}"
               for row in summary.to_dict("records") for task in tasks if row[f"{task}_init"]]
    if not started:
        return ""
    return (f"{INIT_MARK}: the method weights start from the same method's run on another task (the paper's "
            f"MNLI initialisation of LoRA for MRPC, RTE, STS-B): {'; '.join(started)}. ")


def write_glue_table(experiment: str, methods: list[str], tasks: list[str], paper_protocol: str,
                     out_dir: Path, wall_s: float | None = None, store: RunStore | None = None,
                     keys: set[str] | None = None) -> pd.DataFrame:
    """Write <out_dir>/<name>.md and .csv; `keys` restricts the table to one protocol's runs."""
    runs = collect(experiment, store, keys)
    if runs.empty:
        raise ValueError(f"the store holds no completed runs for experiment {experiment!r}; run it first")
    tasks = [t for t in TASK_ORDER if t in tasks]
    summary = summarise(runs, methods, tasks)
    models = ", ".join(sorted(runs.model.unique()))
    scales = ", ".join(sorted(runs.scale.unique()))
    seeds = int(runs.groupby(["method", "task"]).seed.nunique().max())
    caption = (
        f"# GLUE dev, {experiment}: model {models}, scale {scales}\n\n"
        f"Ours (paper's {paper_protocol} row in parentheses; the paper's model differs from ours at this scale). "
        f"Headline metric x 100 of each run's best epoch: accuracy; CoLA Matthews corr.; STS-B Pearson. "
        f"{'Median of ' + str(seeds) + ' seeds ± half-range.' if seeds > 1 else 'One seed.'} "
        f"`params`: trainable without the head (the paper's count; the paper's in parentheses), "
        f"`with head`: including the classifier (and BERT's pooler). Avg over the tasks shown (the paper's avg "
        f"recomputed over the same tasks). "
        + init_text(summary, tasks)
        + wall_text(runs)
        + (f"; this call {wall_s / 60:.1f} min" if wall_s else "")
        + f"; {hardware_text(runs)}. Regenerate: `make reproduce-glue`."
    )
    stale = stale_text(runs, "reproduce-glue")
    caption += f"\n\n{stale}" if stale else ""
    write_table(out_dir / f"glue_{experiment}", summary, to_markdown(summary, tasks, paper_protocol, caption))
    return summary
