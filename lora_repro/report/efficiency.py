"""What each method costs to train, from a protocol's records: peak memory, the bytes LoRA saves
(trainable weights, gradients, optimizer state), training throughput and checkpoint size, each
beside full fine-tuning (paper Sec. 4.2: memory, the 25% speed-up on GPT-3, 350 GB -> 35 MB).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lora_repro.report.common import column, completed_runs, write_table
from lora_repro.store import RunStore

MIB = 2**20


def collect(experiment: str, store: RunStore | None = None, keys: set[str] | None = None) -> pd.DataFrame:
    """One row per completed run: memory (CUDA peak allocated where there was one), throughput, checkpoint."""
    runs = completed_runs(experiment, store, keys)
    if runs.empty:
        return runs
    gpu_peak = pd.to_numeric(column(runs, "memory.peak_gpu_allocated_bytes")).where(lambda v: v > 0)
    rss_at_start = pd.to_numeric(column(runs, "memory.rss_at_start_bytes")).fillna(0)
    return pd.DataFrame({
        "method": runs.method, "task": runs.task,
        "peak_mib": gpu_peak.fillna(runs["memory.peak_rss_bytes"]) / MIB,
        "added_mib": gpu_peak.fillna(runs["memory.peak_rss_bytes"] - rss_at_start) / MIB,
        "state_mib": (runs["memory.trainable_param_bytes"] + runs["memory.grad_bytes"]
                      + runs["memory.optimizer_state_bytes"]) / MIB,
        "samples_per_s": column(runs, "timing.train_samples_per_s"),
        "tokens_per_s": column(runs, "timing.train_tokens_per_s"),
        "checkpoint_mib": pd.to_numeric(column(runs, "checkpoint.bytes")).fillna(0) / MIB,
        "full_model_mib": 4 * runs["params.total"] / MIB,
        "device": column(runs, "memory.device").fillna("cpu"),
    })


def write_efficiency_table(experiment: str, methods: list[str], out_dir: Path, store: RunStore | None = None,
                           keys: set[str] | None = None) -> pd.DataFrame:
    runs = collect(experiment, store, keys)
    if runs.empty:
        raise ValueError(f"no completed runs for experiment {experiment!r}")
    numbers = ["peak_mib", "added_mib", "state_mib", "samples_per_s", "tokens_per_s", "checkpoint_mib",
               "full_model_mib"]
    summary = runs.groupby("method")[numbers].median().reindex([m for m in methods if m in set(runs.method)])
    reference = summary.loc["full"] if "full" in summary.index else None
    lines = [
        f"# Training cost per method, {experiment}",
        "",
        "Median over the protocol's tasks of each run's numbers. `peak`: peak resident memory of the "
        "training process on CPU (CUDA: peak allocated); `added`: the run's own share on CPU (peak minus "
        "the resident memory when it started; runs share a process in a sweep, so `peak` also holds what "
        "earlier runs left allocated); `weights+grads+Adam`: bytes of the trainable "
        "parameters, their gradients and AdamW's two moments; `checkpoint`: the method-only state dict "
        "(method weights + head, fp32) against the full model's fp32 size. Ratios are against full "
        "fine-tuning in the same protocol (— where it has no full row).",
        "",
        "| method | peak MiB | added MiB | x full | weights+grads+Adam MiB | x full | train samples/s | x full "
        "| checkpoint MiB (full model) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, row in summary.iterrows():
        ratio = {name: "—" if reference is None else f"{row[name] / reference[name]:.2f}"
                 for name in ("added_mib", "state_mib", "samples_per_s")}
        lines.append(
            f"| {method} | {row.peak_mib:,.0f} | {row.added_mib:,.0f} | {ratio['added_mib']} | {row.state_mib:,.1f} "
            f"| {ratio['state_mib']} | {row.samples_per_s:,.1f} | {ratio['samples_per_s']} "
            f"| {row.checkpoint_mib:,.2f} ({row.full_model_mib:,.0f}) |"
        )
    write_table(out_dir / f"efficiency_{experiment}", summary, "\n".join(lines) + "\n", index=True)
    return summary
