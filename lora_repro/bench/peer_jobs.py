"""The suite's LoRA training path against the peer (PEFT + HF Trainer): what one job runs.

A job is one LoRA fine-tuning run of the same size on both sides: MiniLM-L6 (offline package),
SST-2's seeded 2,000-example subset, r=8 on q and v (alpha 8, no dropout, Kaiming A, zero B, as
PEFT), the classifier head and BERT pooler trained, AdamW lr 5e-4 with linear decay after 6 %
warm-up, gradient clipping at 1.0 (Trainer's default), batch 16, max length 64, the same number of
steps and threads. Each side (`ours`: `apply_method` + `train_loop`; `peft`: `get_peft_model` +
`Trainer`) runs under one of three settings:

- `equal` (like for like, the headline): both sides train on the identical sequence of padded
  batches, built once by the parent (random batches, each padded to its longest row) and loaded
  from one file; fp32; torch's fused AdamW (ours: `train.build_optimizer`; Trainer: `optim="adamw_torch_fused"`);
  no compilation.
- `default` (as users run them): each framework's defaults. Ours: the suite's loader with
  `train.group_by_length: true`; PEFT: Trainer's random sampler, `DataCollatorWithPadding`, its
  default optimizer.
- `best` (each at its best available settings): bf16 autocast, length grouping (ours: the suite's
  grouped loader; Trainer: `train_sampling_strategy="group_by_length"`), transformers' eager attention
  (`make bench-step`: 0.87x sdpa's MiniLM LoRA step here; under dropout sdpa runs its math path on CPU),
  and `torch.compile` when
  `JobSpec.compile` is set (off by default: on a 2-core CPU the compile time of the varying batch
  shapes outweighs a 100-step job; the report says which was used).

`infer` times the base model against the LoRA-merged model (`merge_and_unload`, ΔW ≠ 0) and the
unmerged LoRA model on SST-2 dev batches, interleaved: the merged ratio must be 1.00 ± 0.01.
"""

from __future__ import annotations

import copy
import math
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_repro.bench.stats import Paired
from lora_repro.bench.steps import ProfileWindow, StepClock

SIDES = ("ours", "peft")
SETTINGS = ("equal", "default", "best")


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
    compile: bool = False  # `best` setting: torch.compile both sides' models
    batches_path: str | None = None  # `equal` setting: the shared batches (torch.save'd list of dicts)
    infer_batch_size: int = 32
    infer_passes: int = 3
    profile_steps: int = 0  # >0: torch.profiler over that many steps after the skip, top ops in the result
    model_cfg: dict[str, Any] | None = None  # a model config dict instead of conf/model/<model>.yaml (tests)
    data: dict[str, Any] = field(default_factory=dict)  # encode_split extras (tests: data_root)

    @property
    def warmup_steps(self) -> int:
        return math.ceil(self.warmup_ratio * self.steps)


def _setup(spec: JobSpec, setting: str = "equal"):
    """The model (LoRA not applied yet; eager attention under `best`) and the tokenised training subset,
    seeded as the spec says."""
    import torch

    from lora_repro.config import group_option
    from lora_repro.data.glue import encode_split
    from lora_repro.models import load_model

    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    model_cfg = dict(spec.model_cfg or group_option("model", spec.model))
    if setting == "best":
        model_cfg["attn_implementation"] = "eager"
    loaded = load_model(model_cfg, "seq_cls", num_labels=2, seed=spec.seed)
    encoded = encode_split(loaded.tokenizer, spec.task, "train", max_length=spec.max_length,
                           subset_size=spec.train_subset, subset_seed=spec.subset_seed, **spec.data)
    return loaded, encoded


def lora_method_cfg(spec: JobSpec) -> dict[str, Any]:
    return {"name": "lora", "targets": ["q", "v"], "r": spec.r, "alpha": spec.alpha, "dropout": 0.0,
            "init": "kaiming", "init_std": 0.02}


def build_shared_batches(spec: JobSpec, path: Path) -> Path:
    """The `equal` setting's batches, built once: the suite's loader without length grouping (random
    batches, each padded to its longest row, as Trainer's default), `spec.steps` of them, saved to `path`."""
    import torch

    from lora_repro.data.glue import make_loader
    from lora_repro.io import atomic_write

    loaded, encoded = _setup(spec)
    loader = make_loader(encoded, spec.batch_size, shuffle=True, seed=spec.seed,
                         pad_token_id=loaded.tokenizer.pad_token_id, group_by_length=False)
    if spec.steps > len(loader):
        raise ValueError(f"steps={spec.steps} exceeds one epoch ({len(loader)} batches of {spec.batch_size}); "
                         "lower --steps or raise the subset")
    batches = [batch for _, batch in zip(range(spec.steps), loader, strict=False)]
    return atomic_write(path, lambda handle: torch.save(batches, handle), binary=True)


def load_shared_batches(spec: JobSpec) -> list[dict]:
    import torch

    if not spec.batches_path:
        raise ValueError("the equal setting needs JobSpec.batches_path (build_shared_batches writes it)")
    return torch.load(spec.batches_path)


def job_ours(spec: JobSpec, setting: str) -> dict[str, Any]:
    """lora-repro: apply_method + the suite's train_loop, fed the shared batches or the suite's loader."""
    import torch

    from lora_repro.data.glue import make_loader
    from lora_repro.methods import apply_method, count_params
    from lora_repro.tasks.base import TaskData
    from lora_repro.tasks.glue import classifier_loss
    from lora_repro.train import frozen_weights_cast, train_config, train_loop

    loaded, encoded = _setup(spec, setting)
    model = loaded.model
    handle = apply_method(model, lora_method_cfg(spec))
    if setting == "equal":
        batches = load_shared_batches(spec)
    else:
        batches = make_loader(encoded, spec.batch_size, shuffle=True, seed=spec.seed,
                              pad_token_id=loaded.tokenizer.pad_token_id, group_by_length=True)
    if spec.steps > len(batches):
        raise ValueError(f"steps={spec.steps} exceeds one epoch ({len(batches)} batches); the clock times one "
                         "epoch (no evaluation inside the timed steps)")
    compiled = setting == "best" and spec.compile
    if compiled:
        model.compile()
    clock, window = StepClock(), ProfileWindow(spec.skip, spec.profile_steps)

    class Timed:
        def __len__(self) -> int:
            return len(batches)

        def __iter__(self):
            for index, batch in enumerate(clock.around(batches)):
                window.step(index)
                yield batch

    train_cfg = {"epochs": 1, "max_steps": spec.steps, "lr": spec.lr, "weight_decay": 0.0,
                 "adam_betas": [0.9, 0.999], "adam_eps": 1e-8, "warmup_steps": spec.warmup_steps,
                 "grad_clip": spec.grad_clip, "label_smoothing": 0.0,
                 "precision": "bf16" if setting == "best" else "fp32"}
    data = TaskData(Timed(), len(batches), classifier_loss, lambda m: {"none": 0.0}, "none")
    with frozen_weights_cast(model, train_config(train_cfg)):  # as `run` trains (a no-op in fp32)
        state, measured = train_loop(model, handle, data, train_cfg, torch.device("cpu"))
    window.step(spec.steps)
    clock.stamp()  # train_loop stops after `steps` without asking for another batch: close the last step
    return {**clock.stats(spec.steps, spec.skip), **window.result(),
            "trainable_params": count_params(model)["trainable_params_with_head"],
            "train_peak_rss_bytes": measured["memory"]["peak_rss_bytes"],
            "optimizer": f"torch.optim.adamw.AdamW (train.build_optimizer, fused={state.optimizer.defaults['fused']})",
            "precision": train_cfg["precision"], "attention": model.config._attn_implementation,
            "compiled": compiled}


def job_peft(spec: JobSpec, setting: str) -> dict[str, Any]:
    """The peer: peft.get_peft_model + transformers.Trainer, fed the shared batches or its own collator."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    from lora_repro.measure import MemoryMeter

    loaded, encoded = _setup(spec, setting)
    attention = loaded.model.config._attn_implementation
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=spec.r, lora_alpha=spec.alpha, lora_dropout=0.0,
                        target_modules=["query", "value"], modules_to_save=["pooler"])  # + classifier (SEQ_CLS)
    model = get_peft_model(loaded.model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    clock, window = StepClock(), ProfileWindow(spec.skip, spec.profile_steps)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.stamp()

        def on_step_end(self, args, state, control, **kwargs):
            clock.stamp()
            window.step(len(clock.wall) - 1)

    def seen(batch: dict) -> dict:
        clock.saw(batch)
        return batch

    if setting == "equal":
        shared = load_shared_batches(spec)

        class SharedBatches(Trainer):
            def get_train_dataloader(self):
                return torch.utils.data.DataLoader(shared, batch_size=None, shuffle=False, collate_fn=seen)

        trainer_cls, rows, collate = SharedBatches, shared, None
    else:
        rows = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": int(label),
                 **({} if encoded.token_type_ids is None else {"token_type_ids": encoded.token_type_ids[i]})}
                for i, (ids, label) in enumerate(zip(encoded.input_ids, encoded.labels, strict=True))]
        pad = DataCollatorWithPadding(loaded.tokenizer)
        trainer_cls, collate = Trainer, (lambda features: seen(pad(features)))
    options = {"optim": "adamw_torch_fused"} if setting == "equal" else {}
    if setting == "best":
        options = {"bf16": True, "train_sampling_strategy": "group_by_length", "torch_compile": spec.compile}
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=spec.batch_size, max_steps=spec.steps,
            learning_rate=spec.lr, weight_decay=0.0, warmup_steps=spec.warmup_steps, lr_scheduler_type="linear",
            adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=spec.grad_clip,
            save_strategy="no", eval_strategy="no", report_to="none", seed=spec.seed, use_cpu=True,
            dataloader_num_workers=0, disable_tqdm=True, logging_steps=500, **options)
        trainer = trainer_cls(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[Clock()])
        with MemoryMeter("cpu") as meter:  # the same 20 ms sampling thread as ours runs inside train_loop
            trainer.train()
    optimizer = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    return {**clock.stats(spec.steps, spec.skip), **window.result(), "trainable_params": trainable,
            "train_peak_rss_bytes": meter.peak_rss,
            "optimizer": f"{type(optimizer).__module__}.{type(optimizer).__name__} ({args.optim})",
            "precision": "bf16" if args.bf16 else "fp32", "attention": attention,
            "compiled": bool(args.torch_compile)}


def job_infer(spec: JobSpec) -> dict[str, Any]:
    """Base vs LoRA merged vs LoRA unmerged forward time on SST-2 dev batches, interleaved."""
    import torch

    from lora_repro.bench.variants import same_graph
    from lora_repro.config import group_option
    from lora_repro.data.glue import encode_split, make_loader
    from lora_repro.methods import apply_method, lora
    from lora_repro.models import load_model

    torch.set_num_threads(spec.threads)
    loaded = load_model(spec.model_cfg or group_option("model", spec.model), "seq_cls", num_labels=2, seed=spec.seed)
    base = loaded.model.eval()
    unmerged = copy.deepcopy(base)
    apply_method(unmerged, lora_method_cfg(spec))
    with torch.no_grad():
        for name, param in unmerged.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)  # ΔW ≠ 0, as after training
    merged = lora.merge_and_unload(copy.deepcopy(unmerged))
    models = {"base": base, "merged": merged.eval(), "unmerged": unmerged.eval()}
    dev = encode_split(loaded.tokenizer, spec.task, "dev", max_length=spec.max_length, **spec.data)
    batches = [{k: v for k, v in batch.items() if k != "labels"}
               for batch in make_loader(dev, spec.infer_batch_size, pad_token_id=loaded.tokenizer.pad_token_id)]
    times: dict[str, list[float]] = {name: [] for name in models}
    order = list(models)
    with torch.inference_mode():
        same = torch.allclose(merged(**batches[0]).logits, unmerged(**batches[0]).logits, atol=1e-4, rtol=1e-4)
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
