"""What the notebooks (notebooks/*.ipynb) show of the protocols' results, read from the store only.

A notebook stays a list of calls: this module finds a protocol's current runs (the record keys its
table uses, so records of earlier protocol versions in the same folder drop out, as in the tables),
summarises them with the reports' own functions (lora_repro.report) and draws the figures the
reports do not (per-task GLUE scores, NLG metrics beside the paper's, training cost per method).
The scale is `cpu` unless $LORA_REPRO_NOTEBOOK_SCALE says otherwise (the tests use `smoke`); the
store is results_dir() ($LORA_REPRO_RESULTS).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lora_repro.report.common import write_figure

SCALE_ENV = "LORA_REPRO_NOTEBOOK_SCALE"
NLG_DATASETS = ("e2e", "webnlg", "dart")


def notebook_scale() -> str:
    """The protocols' scale the notebooks read: `cpu` (the committed store) unless $LORA_REPRO_NOTEBOOK_SCALE."""
    return os.environ.get(SCALE_ENV, "cpu")


_SCRATCH: list[tempfile.TemporaryDirectory] = []


def scratch_dir() -> Path:
    """A folder for the figures a notebook draws and shows inline (removed when the kernel exits), so a
    notebook never writes into results/."""
    if not _SCRATCH:
        _SCRATCH.append(tempfile.TemporaryDirectory(prefix="lora-repro-notebook-"))
    return Path(_SCRATCH[0].name)


def shown(path: Path) -> Path:
    """A path as a notebook prints it: relative to the checkout when inside it, so saved outputs name no machine."""
    from lora_repro.paths import REPO_ROOT

    path = Path(path).resolve()
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


def describe_store() -> str:
    """One line for a notebook's first output: which store and scale it reads."""
    from lora_repro.paths import results_dir

    return (f"results store: {shown(results_dir())}/ ($LORA_REPRO_RESULTS), protocols at scale "
            f"{notebook_scale()!r} (${SCALE_ENV})")


@dataclass
class Protocol:
    """A protocol (conf/experiment/<dataset>_<scale>.yaml): its experiment name, composed config, run keys."""

    name: str
    config: dict
    keys: set[str]

    @property
    def spec(self) -> dict:
        return self.config["protocol"]


def protocol(dataset: str, scale: str | None = None) -> Protocol:
    """The protocol `<dataset>_<scale>` and the keys of its current (method, task, seed) runs."""
    from omegaconf import OmegaConf

    from lora_repro.config import compose_config
    from lora_repro.protocol import protocol_keys

    overrides = [f"+experiment={dataset}_{scale or notebook_scale()}"]
    config = OmegaConf.to_container(compose_config(overrides), resolve=True)
    spec = config["protocol"]
    return Protocol(config["experiment_name"], config, protocol_keys(overrides, spec, spec["seeds"]))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    write_figure(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    plt.close(fig)
    return path


def _panels(count: int, width: float = 3.2, height: float = 3.0):
    fig, axes = plt.subplots(1, count, figsize=(width * count, height), squeeze=False)
    return fig, list(axes[0])


@dataclass
class GlueResults:
    protocol: Protocol
    runs: pd.DataFrame      # one row per run (report.glue.collect)
    summary: pd.DataFrame   # one row per method (report.glue.summarise)
    tasks: list[str]
    markdown: str           # the GLUE table as report.glue prints it, the paper's row beside ours


def glue_results(scale: str | None = None) -> GlueResults:
    """The GLUE protocol's table from its current runs (what `make table-glue` writes, from the store)."""
    from lora_repro.report.glue import TASK_ORDER, collect, summarise, to_markdown

    glue = protocol("glue", scale)
    runs = collect(glue.name, keys=glue.keys)
    if runs.empty:
        raise ValueError(f"the store ({_store()}) holds no runs of protocol {glue.name}; run `make reproduce-glue`")
    tasks = [t for t in TASK_ORDER if t in glue.spec["tasks"]]
    methods = [m for m in glue.spec["methods"] if m in set(runs.method)]
    summary = summarise(runs, methods, tasks)
    models = ", ".join(sorted(runs.model.unique()))
    caption = (f"GLUE dev, {glue.name} ({models}, {len(runs)} runs): headline metric x 100 of each run's best "
               f"epoch, the paper's {glue.config['paper_protocol']} row in parentheses.")
    return GlueResults(glue, runs, summary, tasks, to_markdown(summary, tasks, glue.config["paper_protocol"], caption))


def _store() -> Path:
    from lora_repro.paths import results_dir

    return shown(results_dir())


def glue_task_figure(results: GlueResults, path: Path) -> Path:
    """One panel per task: each method's score (bar: median over seeds, dots: seeds), the paper's as a cross."""
    from lora_repro.report.glue import PAPER_CSV

    paper = pd.read_csv(PAPER_CSV)
    paper = paper[paper.paper_protocol == results.protocol.config["paper_protocol"]].set_index("method")
    methods = list(results.summary.method)
    fig, axes = _panels(len(results.tasks))
    x = np.arange(len(methods))
    for ax, task in zip(axes, results.tasks, strict=True):
        ax.bar(x, results.summary[task], color="tab:blue", alpha=0.6)
        for i, method in enumerate(methods):
            seeds = results.runs[(results.runs.method == method) & (results.runs.task == task)].score
            ax.scatter([i] * len(seeds), seeds, s=10, color="black", zorder=3)
            if method in paper.index:
                ax.scatter([i], [paper.loc[method, task]], marker="x", color="tab:red", zorder=3)
        ax.set_xticks(x, methods, rotation=60, fontsize=7)
        ax.set_title(task.upper(), fontsize=9)
        ax.set_ylim(min(0.0, float(results.runs[results.runs.task == task].score.min())), 100)
    axes[0].set_ylabel("headline metric x 100 (x: paper)")
    return _save(fig, path)


@dataclass
class NLGResults:
    protocol: Protocol
    runs: pd.DataFrame     # report.nlg.collect: one row per run
    table: pd.DataFrame    # one row per method: trainable, seeds, each metric (mean, paper scale) and the paper's


def nlg_results(dataset: str, scale: str | None = None) -> NLGResults:
    """One NLG protocol's metrics per method (mean over seeds, on the paper's printed scale) beside the paper's."""
    from lora_repro.report.nlg import METRICS, PAPER_CSV, collect

    nlg = protocol(dataset, scale)
    runs = collect(nlg.name, keys=nlg.keys)
    if runs.empty:
        raise ValueError(f"the store ({_store()}) holds no runs of protocol {nlg.name}; run `make reproduce-{dataset}`")
    paper = pd.read_csv(PAPER_CSV)
    paper = paper[(paper.dataset == dataset) & (paper.model == nlg.config["paper_protocol"])]
    rows = []
    for method in [m for m in nlg.spec["methods"] if m in set(runs.method)]:
        mine = runs[runs.method == method]
        row = {"method": method, "trainable": int(mine.trainable.median()), "seeds": len(mine)}
        for metric, factor in METRICS[dataset]:
            row[metric] = float(mine[metric].mean() * factor) if metric in mine else np.nan
            ref = paper[(paper.method == method) & (paper.metric == metric)].value
            row[f"{metric} (paper)"] = float(ref.iloc[0]) if len(ref) else np.nan
        rows.append(row)
    return NLGResults(nlg, runs, pd.DataFrame(rows))


def nlg_samples(results: NLGResults) -> pd.DataFrame:
    """The generations every record keeps (tasks.nlg SAMPLES_KEPT), one row per input: its reference and
    each method's output side by side (seed 0, or the lowest seed a method has)."""
    columns = []
    for method, runs in results.runs.sort_values("seed").groupby("method", sort=False):
        samples = pd.DataFrame(runs.samples.iloc[0])
        if not samples.empty:
            columns.append(samples.set_index("input").rename(columns={"output": method}))
    if not columns:
        return pd.DataFrame(columns=["input", "reference"])
    joined = columns[0][["reference"]].join([frame.drop(columns="reference") for frame in columns], how="outer")
    order = [m for m in results.protocol.spec["methods"] if m in joined]
    return joined[["reference", *order]].reset_index()


def nlg_figure(results: NLGResults, path: Path) -> Path:
    """One panel per metric: ours per method beside the paper's value for the same method (where printed)."""
    metrics = [c for c in results.table.columns if f"{c} (paper)" in results.table.columns]
    fig, axes = _panels(len(metrics), width=2.8)
    x = np.arange(len(results.table))
    for ax, metric in zip(axes, metrics, strict=True):
        ax.bar(x - 0.2, results.table[metric], width=0.4, label="ours")
        ax.bar(x + 0.2, results.table[f"{metric} (paper)"], width=0.4, label="paper")
        ax.set_xticks(x, results.table.method, rotation=60, fontsize=7)
        ax.set_title(metric, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{results.protocol.name}: ours vs the paper's {results.protocol.config['paper_protocol']}",
                 fontsize=9)
    return _save(fig, path)


COST_COLUMNS = {"state_mib": "weights+grads+Adam MiB", "samples_per_s": "train samples/s",
                "tokens_per_s": "train tokens/s", "added_mib": "added peak memory MiB",
                "checkpoint_mib": "checkpoint MiB"}


def training_cost(dataset: str, scale: str | None = None) -> pd.DataFrame:
    """Per method, the median over the protocol's runs of memory, throughput and checkpoint size
    (report.efficiency's numbers, for any protocol: GLUE or NLG)."""
    from lora_repro.report.efficiency import collect

    spec = protocol(dataset, scale)
    runs = collect(spec.name, keys=spec.keys)
    if runs.empty:
        raise ValueError(f"the store ({_store()}) holds no runs of protocol {spec.name}")
    order = [m for m in spec.spec["methods"] if m in set(runs.method)]
    return runs.groupby("method")[list(COST_COLUMNS)].median().reindex(order)


def cost_figure(cost: pd.DataFrame, title: str, path: Path) -> Path:
    """Bars per method for each training cost (log scale where the methods span orders of magnitude)."""
    fig, axes = _panels(len(COST_COLUMNS), width=2.8)
    for ax, (column, label) in zip(axes, COST_COLUMNS.items(), strict=True):
        values = cost[column].astype(float)
        ax.bar(range(len(values)), values, color="tab:green", alpha=0.7)
        positive = values[values > 0]
        if len(positive) and positive.max() / positive.min() > 30:
            ax.set_yscale("log")
        ax.set_xticks(range(len(values)), cost.index, rotation=60, fontsize=7)
        ax.set_title(label, fontsize=9)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def latency_experiment(scale: str | None = None) -> str:
    """The CPU latency grid's experiment for the scale (`latency_cpu`, `latency_cpu_smoke`)."""
    import torch

    from lora_repro.bench.latency import experiment_name

    return experiment_name(torch.device("cpu"), scale or notebook_scale())
