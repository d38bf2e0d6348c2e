"""The GPU path: CUDA-event timing, CUDA memory statistics, fp16 (with its grad scaler) and bf16.

Skipped with a reason where no GPU is visible; `make gpu-check` runs this file, and one short latency
grid, on a machine with a GPU (the project's `device` tool lends one to some sessions).
"""

import pytest
import torch

from lora_repro.bench import latency
from lora_repro.config import group_option, resolve_overrides
from lora_repro.run import run
from lora_repro.store import RunStore

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device visible: the GPU path (events, memory stats, fp16) runs in `make gpu-check` on a GPU",
)


def test_cuda_timer_uses_events(monkeypatch):
    events = []
    real_event = torch.cuda.Event
    monkeypatch.setattr(torch.cuda, "Event", lambda **kw: events.append(kw) or real_event(**kw))
    timer = latency.make_timer(torch.device("cuda"))
    x = torch.randn(256, 256, device="cuda")
    timer(lambda: x @ x)
    assert events == [{"enable_timing": True}] * 2  # a start and an end event around the call


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_training_on_cuda_records_gpu_memory(precision, store_root):
    cfg = resolve_overrides(["task=stsb", "model=tiny_bert", "method=lora", "scale=smoke", "train.device=cuda",
                             f"train.precision={precision}", f"experiment_name=cuda_{precision}"])
    record = run(cfg, RunStore(store_root))
    memory = record["memory"]
    assert record["status"] == "completed" and memory["device"].startswith("cuda")
    assert 0 < memory["peak_gpu_allocated_bytes"] <= memory["peak_gpu_reserved_bytes"]
    assert record["timing"]["train_samples_per_s"] > 0 and record["best"]["pearson"] == record["best"]["pearson"]


def test_latency_grid_on_cuda_times_with_events():
    grid = {**group_option("bench", "latency_smoke"), "trials": 2, "warmup": 1, "check_trials": 3}
    result = latency.run_grid(grid, torch.device("cuda"))
    assert result.info["timer"] == "cuda_event" and result.info["cuda_timing"] == "used"
    for variant in result.variants:
        assert result.memory[variant.name]["peak_gpu_allocated_bytes"] > 0
        assert all(cell["median_ms"] > 0 for cell in result.cells[variant.name])
