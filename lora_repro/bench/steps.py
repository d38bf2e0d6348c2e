"""What one training job of the peer race measures: step boundaries (wall and process CPU time), the
batches it consumed, its memory, and an optional torch.profiler window.

Both sides use the same clock: a stamp at each step boundary (data, forward, backward, clipping,
optimizer, scheduler: everything between two boundaries), `time.perf_counter` for wall time and
`time.process_time` for the CPU time of all the process's threads. A batch's fingerprint (a hash
of its input ids) lets a test, and the report, check that both sides trained on the same tensors.
"""

from __future__ import annotations

import hashlib
import platform
import resource
import statistics
import time
from collections.abc import Iterable, Iterator
from itertools import pairwise
from typing import Any

import psutil

PROFILE_GROUPS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "dropout RNG": ("aten::bernoulli_",),
    "optimizer": ("aten::_foreach_add_", "aten::_foreach_mul_", "aten::addcdiv_", "aten::addcmul_", "aten::lerp_",
                  "aten::sqrt", "aten::_foreach_sqrt", "aten::_foreach_addcdiv_", "aten::_foreach_lerp_",
                  "aten::_fused_adamw_"),
    "softmax / layer norm / GELU": ("aten::_softmax", "aten::_softmax_backward_data", "aten::native_layer_norm",
                                    "aten::native_layer_norm_backward", "aten::gelu", "aten::gelu_backward"),
}


def batch_digest(batch: dict) -> str:
    """A short fingerprint of a batch's input ids and shape: equal digests, equal token tensors."""
    ids = batch["input_ids"]
    return hashlib.blake2b(ids.numpy().tobytes() + str(tuple(ids.shape)).encode(), digest_size=8).hexdigest()


class StepClock:
    """Records wall and CPU stamps at each step boundary, and what each step's batch was."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.sizes: list[int] = []
        self.padded_tokens: list[int] = []
        self.digests: list[str] = []

    def stamp(self) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def saw(self, batch: dict) -> None:
        self.sizes.append(int(batch["input_ids"].shape[0]))
        self.padded_tokens.append(int(batch["input_ids"].numel()))
        self.digests.append(batch_digest(batch))

    def around(self, batches: Iterable[dict]) -> Iterator[dict]:
        """Yield the batches, stamping before each and after the last (the loop asks for the next at a boundary)."""
        for batch in batches:
            self.stamp()
            self.saw(batch)
            yield batch
        self.stamp()

    def stats(self, steps: int, skip: int) -> dict[str, Any]:
        """The first `steps` steps' statistics, the first `skip` of them dropped (warm-up)."""
        return {**step_stats(self.wall[: steps + 1], self.sizes, skip, self.cpu[: steps + 1]),
                "padded_tokens_per_step": statistics.fmean(self.padded_tokens[skip:steps]),
                "batch_digests": self.digests[:steps]}


def step_stats(stamps: list[float], sizes: list[int], skip: int, cpu: list[float] | None = None) -> dict[str, Any]:
    """Per-step wall (and CPU) seconds after `skip`, their mean and median, and samples/s."""
    intervals = [b - a for a, b in pairwise(stamps)]
    kept = intervals[skip:]
    if not kept:
        raise ValueError(f"no steps left after skipping {skip}; run more steps")
    kept_sizes = sizes[skip:skip + len(kept)]
    out: dict[str, Any] = {
        "steps_timed": len(kept),
        "step_s": kept,
        "step_s_mean": statistics.fmean(kept),
        "step_s_median": statistics.median(kept),
        "samples_per_s": sum(kept_sizes) / sum(kept),
    }
    if cpu is not None:
        cpu_kept = [b - a for a, b in pairwise(cpu)][skip:]
        out["cpu_step_s"] = cpu_kept
        out["cpu_step_s_mean"] = statistics.fmean(cpu_kept)
    return out


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """This process's peak resident set since it started (Linux reports KiB). The kernel updates its
    high-water mark lazily, so it can read a few pages below the resident set of this moment: the larger
    of the two."""
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, rss_bytes())


def environment() -> dict[str, Any]:
    """Where the job ran, for the report's caption (the report never describes the machine rendering it)."""
    import os
    from importlib import metadata

    import torch

    from lora_repro.measure import cpu_name

    versions = {}
    for name in ("torch", "transformers", "peft", "accelerate"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "threads": torch.get_num_threads(), "versions": versions}


def _profile_table(profiler, rows: int = 15) -> list[dict[str, Any]]:
    """Top ops by self CPU time, then one row per PROFILE_GROUPS group and the total."""
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    table = [{"op": evt.key, "calls": evt.count, "self_cpu_ms": round(evt.self_cpu_time_total / 1000, 2),
              "cpu_total_ms": round(evt.cpu_time_total / 1000, 2)} for evt in events[:rows]]
    for group, ops in PROFILE_GROUPS.items():
        chosen = [e for e in events if e.key in ops]
        table.append({"op": f"[{group}]", "calls": sum(e.count for e in chosen), "cpu_total_ms": None,
                      "self_cpu_ms": round(sum(e.self_cpu_time_total for e in chosen) / 1000, 2)})
    table.append({"op": "[all ops]", "calls": sum(e.count for e in events), "cpu_total_ms": None,
                  "self_cpu_ms": round(sum(e.self_cpu_time_total for e in events) / 1000, 2)})
    return table


class ProfileWindow:
    """torch.profiler over steps [start, start + count) of a loop that calls `step(i)` at each boundary."""

    def __init__(self, start: int, count: int):
        self.start, self.count = start, count
        self.profiler = None
        self.table: list[dict[str, Any]] = []
        self.total_s = 0.0
        self._began = 0.0

    def step(self, index: int) -> None:
        if not self.count:
            return
        import torch

        if index == self.start:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.profiler.__enter__()
            self._began = time.perf_counter()
        elif index == self.start + self.count and self.profiler is not None:
            self.total_s = time.perf_counter() - self._began
            self.profiler.__exit__(None, None, None)
            self.table = _profile_table(self.profiler)
            self.profiler = None

    def result(self) -> dict[str, Any]:
        return {"profile": self.table, "profile_s": self.total_s}
