"""What a run costs: peak memory (CUDA allocator or the process's resident set), and the bytes of
trainable parameters, gradients and optimizer state, which are what LoRA saves (paper Sec. 4.2).

On CPU the peak resident set is sampled by a background thread during the measured block, so
several runs in one process (a sweep) each get their own peak, which `ru_maxrss` cannot give.
"""

from __future__ import annotations

import platform
import threading
from typing import Any

import psutil
import torch
from torch import nn

SAMPLE_SECONDS = 0.02


class MemoryMeter:
    """Context manager measuring peak memory of the enclosed block on `device`."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.peak_rss = 0
        self.start_rss = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, process.memory_info().rss)
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> MemoryMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start_rss = self.peak_rss = psutil.Process().memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.peak_rss = max(self.peak_rss, psutil.Process().memory_info().rss)

    def summary(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
        trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        optimizer_bytes = 0
        if optimizer is not None:
            for state in optimizer.state.values():
                optimizer_bytes += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
        result: dict[str, Any] = {
            "device": str(self.device),
            "peak_rss_bytes": self.peak_rss,
            "rss_at_start_bytes": self.start_rss,
            "trainable_param_bytes": trainable,
            "grad_bytes": trainable,
            "optimizer_state_bytes": optimizer_bytes,
        }
        if self.device.type == "cuda":
            result["peak_gpu_allocated_bytes"] = torch.cuda.max_memory_allocated(self.device)
            result["peak_gpu_reserved_bytes"] = torch.cuda.max_memory_reserved(self.device)
        return result


def cpu_name() -> str:
    """The processor's model name (for the hardware line of benchmark tables)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
