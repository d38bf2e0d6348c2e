"""Parameter accounting for every configuration with a stated size in Tables 2, 3, 4, 13, 14, 15.

The paper's numbers live in results/paper/param_counts.csv (as printed, and as a number). Ours are
counted on shape-only models (meta device: no memory, no download), with the method applied exactly
as a run applies it. Checkpoint bytes are the method-only state (method weights + head) in fp32 and
fp16, next to the full model's fp16 size (the paper's 350 GB -> 35 MB claim is fp16).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd
import torch

from lora_repro.config import group_option, parse_overrides
from lora_repro.methods import apply_method, count_params
from lora_repro.models import load_model
from lora_repro.paths import REPO_ROOT

log = logging.getLogger(__name__)

PAPER_CSV = REPO_ROOT / "results" / "paper" / "param_counts.csv"


def count_configuration(model: str, method: str, overrides: dict, task_kind: str) -> dict[str, int]:
    """Counts for one model/method configuration, built on the meta device."""
    model_cfg = {**group_option("model", model), "source": "shape"}
    method_cfg = {**group_option("method", method), **overrides}
    with torch.device("meta"):
        loaded = load_model(model_cfg, task_kind, num_labels=2)
        apply_method(loaded.model, method_cfg)
    counts = count_params(loaded.model)
    counts["checkpoint_bytes_fp16"] = 2 * counts["trainable_params_with_head"]
    counts["full_model_bytes_fp16"] = 2 * counts["total_params"]
    return counts


def param_table(paper_csv: Path = PAPER_CSV) -> pd.DataFrame:
    paper = pd.read_csv(paper_csv, dtype={"method_overrides": str}, keep_default_na=False)
    rows = []
    for row in paper.itertuples(index=False):
        overrides = parse_overrides(row.method_overrides)
        log.info("counting %s %s %s", row.model, row.method, row.method_overrides)
        counts = count_configuration(row.model, row.method, overrides, row.task_kind)
        ours = counts["total_params"] if row.method == "full" else counts["trainable_params"]
        rel = (ours - row.paper_params) / row.paper_params
        rows.append({
            "table": row.table, "model": row.model, "method": row.method, "config": row.method_overrides,
            **counts, "paper_params": row.paper_params, "paper_printed": row.paper_params_printed,
            "relative_difference": round(rel, 4), "agrees": agrees(ours, row.paper_params_printed), "note": row.note,
        })
    return pd.DataFrame(rows)


def agrees(ours: int, printed: str) -> bool:
    """Ours, rounded or truncated to the digits the paper printed (it does both), is the printed number."""
    number = printed.rstrip("M").replace(",", "")
    scale = 10 ** len(number.partition(".")[2])
    millions = ours / 1e6
    return float(number) in (round(millions * scale) / scale, math.floor(millions * scale) / scale)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:,.0f} {unit}"
        n /= 1024
    return f"{n:,.0f} TiB"


def to_markdown(table: pd.DataFrame) -> str:
    lines = [
        "# Trainable parameters: ours vs the paper",
        "",
        "Counted on shape-only models (meta device) with each method applied as a run applies it. "
        "`ours` is trainable parameters without the task head (the paper's convention; for `full` the "
        "whole model); `with head` adds the classifier (2 labels). ✓: ours, rounded or truncated to the digits "
        "the paper printed (it does both), is the printed number; ✗ rows are explained in the note. "
        "`checkpoint`: the method-only state (method weights + head) in fp16, beside the full model in "
        "fp16 (the paper: GPT-3 350 GB -> 35 MB with LoRA r=4 on q, v). Regenerate with `make params`.",
        "",
        "| table | model | method | config | ours | with head | paper | diff | | checkpoint fp16 (full) | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table.itertuples(index=False):
        ours = r.total_params if r.method == "full" else r.trainable_params
        lines.append(
            f"| {r.table} | {r.model} | {r.method} | {r.config or '-'} | {ours:,} | {r.trainable_params_with_head:,} "
            f"| {r.paper_printed} | {r.relative_difference:+.1%} | {'✓' if r.agrees else '✗'} "
            f"| {_size(r.checkpoint_bytes_fp16)} ({_size(r.full_model_bytes_fp16)}) | {r.note} |"
        )
    return "\n".join(lines) + "\n"


def write_param_table(out_dir: Path) -> pd.DataFrame:
    table = param_table()
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "param_counts.csv", index=False)
    (out_dir / "param_counts.md").write_text(to_markdown(table))
    return table
