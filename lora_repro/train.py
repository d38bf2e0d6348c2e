"""The training loop, readable top to bottom: AdamW, linear decay after warm-up, evaluation after
every epoch, the best epoch's method weights kept. All mutable state lives in one `TrainState`.

The hot path does only what the peer (PEFT + HF Trainer) does or less: batches come pre-tokenised
and length-grouped, the loss is read back (`.item()`) once per logging interval, not per step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from lora_repro import distributed
from lora_repro.measure import MemoryMeter
from lora_repro.methods import MethodHandle, method_state_dict
from lora_repro.resume import Checkpointer, restore_rng
from lora_repro.schemas import TrainConfig
from lora_repro.tasks.base import TaskData

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "ln_", "norm.weight")
FUSED_DEVICES = ("cpu", "cuda")  # where torch has a fused AdamW kernel for our weights
LOG_EVERY = 50


@dataclass
class TrainState:
    """Everything the loop changes: a checkpoint of a run is this object's state."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    scheduler: torch.optim.lr_scheduler.LambdaLR | None
    step: int = 0
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    best_epoch: int | None = None
    best_weights: dict[str, torch.Tensor] | None = None
    epoch_batches: int = 0  # batches of the current epoch trained so far (a resumed run skips them)
    epoch_loss: torch.Tensor | None = None  # their summed loss (the epoch's train_loss numerator)
    samples: int = 0
    tokens: int = 0
    train_s: float = 0.0
    eval_s: float = 0.0
    resumed_at: list[int] = field(default_factory=list)  # steps at which a rerun resumed this run


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or inf: the run stops and is recorded as failed (lora_repro.run)."""

    def __init__(self, step: int, loss: float, history: list[dict[str, Any]]) -> None:
        super().__init__(f"training loss is {loss} at step {step}; lower train.lr, set train.grad_clip, "
                         "or use train.precision=fp32")
        self.step, self.loss, self.history = step, loss, history


def check_finite(state: TrainState) -> None:
    """Stop on a NaN/inf loss. Checked where the loss is read back anyway (the logging interval, a
    checkpoint, the epoch's end), not per step: a sync per step would slow the hot path, and a NaN stays
    in the epoch's sum. Before a checkpoint, so a resumed run never starts from NaN weights."""
    mean = state.epoch_loss.item() / max(1, state.epoch_batches)
    if not math.isfinite(mean):
        raise NonFiniteLoss(state.step, mean, state.history)


def train_config(train_cfg: TrainConfig | Mapping) -> TrainConfig:
    """A train config as its typed object; a dict names only what differs from the schema's defaults."""
    return train_cfg if isinstance(train_cfg, TrainConfig) else TrainConfig(**train_cfg)


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas, eps: float) -> torch.optim.AdamW:
    """AdamW over trainable parameters; no decay on biases and norms (as HF Trainer, used by the paper's NLU code).

    Fused (one kernel per tensor, as Trainer's default `adamw_torch_fused`): on CPU torch's default is its
    for-loop, and `make bench-optimizer` measured the fused step at 0.19x its time for E2E full
    fine-tuning (75 vs 398 ms, 2 threads) and 0.13x for GLUE's (16 vs 119 ms, 1 thread).
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if any(k in name for k in NO_DECAY) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in decay + no_decay)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(betas), eps=eps, fused=fused)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base lr over `warmup_steps`, then linear decay to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_steps_for(train_cfg: TrainConfig, total_steps: int) -> int:
    """`warmup_steps` when set, else `warmup_ratio` of the total steps (rounded up)."""
    if train_cfg.warmup_steps:
        return train_cfg.warmup_steps
    return math.ceil(train_cfg.warmup_ratio * total_steps)


def total_steps_for(train_cfg: TrainConfig, steps_per_epoch: int) -> int:
    """epochs x batches, capped by `max_steps` when set."""
    total = steps_per_epoch * train_cfg.epochs
    return total if train_cfg.max_steps is None else min(total, train_cfg.max_steps)


def autocast(train_cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for forward passes (`train.precision`); weights and optimizer state stay fp32.

    bf16 autocast runs on CPUs with AVX512-BF16 (1.5-1.7x faster steps on this project's EPYC
    machines) and on CUDA; fp16 needs CUDA and a gradient scaler (see `train_loop`).
    """
    precision = train_cfg.precision
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"train.precision=fp16 needs a CUDA device (got {device}); use bf16 or fp32 on CPU")
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


@contextlib.contextmanager
def frozen_weights_cast(model: nn.Module, train_cfg: TrainConfig) -> Iterator[None]:
    """Under autocast, hold every frozen matmul weight and bias (nn.Linear, GPT-2's Conv1D) in the autocast
    dtype.

    torch's autocast keeps a low-precision copy only of weights that require grad; a frozen one is cast
    again at every call. For SmolLM2 under bf16 that is every frozen weight read and written at every
    decoded token. Cast once here, the matmuls get the same bf16 values, so every result is bit-identical
    (tested). `make bench-step --compare frozen-cast` on E2E LoRA (SmolLM2, 2 threads): 0.922x the step;
    greedy decoding took 0.68-0.76x in a scratch script. Norms and embeddings stay fp32 (autocast runs them
    in fp32); a tied LM head gets a bf16 copy of its own while the input embedding stays fp32. Trained
    weights are untouched, and the fp32 originals are back on exit. The copies live beside the fp32
    weights for the run (about 270 MB on SmolLM2), made before training, so a record counts them in
    `rss_at_start`, not in what training added. Skipped under DDP, which broadcasts every parameter at
    wrapping.
    """
    dtype = PRECISIONS[train_cfg.precision]
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    if dtype is not None and distributed.world_size() == 1:
        for module in model.modules():
            if not isinstance(module, (nn.Linear, Conv1D)):
                continue
            for name in ("weight", "bias"):
                original = module._parameters.get(name)
                if original is not None and not original.requires_grad and original.dtype == torch.float32:
                    module._parameters[name] = nn.Parameter(original.detach().to(dtype), requires_grad=False)
                    swapped.append((module, name, original))
    try:
        yield
    finally:
        for module, name, original in swapped:
            module._parameters[name] = original


def move(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def causal_lm_loss(model: nn.Module, batch: dict, label_smoothing: float) -> torch.Tensor:
    """Token cross-entropy on supervised (completion) tokens, with label smoothing (Table 11).

    The LM head runs only at positions that predict a supervised token: the head (vocab x d) is a
    fifth of SmolLM2-135M's compute and about half of an E2E sequence is prompt, so this saves
    ~15% of a step. The loss is the same as the mean over model(**batch).logits at those positions.
    """
    labels = batch.pop("labels")
    targets = labels[:, 1:]
    supervised = targets != -100
    hidden = model.base_model(**batch).last_hidden_state[:, :-1][supervised]
    logits = model.get_output_embeddings()(hidden).float()
    return nn.functional.cross_entropy(logits, targets[supervised], label_smoothing=label_smoothing)


def train_loop(
    model: nn.Module,
    method: MethodHandle,
    data: TaskData,
    train_cfg: TrainConfig | Mapping,
    device: torch.device,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    checkpointer: Checkpointer | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """Train for `epochs` epochs (or `max_steps`), evaluating after each; keep the best epoch's weights.

    With a `checkpointer`, a saved resume state is loaded first and the state is saved every
    `train.checkpoint_every` steps, so a killed run continues where it stopped.
    """
    train_cfg = train_config(train_cfg)
    if train_cfg.epochs == 0:
        return evaluate_untrained(model, data.evaluate, device, train_cfg)
    total = total_steps_for(train_cfg, data.steps_per_epoch)
    optimizer = build_optimizer(model, train_cfg.lr, train_cfg.weight_decay, train_cfg.adam_betas, train_cfg.adam_eps)
    state = TrainState(model, optimizer, linear_schedule(optimizer, warmup_steps_for(train_cfg, total), total))
    steps = Stepper(model, method, data, train_cfg, device, checkpointer)
    rng = checkpointer.restore(state, steps.scaler) if checkpointer else None
    meter = MemoryMeter(device)
    with meter:
        # an epoch whose batches were all consumed before a kill still needs its evaluation
        while state.epoch < train_cfg.epochs and (state.step < total or state.epoch_batches):
            steps.train_epoch(state, total, rng)
            rng = None
            evaluate_epoch(state, data, steps.amp, on_epoch)
    timing = {
        "train_s": round(state.train_s, 3),
        "eval_s": round(state.eval_s, 3),
        "steps": state.step,
        "train_samples": state.samples,
        "train_samples_per_s": round(state.samples / state.train_s, 3) if state.train_s else None,
        "train_tokens_per_s": round(state.tokens / state.train_s, 3) if state.train_s else None,
        "step_s": round(state.train_s / state.step, 5) if state.step else None,
        **({"resumed_at_steps": state.resumed_at} if state.resumed_at else {}),
    }
    return state, {"timing": timing, "memory": meter.summary(model, optimizer)}


class Stepper:
    """The optimizer steps of one run: forward (through DDP in several processes), backward, clip, step."""

    def __init__(self, model: nn.Module, method: MethodHandle, data: TaskData, train_cfg: TrainConfig,
                 device: torch.device, checkpointer: Checkpointer | None) -> None:
        self.model, self.method, self.data, self.cfg, self.device = model, method, data, train_cfg, device
        self.checkpointer = checkpointer
        # train.compile: only the training loss (forward included) is compiled; evaluation and decoding stay
        # eager (their shapes change at every batch). The model and its parameters are the same objects.
        loss = distributed.loss_fn(model, data.loss, device)
        self.loss = torch.compile(loss) if train_cfg.compile else loss
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.amp = autocast(train_cfg, device)  # built once: the step loop only enters it
        self.scaler = torch.amp.GradScaler(device.type, enabled=train_cfg.precision == "fp16")

    def train_epoch(self, state: TrainState, total: int, rng: dict | None) -> None:
        """One epoch's remaining batches (all of them unless resumed mid-epoch); `rng`: the resumed RNG states."""
        self.model.train()
        started = time.perf_counter()
        batches = epoch_batches(self.data.train_batches, state.epoch, state.epoch_batches)
        if rng is not None:
            restore_rng(rng)
        if state.epoch_loss is None:
            state.epoch_loss = torch.zeros((), device=self.device)
        bar = tqdm(batches, total=self.data.steps_per_epoch, initial=state.epoch_batches,
                   desc=f"epoch {state.epoch + 1}/{self.cfg.epochs}", leave=False, mininterval=2.0)
        for batch in bar:
            self.step(state, move(self.method.prepare_batch(batch), self.device))
            if state.step % LOG_EVERY == 0:
                check_finite(state)
                bar.set_postfix(loss=f"{state.epoch_loss.item() / state.epoch_batches:.4f}")
            if self.checkpointer and self.checkpointer.due(state.step):
                check_finite(state)
                state.train_s += time.perf_counter() - started
                started = time.perf_counter()
                self.checkpointer.save(state, self.scaler)
            if state.step >= total:
                break
        state.train_s += time.perf_counter() - started
        check_finite(state)

    def step(self, state: TrainState, batch: dict) -> None:
        state.samples += batch["input_ids"].shape[0]
        state.tokens += int(batch["attention_mask"].sum())
        part, weight = distributed.shard(batch)
        with self.amp:
            loss = self.loss(part)
        if weight != 1.0:  # several processes: this rank's share of the global batch loss
            loss = loss * weight
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(state.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.grad_clip)
        self.scaler.step(state.optimizer)
        self.scaler.update()
        state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.epoch_loss += loss.detach()
        state.epoch_batches += 1
        state.step += 1


def epoch_batches(loader: Iterable[dict], epoch: int, skip: int) -> Iterator[dict]:
    """The epoch's batches after the first `skip` (already trained before a resume), in the epoch's order.

    The loader's shuffle is set to `epoch` (`set_epoch` on its batch sampler, its sampler or itself),
    which is what its own per-pass counter would hold in an uninterrupted run.
    """
    holders = (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None), loader)
    order = next((h for h in holders if hasattr(h, "set_epoch")), None)
    if order is not None:
        order.set_epoch(epoch)
    batches = iter(loader)
    for _ in range(skip):
        next(batches)
    return batches


def evaluate_epoch(state: TrainState, data: TaskData, amp: contextlib.AbstractContextManager,
                   on_epoch: Callable[[dict[str, Any]], None] | None) -> None:
    """Close the epoch: evaluate, append its history entry, keep the weights if it is the best so far."""
    state.epoch += 1
    started = time.perf_counter()
    state.model.eval()
    with amp:
        metrics = data.evaluate(state.model)
    state.eval_s += time.perf_counter() - started
    train_loss = distributed.global_mean(state.epoch_loss).item() / max(1, state.epoch_batches)
    entry = {"epoch": state.epoch, "step": state.step, "train_loss": train_loss, **metrics}
    state.epoch_loss, state.epoch_batches = None, 0
    state.history.append(entry)
    log.info("epoch %d: %s", state.epoch, {k: round(v, 4) for k, v in entry.items() if isinstance(v, float)})
    if on_epoch:
        on_epoch(entry)
    if state.best is None or is_better(metrics[data.headline], state.best[data.headline], data.maximize):
        state.best, state.best_epoch = dict(metrics), state.epoch
        state.best_weights = method_state_dict(state.model)


def evaluate_untrained(model: nn.Module, evaluate, device: torch.device,
                       train_cfg: TrainConfig) -> tuple[TrainState, dict[str, Any]]:
    """epochs=0: the model as loaded (plus an identity-initialised method), evaluated once."""
    meter = MemoryMeter(device)
    with meter, autocast(train_cfg, device):
        model.eval()
        started = time.perf_counter()
        metrics = evaluate(model)
    state = TrainState(model, None, None, history=[{"epoch": 0, "step": 0, **metrics}], best=dict(metrics),
                       best_epoch=0)
    return state, {"timing": {"train_s": 0.0, "eval_s": round(time.perf_counter() - started, 3), "steps": 0},
                   "memory": meter.summary(model)}


def is_better(value: float, best: float, maximize: bool) -> bool:
    """Whether an epoch's headline beats the best so far; NaN never wins, and anything beats a NaN best."""
    if math.isnan(value):
        return False
    return math.isnan(best) or (value > best if maximize else value < best)
