"""The suite's LoRA training path against the peer (PEFT + HF Trainer), one job at a time.

A job is one LoRA fine-tuning run of the same size on both sides: MiniLM-L6 (offline package),
SST-2's seeded 2,000-example subset, r=8 on q and v (alpha 8, no dropout, Kaiming A, zero B, as
PEFT), the classifier head and BERT pooler trained, AdamW lr 5e-4 with linear decay after 6 %
warm-up, gradient clipping at 1.0 (Trainer's default), batch 16, max length 64, the same number of
steps, 2 threads. The two sides differ only in the framework:

- `peft`: `peft.get_peft_model` + `transformers.Trainer`, data as tokenised rows padded per batch
  by `DataCollatorWithPadding` (the standard recipe: random batches, each padded to its longest row);
- `ours`: `lora_repro.methods.apply_method` + `lora_repro.train.train_loop`, data from
  `lora_repro.data.glue.make_loader` (pre-tokenised, padded per batch, grouped by length: the
  suite's default `train.group_by_length: true`);
- `ours_nogroup`: ours without length grouping (an ablation: what the framework alone costs);
- `peft_grouped`: the peer with Trainer's own length grouping (`train_sampling_strategy="group_by_length"`,
  off by default there).

Each job runs in a fresh Python process (`python -m lora_repro.bench.peer <job> '<json spec>'`) so
that its peak resident set (`ru_maxrss`: imports, model, data and training together) is its own,
and prints one JSON line. Step time is the interval between consecutive step boundaries (data,
forward, backward, clipping, optimizer, scheduler: everything), the first `skip` steps dropped.

`infer` times the base model against the LoRA-merged model (`merge_and_unload`, ΔW ≠ 0) and the
unmerged LoRA model on SST-2 dev batches, interleaved: the merged ratio must be 1.00 ± 0.01.
"""

from __future__ import annotations

import copy
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from lora_repro.bench.stats import Paired

JOBS = ("ours", "peft", "ours_nogroup", "peft_grouped", "infer")
RESULT_PREFIX = "BENCH_RESULT "


@dataclass
class JobSpec:
    """Everything that defines a job; both sides get the same one."""

    steps: int = 100
    skip: int = 10  # steps left out of the step-time statistics (warm-up)
    batch_size: int = 16
    max_length: int = 64
    train_subset: int = 2000
    subset_seed: int = 0
    seed: int = 0
    r: int = 8
    alpha: int = 8
    lr: float = 5e-4
    warmup_ratio: float = 0.06
    grad_clip: float = 1.0
    threads: int = 2
    model: str = "minilm_l6"
    task: str = "sst2"
    infer_batch_size: int = 32
    infer_passes: int = 3
    profile_steps: int = 0  # >0: torch.profiler over that many steps after the skip, top ops in the result
    model_cfg: dict[str, Any] | None = None  # a model config dict instead of conf/model/<model>.yaml (tests)
    data: dict[str, Any] = field(default_factory=dict)  # encode_split extras (tests: data_root)

    @property
    def warmup_steps(self) -> int:
        return int(math.ceil(self.warmup_ratio * self.steps))


# ---------------------------------------------------------------------------------------------
# Shared pieces


def _setup(spec: JobSpec):
    import torch

    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    from lora_repro.config import group_option
    from lora_repro.data.glue import encode_split
    from lora_repro.models import load_model

    model_cfg = spec.model_cfg or group_option("model", spec.model)
    loaded = load_model(model_cfg, "seq_cls", num_labels=2, seed=spec.seed)
    encoded = encode_split(loaded.tokenizer, spec.task, "train", max_length=spec.max_length,
                           subset_size=spec.train_subset, subset_seed=spec.subset_seed, **spec.data)
    return loaded, encoded


def lora_method_cfg(spec: JobSpec) -> dict[str, Any]:
    return {"name": "lora", "targets": ["q", "v"], "r": spec.r, "alpha": spec.alpha, "dropout": 0.0,
            "init": "kaiming", "init_std": 0.02}


class StepClock:
    """Wraps a batch iterable; records a timestamp each time the loop asks for the next batch."""

    def __init__(self, batches: Iterable[dict]):
        self.batches = batches
        self.stamps: list[float] = []
        self.sizes: list[int] = []
        self.padded_tokens: list[int] = []

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[dict]:
        for batch in self.batches:
            self.stamps.append(time.perf_counter())
            self.sizes.append(int(batch["input_ids"].shape[0]))
            self.padded_tokens.append(int(batch["input_ids"].numel()))
            yield batch
        self.stamps.append(time.perf_counter())


def step_stats(stamps: list[float], sizes: list[int], skip: int) -> dict[str, Any]:
    """Median/mean step time and samples/s over steps after `skip` (stamps: one per step boundary)."""
    intervals = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
    kept = intervals[skip:]
    kept_sizes = sizes[skip:skip + len(kept)]
    if not kept:
        raise ValueError(f"no steps left after skipping {skip}; run more steps")
    q = statistics.quantiles(kept, n=4, method="inclusive") if len(kept) > 1 else [kept[0]] * 3
    return {
        "steps_timed": len(kept),
        "step_s_median": statistics.median(kept),
        "step_s_mean": statistics.fmean(kept),
        "step_s_iqr": q[2] - q[0],
        "samples_per_s": sum(kept_sizes) / sum(kept),
    }


def peak_rss_bytes() -> int:
    """This process's peak resident set since it started (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


PROFILE_GROUPS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "dropout RNG": ("aten::bernoulli_",),
}


def _profile_table(profiler, rows: int = 15) -> list[dict[str, Any]]:
    """Top ops by self CPU time, then one row per PROFILE_GROUPS group and the total."""
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    table = [{"op": evt.key, "calls": evt.count, "self_cpu_ms": round(evt.self_cpu_time_total / 1000, 2),
              "cpu_total_ms": round(evt.cpu_time_total / 1000, 2)} for evt in events[:rows]]
    for group, ops in PROFILE_GROUPS.items():
        chosen = [e for e in events if e.key in ops]
        table.append({"op": f"[{group}]", "calls": sum(e.count for e in chosen),
                      "self_cpu_ms": round(sum(e.self_cpu_time_total for e in chosen) / 1000, 2), "cpu_total_ms": None})
    table.append({"op": "[all ops]", "calls": sum(e.count for e in events),
                  "self_cpu_ms": round(sum(e.self_cpu_time_total for e in events) / 1000, 2), "cpu_total_ms": None})
    return table


class _ProfileWindow:
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


# ---------------------------------------------------------------------------------------------
# The jobs


def job_ours(spec: JobSpec, group_by_length: bool = True) -> dict[str, Any]:
    """lora-repro: apply_method + the suite's loader and train_loop, unchanged."""
    import torch

    from lora_repro.data.glue import make_loader
    from lora_repro.methods import apply_method, count_params
    from lora_repro.tasks.base import TaskData
    from lora_repro.tasks.glue import classifier_loss
    from lora_repro.train import train_loop

    loaded, encoded = _setup(spec)
    model = loaded.model
    handle = apply_method(model, lora_method_cfg(spec))
    loader = make_loader(encoded, spec.batch_size, shuffle=True, seed=spec.seed,
                         pad_token_id=loaded.tokenizer.pad_token_id, group_by_length=group_by_length)
    clock = StepClock(loader)
    window = _ProfileWindow(spec.skip, spec.profile_steps)

    class Profiled:
        def __len__(self):
            return len(clock)

        def __iter__(self):
            for index, batch in enumerate(clock):
                window.step(index)
                yield batch
            window.step(len(clock.sizes))

    steps_per_epoch = len(loader)
    train_cfg = {"epochs": 1, "max_steps": spec.steps, "lr": spec.lr, "weight_decay": 0.0,
                 "adam_betas": [0.9, 0.999], "adam_eps": 1e-8, "warmup_steps": spec.warmup_steps,
                 "grad_clip": spec.grad_clip, "label_smoothing": 0.0}
    if spec.steps > steps_per_epoch:
        raise ValueError(f"steps={spec.steps} exceeds one epoch ({steps_per_epoch} batches); the step clock "
                         "times one epoch (no evaluation inside the timed steps)")
    started = time.perf_counter()
    data = TaskData(Profiled(), steps_per_epoch, classifier_loss, lambda m: {"none": 0.0}, "none")
    _, measured = train_loop(model, handle, data, train_cfg, torch.device("cpu"))
    wall = time.perf_counter() - started
    stamps = clock.stamps[: spec.steps + 1]
    return {
        **step_stats(stamps, clock.sizes, spec.skip),
        "train_wall_s": wall,
        "padded_tokens_per_step": statistics.fmean(clock.padded_tokens[: spec.steps]),
        "trainable_params": count_params(model)["trainable_params_with_head"],
        "train_peak_rss_bytes": measured["memory"]["peak_rss_bytes"],
        "profile": window.table,
        "profile_s": window.total_s,
    }


def job_peft(spec: JobSpec, group_by_length: bool = False) -> dict[str, Any]:
    """The peer: peft.get_peft_model + transformers.Trainer with DataCollatorWithPadding."""
    import tempfile

    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    from lora_repro.measure import MemoryMeter

    loaded, encoded = _setup(spec)
    rows = []
    ids, types = encoded.input_ids, encoded.token_type_ids
    for i in range(len(encoded)):
        row = {"input_ids": ids[i], "attention_mask": [1] * len(ids[i]), "labels": int(encoded.labels[i])}
        if types is not None:
            row["token_type_ids"] = types[i]
        rows.append(row)
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=spec.r, lora_alpha=spec.alpha, lora_dropout=0.0,
                        target_modules=["query", "value"], modules_to_save=["pooler"])  # + classifier (SEQ_CLS)
    model = get_peft_model(loaded.model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    window = _ProfileWindow(spec.skip, spec.profile_steps)
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())
            window.step(len(stamps) - 1)

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=spec.batch_size, max_steps=spec.steps,
            learning_rate=spec.lr, weight_decay=0.0, warmup_steps=spec.warmup_steps, lr_scheduler_type="linear",
            adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=spec.grad_clip,
            save_strategy="no", eval_strategy="no", report_to="none", seed=spec.seed, use_cpu=True,
            dataloader_num_workers=0, disable_tqdm=True, logging_steps=500,
            train_sampling_strategy="group_by_length" if group_by_length else "random",
        )
        trainer = Trainer(model=model, args=args, train_dataset=rows,
                          data_collator=DataCollatorWithPadding(loaded.tokenizer), callbacks=[Clock()])
        padded: list[int] = []
        collate = trainer.data_collator

        def counting_collator(features):
            batch = collate(features)
            padded.append(int(batch["input_ids"].numel()))
            return batch

        trainer.data_collator = counting_collator
        started = time.perf_counter()
        with MemoryMeter("cpu") as meter:
            trainer.train()
        wall = time.perf_counter() - started
    # Trainer fixes the first timestamp at train begin; step i ends at stamps[i+1].
    sizes = [spec.batch_size] * spec.steps
    return {
        **step_stats(stamps, sizes, spec.skip),
        "train_wall_s": wall,
        "padded_tokens_per_step": statistics.fmean(padded[: spec.steps]),
        "trainable_params": trainable,
        "train_peak_rss_bytes": meter.peak_rss,
        "profile": window.table,
        "profile_s": window.total_s,
    }


def job_infer(spec: JobSpec) -> dict[str, Any]:
    """Base vs LoRA merged vs LoRA unmerged forward time on SST-2 dev batches, interleaved."""
    import torch

    from lora_repro.bench.latency import same_graph
    from lora_repro.config import group_option
    from lora_repro.data.glue import encode_split, make_loader
    from lora_repro.methods import apply_method, lora
    from lora_repro.models import load_model

    torch.set_num_threads(spec.threads)
    model_cfg = spec.model_cfg or group_option("model", spec.model)
    base = load_model(model_cfg, "seq_cls", num_labels=2, seed=spec.seed)
    tokenizer = base.tokenizer
    base = base.model.eval()
    unmerged = copy.deepcopy(base)
    apply_method(unmerged, lora_method_cfg(spec))
    with torch.no_grad():
        for name, param in unmerged.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)  # ΔW ≠ 0, as after training
    merged = lora.merge_and_unload(copy.deepcopy(unmerged))
    for model in (unmerged, merged):
        model.eval()
    dev = encode_split(tokenizer, spec.task, "dev", max_length=spec.max_length, **spec.data)
    batches = list(make_loader(dev, spec.infer_batch_size, pad_token_id=tokenizer.pad_token_id))
    for batch in batches:
        batch.pop("labels", None)
    models = {"base": base, "merged": merged, "unmerged": unmerged}
    times: dict[str, list[float]] = {name: [] for name in models}
    order = list(models)
    with torch.inference_mode():
        check = batches[0]
        same = torch.allclose(merged(**check).logits, unmerged(**check).logits, atol=1e-4, rtol=1e-4)
        for name in order:  # warm-up
            models[name](**batches[0])
        for index in range(spec.infer_passes * len(batches)):
            batch = batches[index % len(batches)]
            shift = index % len(order)
            for name in order[shift:] + order[:shift]:
                started = time.perf_counter()
                models[name](**batch)
                times[name].append(time.perf_counter() - started)
    paired = {name: Paired.of(times[name], times["base"]) for name in ("merged", "unmerged")}
    return {
        "batches_timed": len(times["base"]),
        "ms_median": {name: 1000 * statistics.median(t) for name, t in times.items()},
        "ms_total": {name: 1000 * sum(t) for name, t in times.items()},
        "ratio_total": {name: sum(times[name]) / sum(times["base"]) for name in ("merged", "unmerged")},
        "ratio_paired_median": {name: p.median for name, p in paired.items()},
        "ratio_paired_interval": {name: [p.low, p.high] for name, p in paired.items()},  # 95 %, distribution-free
        "merged_same_graph_as_base": same_graph(merged, base),
        "merged_matches_unmerged": bool(same),
    }


def run_job(kind: str, spec: JobSpec) -> dict[str, Any]:
    started = time.perf_counter()
    if kind == "ours":
        result = job_ours(spec)
    elif kind == "ours_nogroup":
        result = job_ours(spec, group_by_length=False)
    elif kind == "peft":
        result = job_peft(spec)
    elif kind == "peft_grouped":
        result = job_peft(spec, group_by_length=True)
    elif kind == "infer":
        result = job_infer(spec)
    else:
        raise ValueError(f"unknown job {kind!r}; use one of {JOBS}")
    result["job"] = kind
    result["job_wall_s"] = time.perf_counter() - started
    result["peak_rss_bytes"] = peak_rss_bytes()
    import torch

    result["threads"] = torch.get_num_threads()
    return result


def run_in_subprocess(kind: str, spec: JobSpec, timeout: float = 900) -> dict[str, Any]:
    """Run one job in a fresh interpreter and return its result dict."""
    from lora_repro.paths import REPO_ROOT

    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(spec.threads),
           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-m", "lora_repro.bench.peer", kind, json.dumps(asdict(spec))],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f"bench job {kind!r} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")


def main(argv: list[str]) -> None:
    kind, spec = argv[0], JobSpec(**json.loads(argv[1]))
    import logging
    import warnings

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    result = run_job(kind, spec)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
