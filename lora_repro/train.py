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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lora_repro.measure import MemoryMeter
from lora_repro.methods import MethodHandle, method_state_dict

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "ln_", "norm.weight")
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


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas, eps: float) -> torch.optim.AdamW:
    """AdamW over trainable parameters; no decay on biases and norms (as HF Trainer, used by the paper's NLU code)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if any(k in name for k in NO_DECAY) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(betas), eps=eps)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_steps_for(train_cfg: dict, total_steps: int) -> int:
    if train_cfg.get("warmup_steps"):
        return int(train_cfg["warmup_steps"])
    return int(math.ceil(float(train_cfg.get("warmup_ratio") or 0.0) * total_steps))


def autocast(train_cfg: dict, device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for forward passes (`train.precision`); weights and optimizer state stay fp32.

    bf16 autocast runs on CPUs with AVX512-BF16 (1.5-1.7x faster steps on this project's EPYC
    machines) and on CUDA; fp16 needs CUDA and a gradient scaler (see `train_loop`).
    """
    precision = train_cfg.get("precision") or "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision={precision!r} is not one of {sorted(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"train.precision=fp16 needs a CUDA device (got {device}); use bf16 or fp32 on CPU")
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


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
    handle: MethodHandle,
    train_batches: Iterable[dict],
    steps_per_epoch: int,
    evaluate: Callable[[nn.Module], dict[str, float]],
    headline: str,
    train_cfg: dict,
    device: torch.device,
    causal: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    maximize: bool = True,
) -> tuple[TrainState, dict[str, Any]]:
    """Train for train_cfg['epochs'] epochs (or max_steps), evaluating after each; keep the best epoch."""
    epochs = int(train_cfg["epochs"])
    if epochs == 0:
        return evaluate_untrained(model, evaluate, device, train_cfg)
    total = steps_per_epoch * epochs
    if train_cfg.get("max_steps"):
        total = min(total, int(train_cfg["max_steps"]))
    optimizer = build_optimizer(model, float(train_cfg["lr"]), float(train_cfg["weight_decay"]),
                                train_cfg["adam_betas"], float(train_cfg["adam_eps"]))
    state = TrainState(model, optimizer, linear_schedule(optimizer, warmup_steps_for(train_cfg, total), total))
    smoothing = float(train_cfg.get("label_smoothing") or 0.0)
    clip = float(train_cfg.get("grad_clip") or 0.0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    amp = autocast(train_cfg, device)  # built once: the step loop only enters it
    scaler = torch.amp.GradScaler(device.type, enabled=train_cfg.get("precision") == "fp16")
    meter = MemoryMeter(device)
    samples = tokens = 0
    train_seconds = eval_seconds = 0.0
    with meter:
        while state.epoch < epochs and state.step < total:
            model.train()
            started = time.perf_counter()
            running = torch.zeros((), device=device)
            seen = 0
            bar = tqdm(train_batches, total=steps_per_epoch, desc=f"epoch {state.epoch + 1}/{epochs}",
                       leave=False, mininterval=2.0)
            for batch in bar:
                batch = move(handle.prepare_batch(batch), device)
                samples += batch["input_ids"].shape[0]
                tokens += int(batch["attention_mask"].sum())
                with amp:
                    loss = causal_lm_loss(model, batch, smoothing) if causal else model(**batch).loss
                scaler.scale(loss).backward()
                if clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, clip)
                scaler.step(optimizer)
                scaler.update()
                state.scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                running += loss.detach()
                seen += 1
                state.step += 1
                if state.step % LOG_EVERY == 0:
                    bar.set_postfix(loss=f"{running.item() / seen:.4f}")
                if state.step >= total:
                    break
            train_seconds += time.perf_counter() - started
            state.epoch += 1
            started = time.perf_counter()
            model.eval()
            with amp:
                metrics = evaluate(model)
            eval_seconds += time.perf_counter() - started
            entry = {"epoch": state.epoch, "step": state.step, "train_loss": running.item() / max(1, seen), **metrics}
            state.history.append(entry)
            log.info("epoch %d: %s", state.epoch, {k: round(v, 4) for k, v in entry.items() if isinstance(v, float)})
            if on_epoch:
                on_epoch(entry)
            if state.best is None or _better(metrics[headline], state.best[headline], maximize):
                state.best, state.best_epoch = dict(metrics), state.epoch
                state.best_weights = method_state_dict(model)
    timing = {
        "train_s": round(train_seconds, 3),
        "eval_s": round(eval_seconds, 3),
        "steps": state.step,
        "train_samples": samples,
        "train_samples_per_s": round(samples / train_seconds, 3) if train_seconds else None,
        "train_tokens_per_s": round(tokens / train_seconds, 3) if train_seconds else None,
        "step_s": round(train_seconds / state.step, 5) if state.step else None,
    }
    return state, {"timing": timing, "memory": meter.summary(model, optimizer)}


def evaluate_untrained(model: nn.Module, evaluate, device: torch.device,
                       train_cfg: dict | None = None) -> tuple[TrainState, dict[str, Any]]:
    """epochs=0: the model as loaded (plus an identity-initialised method), evaluated once."""
    meter = MemoryMeter(device)
    with meter, autocast(train_cfg or {}, device):
        model.eval()
        started = time.perf_counter()
        metrics = evaluate(model)
    state = TrainState(model, None, None, history=[{"epoch": 0, "step": 0, **metrics}], best=dict(metrics), best_epoch=0)
    return state, {"timing": {"train_s": 0.0, "eval_s": round(time.perf_counter() - started, 3), "steps": 0},
                   "memory": meter.summary(model)}


def _better(value: float, best: float, maximize: bool) -> bool:
    if math.isnan(value):
        return False
    return math.isnan(best) or (value > best if maximize else value < best)
