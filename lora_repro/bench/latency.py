"""Inference latency of one forward pass (paper Table 1 and Figure 5, App. B): the driver.

Builds every variant of `bench.variants` once per process, times the grid with `bench.timing`, and
returns per-cell summaries with the run's memory and environment; `experiments.latency` writes them
to the store and `report.latency` renders them. `thread_noise` compares the pass noise at several CPU
thread counts (to choose a grid's `num_threads`).
"""

from __future__ import annotations

import logging
import os
import statistics
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import psutil
import torch
from torch import nn

from lora_repro.bench.stats import Paired
from lora_repro.bench.steps import peak_rss_bytes
from lora_repro.bench.timing import cell_label, check_cells, grid_cells, make_timer, measure, summarise
from lora_repro.bench.variants import (
    Variant,
    build_base,
    build_variant,
    make_variants,
    param_bytes,
    shared_copy,
    unique_bytes,
)
from lora_repro.config import group_option
from lora_repro.measure import cpu_name
from lora_repro.store import RunStore, new_record, run_key

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


CUDA_SKIP_REASON = "CUDA-event timing not used: the device is a CPU (time.perf_counter around each forward)"


@dataclass
class LatencyResult:
    variants: list[Variant]
    counts: dict[str, dict[str, int]]
    cells: dict[str, list[dict[str, Any]]]  # variant name -> per-cell summaries
    info: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_grid(grid: Mapping[str, Any], device: torch.device, seed: int = 0) -> LatencyResult:
    """Build every variant once, then time the grid. `grid` is a conf/bench/latency_*.yaml dict.

    Peak memory is the process's `ru_maxrss` read after the grid: a sampling thread (MemoryMeter)
    would compete with the compute threads on a small CPU and add noise to every timing.
    """
    model_cfg = group_option("model", grid["model"])
    dtype = DTYPES[grid.get("dtype", "float32")]
    if device.type == "cpu" and grid.get("num_threads"):
        torch.set_num_threads(int(grid["num_threads"]))
    variants = make_variants(grid, model_cfg)
    cells = grid_cells(grid)
    started = time.perf_counter()
    load_before = os.getloadavg()
    start_rss = psutil.Process().memory_info().rss
    base = build_base(model_cfg, device, dtype, seed)
    models: dict[str, nn.Module] = {}
    counts: dict[str, dict[str, int]] = {}
    for variant in variants:
        models[variant.name], counts[variant.name] = build_variant(base, variant)
    build_s = time.perf_counter() - started
    log.info("built %d variants in %.1f s: %s", len(variants), build_s, [v.name for v in variants])
    cell_results, peak_gpu = measure(models, variants, cells, base.config.vocab_size, device,
                                     int(grid["warmup"]), int(grid["trials"]), seed, check_cells(grid))
    peak_rss = peak_rss_bytes()
    memory = {}
    for variant in variants:
        model = models[variant.name]
        mem = {
            "device": str(device),
            "peak_rss_bytes": peak_rss,  # the process's, all variants together (they share the base)
            "rss_at_start_bytes": start_rss,
            "param_bytes": param_bytes(model),
            "unshared_param_bytes": 0 if model is base else unique_bytes(model, base),
        }
        if device.type == "cuda":
            mem["peak_gpu_allocated_bytes"] = peak_gpu[variant.name]
        memory[variant.name] = mem
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "dtype": grid.get("dtype", "float32"),
        "num_threads": torch.get_num_threads(),
        "timer": "cuda_event" if device.type == "cuda" else "perf_counter",
        "cuda_timing": "used" if device.type == "cuda" else CUDA_SKIP_REASON,
        "attn_implementation": getattr(base.config, "_attn_implementation", None),
        "weights": "random (built from the shape; timing does not depend on the values)",
        "forward": "model(input_ids, use_cache=False) under torch.inference_mode, LM head included, no padding",
        "build_s": round(build_s, 2),
        "wall_s": round(time.perf_counter() - started, 2),
        "torch": torch.__version__,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    return LatencyResult(variants, counts, cell_results, info, memory)


def thread_noise(grid: Mapping[str, Any], threads: Iterable[int], rounds: int, cell: tuple[int, int] = (1, 128),
                 seed: int = 0) -> dict[int, dict[str, float]]:
    """How noisy a pass is at each CPU thread count: the base and a second instance of it, per round.

    The thread counts alternate round by round (and their order flips) so load drift hits them alike.
    Per count: the base's median pass and IQR / median, and the paired ratio copy / base with its
    interval and IQR, the noise floor a check at that count would face. Used to pick `num_threads`.
    """
    threads = list(threads)
    model_cfg = group_option("model", grid["model"])
    base = build_base(model_cfg, torch.device("cpu"), DTYPES[grid.get("dtype", "float32")], seed)
    models = {"base": base, "copy": shared_copy(base).eval()}
    ids = torch.randint(0, base.config.vocab_size, cell, generator=torch.Generator().manual_seed(seed))
    timer = make_timer(torch.device("cpu"))
    times = {n: {"base": [], "copy": []} for n in threads}
    before = torch.get_num_threads()
    try:
        with torch.inference_mode():
            for trial in range(rounds + 1):  # round 0 warms every thread count up, untimed
                for n in threads if trial % 2 else threads[::-1]:
                    torch.set_num_threads(n)
                    for name in ("base", "copy") if trial % 2 else ("copy", "base"):
                        elapsed = timer(partial(models[name], input_ids=ids, use_cache=False))
                        if trial:
                            times[n][name].append(elapsed)
    finally:
        torch.set_num_threads(before)
    out = {}
    for n, t in times.items():
        base_stats = summarise(t["base"])
        q = statistics.quantiles([a / b for a, b in zip(t["copy"], t["base"], strict=True)], n=4, method="inclusive")
        paired = Paired.of(t["copy"], t["base"])
        out[n] = {"base_median_ms": base_stats["median_ms"],
                  "base_iqr_pct": round(100 * base_stats["iqr_ms"] / base_stats["median_ms"], 2),
                  "copy_base_paired": round(paired.median, 4), "copy_base_low": round(paired.low, 4),
                  "copy_base_high": round(paired.high, 4), "copy_base_iqr_pct": round(100 * (q[2] - q[0]), 2)}
    return out


DEFAULT_GRID = {"cpu": "cpu", "cuda": "paper"}


def experiment_name(device: torch.device, grid: str) -> str:
    tag = device.type
    return f"latency_{tag}" if DEFAULT_GRID.get(tag) == grid else f"latency_{tag}_{grid}"


def record_config(grid: dict, variant: dict, device: torch.device, seed: int) -> dict:
    return {"bench": "latency", "grid": grid, "variant": variant, "device": device.type, "seed": seed}


def write_records(result, grid: dict, device: torch.device, seed: int, experiment: str, store: RunStore,
                  force: bool) -> None:
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    for variant in result.variants:
        cells = result.cells[variant.name]
        counts = result.counts[variant.name]
        best = {}
        for b, s, _ in grid.get("table1_cells", []):
            for cell in cells:
                if (cell["batch"], cell["seq"]) == (int(b), int(s)):
                    best[f"{cell_label(b, s)}_median_ms"] = cell["median_ms"]
                    if "overhead_pct" in cell:
                        best[f"{cell_label(b, s)}_overhead_pct"] = cell["overhead_pct"]
        record = new_record(
            record_config(grid, variant.describe(), device, seed), experiment=experiment, task="latency",
            model=grid["model"], method=variant.name, seed=seed, scale=grid["name"], epochs=cells, best=best,
            best_epoch=None,
            params={"trainable": counts["method_params"], "trainable_with_head": counts["method_params"],
                    "total": counts["total_params"]},
            timing={**result.info, "run_id": run_id, "warmup": grid["warmup"], "trials": grid["trials"]},
            memory=result.memory[variant.name],
            checkpoint={"path": None, "bytes": None, "note": "latency benchmark: no weights saved"},
            status="completed",
        )
        store.write(record, force=force)


def measure_into_store(grid: dict, device: torch.device, seed: int, experiment: str, store: RunStore,
                       force: bool) -> None:
    """Time the grid and write one record per variant, unless the store has this grid already (and not `force`)."""
    variants = make_variants(grid, group_option("model", grid["model"]))
    keys = [run_key(record_config(grid, v.describe(), device, seed)) for v in variants]
    if not force and all(store.exists(experiment, k) for k in keys):
        log.info("%s: the store has this grid already (--force to measure again); rewriting the tables", experiment)
        return
    result = run_grid(grid, device, seed)
    write_records(result, grid, device, seed, experiment, store, force=True)
    log.info("measured %d variants in %.1f min", len(variants), result.info["wall_s"] / 60)
