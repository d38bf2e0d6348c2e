"""NLG tables (paper Tables 3, 13, 14) from the results store, the paper's rows beside ours.

One row per method: trainable parameters (ours exact, the paper's as printed) and each metric, the
mean over seeds (the paper's GPT-2 protocol: mean of 3) ± std when there are several, then sample
generations of the LoRA run so a reader sees what the numbers mean.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lora_repro.paths import REPO_ROOT
from lora_repro.report.common import column, completed_runs, hardware_text, stale_text, wall_text, write_table
from lora_repro.store import RunStore

PAPER_CSV = REPO_ROOT / "results" / "paper" / "nlg_tables.csv"
# (metric, factor to the paper's printed scale)
METRICS: dict[str, list[tuple[str, float]]] = {
    "e2e": [("BLEU", 100), ("NIST", 1), ("METEOR", 100), ("ROUGE_L", 100), ("CIDEr", 1)],
    "webnlg": [("unseen_BLEU", 1), ("seen_BLEU", 1), ("BLEU", 1), ("METEOR", 1), ("TER", 1)],
    "dart": [("BLEU", 1), ("METEOR", 1), ("TER", 1)],
}
SAMPLES_SHOWN = 3


def collect(experiment: str, store: RunStore | None = None, keys: set[str] | None = None) -> pd.DataFrame:
    """One row per completed run: the numeric `best` metrics under their own names, samples, counts, wall time."""
    runs = completed_runs(experiment, store, keys)
    if runs.empty:
        return runs
    metrics = {name: name.removeprefix("best.") for name in runs.columns
               if name.startswith("best.") and name.count(".") == 1 and pd.api.types.is_numeric_dtype(runs[name])}
    runs = runs.rename(columns={**metrics, "params.trainable": "trainable", "best.decoded_inputs": "decoded_inputs"})
    runs["samples"] = column(runs, "best.samples").map(lambda samples: samples if isinstance(samples, list) else [])
    return runs


def _fmt(values: pd.Series, factor: float) -> str:
    values = values.dropna() * factor
    if values.empty:
        return "–"
    digits = 2 if factor == 1 and values.abs().max() < 20 else 1
    text = f"{values.mean():.{digits}f}"
    return text + (f"±{values.std():.{digits}f}" if len(values) > 1 else "")


def write_nlg_table(experiment: str, dataset: str, methods: list[str], paper_model: str, notes: list[str],
                    out_dir: Path, wall_s: float | None = None, store: RunStore | None = None,
                    keys: set[str] | None = None) -> pd.DataFrame:
    """Write <out_dir>/<name>.md and .csv; `keys` restricts the table to one protocol's runs."""
    runs = collect(experiment, store, keys)
    if runs.empty:
        raise ValueError(f"the store holds no completed runs for experiment {experiment!r}; run it first")
    paper = pd.read_csv(PAPER_CSV)
    paper = paper[(paper.dataset == dataset) & (paper.model == paper_model)]
    metrics = METRICS[dataset]
    header = "| method | params (paper) | " + " | ".join(f"{m} (paper)" for m, _ in metrics) + " |"
    lines = [header, "|" + "---|" * (len(metrics) + 2)]
    summary = []
    for method in methods:
        mine = runs[runs.method == method]
        ref = paper[paper.method == method].set_index("metric")
        params = f"{int(mine.trainable.median()):,}" if not mine.empty else "–"
        params += f" ({ref.params_printed.iloc[0]})" if not ref.empty else ""
        cells = []
        row = {"method": method, "trainable": None if mine.empty else int(mine.trainable.median()), "seeds": len(mine)}
        for metric, factor in metrics:
            ours = _fmt(mine[metric], factor) if metric in mine else "–"
            row[metric] = None if metric not in mine or mine.empty else float(mine[metric].mean() * factor)
            cells.append(ours + (f" ({ref.loc[metric, 'value']:g})" if metric in ref.index else ""))
        lines.append(f"| {method} | {params} | " + " | ".join(cells) + " |")
        summary.append(row)
    model = ", ".join(sorted(runs.model.unique()))
    seeds = int(runs.groupby("method").seed.nunique().max())
    caption = [
        f"# {dataset.upper()} test, {experiment}: model {model}, scale {', '.join(sorted(runs.scale.unique()))}",
        "",
        f"Ours, with the paper's {paper_model} row in parentheses (the paper's model differs from ours at this scale). "
        f"{'Mean ± std of ' + str(seeds) + ' seeds.' if seeds > 1 else 'One seed.'} "
        f"Decoded once per unique test input ({int(runs.decoded_inputs.max())} inputs). "
        f"`params`: trainable parameters (ours exact; the paper's as printed). "
        + wall_text(runs)
        + (f", this call {wall_s / 60:.1f} min" if wall_s else "")
        + f"; {hardware_text(runs)}.",
        "",
        *([stale, ""] if (stale := stale_text(runs, f"reproduce-{dataset}")) else []),
        *[f"- {note}" for note in notes],
        "",
    ]
    samples = runs[runs.method == "lora"].samples
    tail = []
    if len(samples) and samples.iloc[0]:
        tail = ["", "Sample generations (LoRA, seed 0):", ""]
        for sample in samples.iloc[0][:SAMPLES_SHOWN]:
            tail += [f"- input: `{sample['input']}`", f"  - ours: {sample['output']}",
                     f"  - reference: {sample['reference']}"]
    write_table(out_dir / f"{dataset}_{experiment}", pd.DataFrame(summary), "\n".join(caption + lines + tail) + "\n")
    return pd.DataFrame(summary)
