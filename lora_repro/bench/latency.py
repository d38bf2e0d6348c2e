"""Inference latency of one forward pass (paper Table 1 and Figure 5, App. B).

GPT-2 medium built from its shape with random weights (timing does not depend on the values), in
five forms: the base model (= full fine-tuning = LoRA merged), LoRA unmerged (r=4 on q, v), LoRA
merged (`merge_and_unload`: the base graph again), and Adapter^L / Adapter^H at Figure 5's bottlenecks
plus the bottlenecks that give Table 1's |Θ| with our parameter formula. A second instance of the
base model (`base_copy`) is timed like any variant: its "overhead" is the machine's noise floor, the
yardstick for the merged-vs-base comparison. `merged_zero` is merged LoRA with ΔW = 0: the same
private copies of the adapted weights as `lora_merged` (which shares nothing else with the base
either), so merged / merged_zero isolates the values from where the copies sit in memory.

Every variant is built once per process and shares the frozen base weights with the base model
(only the method modules, and the merged copies of the LoRA-adapted weights, take new memory).
Per grid cell (batch, seq) the variants run warm-up passes, then timed passes interleaved in a
rotating order (A B C, B C A, C A B, ...) so that drift (thermal, other load) hits all of them alike.
Timer: `time.perf_counter` on CPU; CUDA events with synchronisation on a GPU.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM

from lora_repro.bench.stats import Paired
from lora_repro.config import group_option
from lora_repro.methods import apply_method, count_params, lora
from lora_repro.models.tiny import build_tokenizer, tiny_config
from lora_repro.measure import cpu_name

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CUDA_SKIP_REASON = "CUDA-event timing not used: the device is a CPU (time.perf_counter around each forward)"


@dataclass(frozen=True)
class Variant:
    """One model form to time. `method` is the method config applied to a shared copy of the base."""

    name: str
    kind: str  # base | base_copy | lora_unmerged | lora_merged | merged_zero | adapter_h | adapter_l
    method: dict[str, Any] | None = None
    bottleneck: int | None = None
    budget: str | None = None  # Table 1's |Θ| label when the bottleneck was chosen to meet it
    cells: tuple[tuple[int, int], ...] | None = None  # None: every grid cell
    trials: int | None = None  # timed passes per cell; None: the grid's `trials`

    def runs_at(self, cell: tuple[int, int]) -> bool:
        return self.cells is None or tuple(cell) in self.cells

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "method": self.method, "bottleneck": self.bottleneck,
                "budget": self.budget, "cells": None if self.cells is None else [list(c) for c in self.cells],
                "trials": self.trials}


# ---------------------------------------------------------------------------------------------
# Models


def model_config(model_cfg: Mapping[str, Any]):
    """A transformers config from a conf/model entry: its `shape`, or the tiny shape built in code."""
    if model_cfg.get("shape"):
        return AutoConfig.for_model(model_cfg["family"], **model_cfg["shape"])
    if model_cfg.get("source") == "tiny":
        return tiny_config(model_cfg["family"], build_tokenizer(model_cfg["family"]))
    raise ValueError(f"model config {model_cfg.get('name')!r} has no shape to build random weights from")


def build_base(model_cfg: Mapping[str, Any], device: torch.device, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """The causal LM with random weights, in eval mode, on `device` in `dtype`."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config(model_cfg))
    return model.to(device=device, dtype=dtype).eval()


def shared_copy(base: nn.Module) -> nn.Module:
    """A structural copy of `base` whose parameters and buffers are the base's own tensors."""
    memo: dict[int, Any] = {id(t): t for t in base.parameters()}
    memo.update({id(t): t for t in base.buffers()})
    return copy.deepcopy(base, memo)


@torch.no_grad()
def _randomise_method_weights(model: nn.Module, std: float = 0.02) -> None:
    """LoRA B and adapter up-projections start at zero; give them values, as after training."""
    for param in model.parameters():
        if param.requires_grad:
            param.normal_(std=std)


def build_variant(base: nn.Module, variant: Variant) -> tuple[nn.Module, dict[str, int]]:
    """The variant as a model sharing the base's frozen weights, and its parameter counts."""
    if variant.kind in ("base", "base_copy"):  # base_copy: a second instance of the base graph, a noise control
        counts = count_params(base)
        model = base if variant.kind == "base" else shared_copy(base).eval()
        return model, {**counts, "trainable_params": 0, "trainable_params_with_head": 0, "method_params": 0}
    model = shared_copy(base)
    apply_method(model, variant.method)
    model.to(device=next(base.parameters()).device, dtype=next(base.parameters()).dtype)
    _randomise_method_weights(model)
    if variant.kind == "merged_zero":
        with torch.no_grad():
            for layer in lora.lora_layers(model):
                for param in layer.parameters():
                    if param.requires_grad:
                        param.zero_()  # ΔW = B A = 0
    counts = count_params(model)
    counts["method_params"] = counts["trainable_params"]
    if variant.kind in ("lora_merged", "merged_zero"):
        for layer in lora.lora_layers(model):  # merge into private copies, never into the shared base weights
            layer.base.weight = nn.Parameter(layer.base.weight.detach().clone(), requires_grad=False)
        lora.merge_and_unload(model)
        counts["total_params"] = count_params(model)["total_params"]
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval(), counts


def param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def unique_bytes(model: nn.Module, base: nn.Module) -> int:
    """Bytes of parameters this variant does not share with the base model."""
    shared = {p.data_ptr() for p in base.parameters()}
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.data_ptr() not in shared)


# ---------------------------------------------------------------------------------------------
# Variants and Table 1 budgets


def adapter_count(model_cfg: Mapping[str, Any], method_cfg: Mapping[str, Any]) -> int:
    """Trainable parameters (paper count, no head) of an adapter config, counted on the meta device."""
    config = model_config(model_cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        apply_method(model, dict(method_cfg))
    return count_params(model)["trainable_params"]


def bottleneck_for_budget(model_cfg: Mapping[str, Any], method: str, target: int) -> tuple[int, int]:
    """The bottleneck whose adapter count (our formula) is closest to `target`, and that count."""
    base_cfg = group_option("method", method)
    count = lambda r: adapter_count(model_cfg, {**base_cfg, "bottleneck": r})  # noqa: E731
    c1, c2 = count(1), count(2)
    guess = max(1, round((target - c1) / (c2 - c1)) + 1)
    candidates = {r: count(r) for r in (guess - 1, guess, guess + 1) if r >= 1}
    best = min(candidates, key=lambda r: (abs(candidates[r] - target), r))
    return best, candidates[best]


def make_variants(grid: Mapping[str, Any], model_cfg: Mapping[str, Any]) -> list[Variant]:
    lora_cfg = {**group_option("method", "lora"), **grid.get("lora", {})}
    check = grid.get("check_trials")  # more passes for the variants the acceptance checks compare
    variants = [
        Variant("base", "base", trials=check),
        Variant("base_copy", "base_copy", trials=check),
        Variant("lora_unmerged", "lora_unmerged", lora_cfg),
        Variant("lora_merged", "lora_merged", lora_cfg, trials=check),
        Variant("merged_zero", "merged_zero", lora_cfg, trials=check),
    ]
    for method in ("adapter_l", "adapter_h"):
        for r in grid["bottlenecks"]:
            variants.append(Variant(f"{method}_b{r}", method, {**group_option("method", method), "bottleneck": int(r)},
                                    bottleneck=int(r)))
    measured = {tuple(c) for c in grid.get("table1_cells_measured", [])}
    for label, target in grid.get("table1_budgets", {}).items():
        cells = tuple(sorted((int(b), int(s)) for b, s, lab in grid.get("table1_cells", [])
                             if lab == label and (int(b), int(s)) in measured))
        if not cells:
            continue
        for method in ("adapter_l", "adapter_h"):
            r, _ = bottleneck_for_budget(model_cfg, method, int(target))
            variants.append(Variant(f"{method}_{label}", method, {**group_option("method", method), "bottleneck": r},
                                    bottleneck=r, budget=label, cells=cells, trials=check))
    return variants


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


# ---------------------------------------------------------------------------------------------
# Timing


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


@dataclass
class LatencyResult:
    variants: list[Variant]
    counts: dict[str, dict[str, int]]
    cells: dict[str, list[dict[str, Any]]]  # variant name -> per-cell summaries
    info: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)


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

            def forward(name: str) -> None:
                models[name](input_ids=ids, use_cache=False)

            for _ in range(warmup):
                for v in active:
                    timer(lambda: forward(v.name))
                    progress.update()
            for trial in range(max(rounds(v, (batch, seq)) for v in active)):
                shift = trial % len(active)
                for v in active[shift:] + active[:shift]:
                    if trial >= rounds(v, (batch, seq)):
                        continue
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    times[v.name].append(timer(lambda: forward(v.name)))
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
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
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
                        elapsed = timer(lambda: models[name](input_ids=ids, use_cache=False))
                        if trial:
                            times[n][name].append(elapsed)
    finally:
        torch.set_num_threads(before)
    out = {}
    for n, t in times.items():
        base_stats = summarise(t["base"])
        q = statistics.quantiles([a / b for a, b in zip(t["copy"], t["base"])], n=4, method="inclusive")
        paired = Paired.of(t["copy"], t["base"])
        out[n] = {"base_median_ms": base_stats["median_ms"],
                  "base_iqr_pct": round(100 * base_stats["iqr_ms"] / base_stats["median_ms"], 2),
                  "copy_base_paired": round(paired.median, 4), "copy_base_low": round(paired.low, 4),
                  "copy_base_high": round(paired.high, 4), "copy_base_iqr_pct": round(100 * (q[2] - q[0]), 2)}
    return out


def same_graph(a: nn.Module, b: nn.Module) -> bool:
    """True when two models have the same module tree (names and types)."""
    left = [(n, type(m)) for n, m in a.named_modules()]
    right = [(n, type(m)) for n, m in b.named_modules()]
    return left == right


def cell_label(batch: int, seq: int) -> str:
    return f"bs{batch}_seq{seq}"
