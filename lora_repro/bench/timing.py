"""Timing forward passes: one timer per device, per-cell summaries, and the interleaved measurement loop.

Per grid cell (batch, seq) the variants run warm-up passes, then timed passes interleaved in a
rotating order (A B C, B C A, C A B, ...) so that drift (thermal, other load) hits all of them alike.
Timer: `time.perf_counter` on CPU; CUDA events with synchronisation on a GPU.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lora_repro.bench.stats import Paired
from lora_repro.bench.variants import Variant


def make_timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """Seconds one call takes: CUDA events around it on a GPU, perf_counter on CPU."""
    if device.type == "cuda":
        def cuda_time(fn: Callable[[], Any]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0

        return cuda_time

    def cpu_time(fn: Callable[[], Any]) -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    return cpu_time


def summarise(times_s: list[float], base_s: list[float] | None = None) -> dict[str, Any]:
    """Median, mean, std, quartiles in ms; overhead vs base as ratio of medians and median paired ratio.

    The paired ratio divides each pass by the base's pass of the same round, so drift that hits a
    whole round cancels; its 95 % interval (`stats.median_ci`) says how well the run resolves it.
    """
    ms = sorted(t * 1000 for t in times_s)
    q = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [ms[0]] * 3
    out: dict[str, Any] = {
        "trials": len(ms),
        "median_ms": round(statistics.median(ms), 4),
        "mean_ms": round(statistics.fmean(ms), 4),
        "std_ms": round(statistics.stdev(ms), 4) if len(ms) > 1 else 0.0,
        "p25_ms": round(q[0], 4),
        "p75_ms": round(q[2], 4),
        "iqr_ms": round(q[2] - q[0], 4),
        "min_ms": round(ms[0], 4),
    }
    if base_s:
        base_s = base_s[: len(times_s)]  # the base's passes from the same rounds (it may run more)
        out["overhead_pct"] = round(100 * (statistics.median(times_s) / statistics.median(base_s) - 1), 3)
        out["overhead_pct_mean"] = round(100 * (statistics.fmean(times_s) / statistics.fmean(base_s) - 1), 3)
        paired = Paired.of(times_s, base_s)
        out["overhead_pct_paired"] = round(100 * (paired.median - 1), 3)
        out["overhead_pct_paired_ci"] = [round(100 * (paired.low - 1), 3), round(100 * (paired.high - 1), 3)]
    return out


def check_cells(grid: Mapping[str, Any]) -> dict[tuple[int, int], int]:
    """Table 1's measured cells, where every variant gets `check_trials` rounds (the ordering check's cell)."""
    if not grid.get("check_trials"):
        return {}
    return {(int(b), int(s)): int(grid["check_trials"]) for b, s in grid.get("table1_cells_measured", [])}


def grid_cells(grid: Mapping[str, Any]) -> list[tuple[int, int]]:
    """(batch, seq) cells: the grid's product plus any measured Table 1 cell, smallest work first."""
    cells = {(int(b), int(s)) for b in grid["batch_sizes"] for s in grid["seq_lengths"]}
    cells |= {(int(b), int(s)) for b, s in grid.get("table1_cells_measured", [])}
    return sorted(cells, key=lambda c: (c[0] * c[1], c))


def measure(
    models: Mapping[str, nn.Module],
    variants: Iterable[Variant],
    cells: Iterable[tuple[int, int]],
    vocab_size: int,
    device: torch.device,
    warmup: int,
    trials: int,
    seed: int = 0,
    cell_trials: Mapping[tuple[int, int], int] | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """Time a forward pass of every variant at every cell it runs at; variants interleaved per trial.

    A variant with its own `trials` (the merge check's and Table 1's adapters) takes part in that many
    rounds; at a cell of `cell_trials` (Table 1's, where the adapter ordering is checked) every variant
    takes part in that cell's count; elsewhere in `trials`. Paired ratios pair round i with the base's.
    """
    variants = list(variants)
    cell_trials = {tuple(c): n for c, n in (cell_trials or {}).items()}

    def rounds(v: Variant, cell: tuple[int, int]) -> int:
        return v.trials or cell_trials.get(tuple(cell), trials)

    timer = make_timer(device)
    results: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    peak_gpu: dict[str, int] = {v.name: 0 for v in variants}
    cells = list(cells)
    generator = torch.Generator().manual_seed(seed)
    progress = tqdm(total=sum((warmup + rounds(v, c)) * v.runs_at(c) for v in variants for c in cells),
                    desc="forward passes", mininterval=5.0)
    with torch.inference_mode():
        for batch, seq in cells:
            gc.collect()
            active = [v for v in variants if v.runs_at((batch, seq))]
            ids = torch.randint(0, vocab_size, (batch, seq), generator=generator).to(device)
            times: dict[str, list[float]] = {v.name: [] for v in active}

            for _ in range(warmup):
                for v in active:
                    timer(partial(models[v.name], input_ids=ids, use_cache=False))
                    progress.update()
            for trial in range(max(rounds(v, (batch, seq)) for v in active)):
                shift = trial % len(active)
                for v in active[shift:] + active[:shift]:
                    if trial >= rounds(v, (batch, seq)):
                        continue
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    times[v.name].append(timer(partial(models[v.name], input_ids=ids, use_cache=False)))
                    if device.type == "cuda":
                        peak_gpu[v.name] = max(peak_gpu[v.name], torch.cuda.max_memory_allocated(device))
                    progress.update()
            base_times = times.get("base")
            for v in active:
                results[v.name].append({"batch": batch, "seq": seq,
                                        **summarise(times[v.name], base_times if v.name != "base" else None),
                                        "times_ms": [round(t * 1000, 4) for t in times[v.name]]})
    progress.close()
    return results, peak_gpu


def cell_label(batch: int, seq: int) -> str:
    return f"bs{batch}_seq{seq}"
