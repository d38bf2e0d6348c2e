"""The training loop: causal-LM loss at supervised positions, best-epoch choice, warm-up and the
linear schedule, max_steps, no-decay groups, gradient clipping, frozen weights cast once under autocast."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from helpers import tiny
from torch import nn

from lora_repro.config import group_option
from lora_repro.methods import apply_method
from lora_repro.schemas import ConfigError, TrainConfig
from lora_repro.tasks.base import TaskData
from lora_repro.train import (
    build_optimizer,
    causal_lm_loss,
    frozen_weights_cast,
    is_better,
    linear_schedule,
    total_steps_for,
    train_loop,
    warmup_steps_for,
)


def _reference_loss(model: nn.Module, batch: dict, smoothing: float) -> torch.Tensor:
    """The plain way: logits at every position, -100 ignored."""
    batch = dict(batch)
    labels = batch.pop("labels")
    logits = model(**batch).logits[:, :-1].float()
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                       ignore_index=-100, label_smoothing=smoothing)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["lora", "prefix_layer"])
def test_supervised_positions_loss_equals_the_full_logits_loss(family, method):
    model = tiny(family).model.eval()  # no dropout: the two passes must see the same function
    handle = apply_method(model, group_option("method", method))
    torch.manual_seed(0)
    ids = torch.randint(3, 200, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    labels = ids.clone()
    labels[:, :5] = -100  # the prompt
    labels[mask == 0] = -100
    batch = handle.prepare_batch({"input_ids": ids, "attention_mask": mask, "labels": labels})
    expected = _reference_loss(model, batch, 0.1)
    expected_grads = torch.autograd.grad(expected, [p for p in model.parameters() if p.requires_grad])
    loss = causal_lm_loss(model, dict(batch), 0.1)
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("value, best, maximize, better", [
    (0.9, 0.8, True, True), (0.7, 0.8, True, False),
    (0.7, 0.8, False, True), (0.9, 0.8, False, False),  # a loss: lower wins
    (math.nan, 0.8, True, False), (math.nan, 0.8, False, False),  # NaN never wins
    (0.1, math.nan, True, True), (5.0, math.nan, False, True),  # anything beats a NaN best
    (0.8, 0.8, True, False),  # ties keep the earlier epoch
])
def test_best_epoch_choice(value, best, maximize, better):
    assert is_better(value, best, maximize) is better


def test_warmup_then_linear_decay_to_zero():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = linear_schedule(optimizer, warmup_steps=4, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])


def test_warmup_steps_win_over_the_ratio_and_max_steps_caps_the_total():
    assert warmup_steps_for(TrainConfig(warmup_steps=7, warmup_ratio=0.5), 100) == 7
    assert warmup_steps_for(TrainConfig(warmup_ratio=0.06), 101) == 7  # ceil(6.06)
    assert total_steps_for(TrainConfig(epochs=3), 10) == 30
    assert total_steps_for(TrainConfig(epochs=3, max_steps=12), 10) == 12
    assert total_steps_for(TrainConfig(epochs=1, max_steps=50), 10) == 10


@pytest.mark.parametrize("values, key", [
    ({"max_steps": 0}, "train.max_steps"), ({"lr": 0.0}, "train.lr"), ({"batch_size": 0}, "train.batch_size"),
    ({"epochs": -1}, "train.epochs"), ({"precision": "fp8"}, "train.precision"),
])
def test_bad_train_values_name_the_key(values, key):
    with pytest.raises(ConfigError, match=key):
        TrainConfig(**values)


def test_no_decay_on_biases_and_norms():
    model = tiny("bert").model
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.999), eps=1e-8)
    decayed, plain = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(not n.endswith("bias") and "LayerNorm" not in n for n in (names[id(p)] for p in decayed["params"]))
    no_decay = {n for n in names.values() if n.endswith("bias") or "LayerNorm" in n}
    assert {names[id(p)] for p in plain["params"]} == no_decay


def test_adamw_runs_torchs_fused_kernel_on_cpu():
    """torch's CPU default is its for-loop (`make bench-optimizer` compares the two)."""
    optimizer = build_optimizer(tiny("bert").model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.999), eps=1e-8)
    assert optimizer.defaults["fused"] is True and not optimizer.defaults["foreach"]


class _Regression(nn.Module):
    """y = w x: one weight, a loss we can reason about."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))


def _toy_data(batches: int, headline_values: list[float] | None = None) -> TaskData:
    data = [{"input_ids": torch.ones(1, 2, dtype=torch.long), "attention_mask": torch.ones(1, 2)}] * batches
    values = iter(headline_values or [0.0] * 100)
    return TaskData(data, batches, lambda model, batch: ((model.w - 100.0) ** 2).sum(),
                    lambda model: {"score": next(values)}, "score")


def _loop(data: TaskData, **train):
    model = _Regression()
    handle = type("Handle", (), {"prepare_batch": staticmethod(lambda batch: batch)})()
    cfg = {"lr": 1.0, "epochs": 3, "warmup_ratio": 0.0, "weight_decay": 0.0, "adam_eps": 1e-8, **train}
    return model, *train_loop(model, handle, data, cfg, torch.device("cpu"))


def test_max_steps_stops_training_and_the_best_epoch_is_kept():
    _model, state, measured = _loop(_toy_data(4, [0.2, 0.9, 0.5]), max_steps=6)
    assert state.step == 6 and measured["timing"]["steps"] == 6
    assert [e["step"] for e in state.history] == [4, 6]  # the second epoch stops at step 6
    assert state.best_epoch == 2 and state.best == {"score": 0.9}
    _, state_min, _ = _loop(_toy_data(2, [0.2, math.nan, 0.5]))
    assert state_min.best_epoch == 3  # NaN skipped, 0.5 > 0.2


def test_gradient_clipping_clips_the_gradient_the_optimizer_sees():
    # one step on loss (w - 100)^2 from w = 0: gradient -200; AdamW's first moment is 0.1 x the gradient it got
    for clip, grad in ((0.0, -200.0), (0.5, -0.5)):
        model, state, _ = _loop(_toy_data(1), grad_clip=clip, epochs=1)
        assert state.optimizer.state[model.w]["exp_avg"].item() == pytest.approx(0.1 * grad)


def _lora_llama_steps(compile_model: bool) -> dict[str, torch.Tensor]:
    """Four optimizer steps of LoRA on tiny Llama (dropout off), the trained LoRA weights back."""
    torch.manual_seed(0)
    model = tiny("llama").model  # no dropout anywhere: the two runs see the same function
    handle = apply_method(model, group_option("method", "lora"))
    ids = torch.randint(3, 200, (4, 2, 12))
    batches = [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row} for row in ids]
    data = TaskData(batches, len(batches), lambda m, batch: causal_lm_loss(m, dict(batch), 0.0),
                    lambda m: {"loss": 0.0}, "loss", maximize=False)
    cfg = {"lr": 1e-2, "epochs": 1, "warmup_ratio": 0.0, "compile": compile_model}
    train_loop(model, handle, data, cfg, torch.device("cpu"))
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile's CPU backend (inductor) needs a C++ compiler")
def test_train_compile_trains_the_same_weights_through_a_compiled_forward():
    torch._dynamo.reset()
    eager = _lora_llama_steps(False)
    compiled = _lora_llama_steps(True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the forward really went through dynamo
    assert eager.keys() == compiled.keys()
    for name, weight in eager.items():
        torch.testing.assert_close(compiled[name], weight, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("family, method", [("gpt2", "lora"), ("llama", "ft_top2"), ("bert", "bitfit")])
def test_frozen_weights_cast_once_gives_the_same_bf16_step(family, method):
    """Casting frozen weights to bf16 once is what autocast does per call: loss and gradients are bit-equal."""
    loaded = tiny(family)
    model, kind = loaded.model.eval(), ("bert" if family == "bert" else "lm")
    apply_method(model, group_option("method", method))
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA's B starts at zero: give the branch a value, so A gets a gradient
        for name, param in model.named_parameters():
            if name.endswith("lora_B"):
                param.normal_(std=0.1)
    ids = torch.randint(3, 200, (2, 10))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    batch["labels"] = torch.tensor([0, 1]) if kind == "bert" else ids.clone()
    trained = [p for p in model.parameters() if p.requires_grad]
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    bf16 = TrainConfig(precision="bf16")

    def loss_and_grads():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss if kind == "bert" else causal_lm_loss(model, dict(batch), 0.0)
        return loss, torch.autograd.grad(loss, trained)

    expected, expected_grads = loss_and_grads()
    with frozen_weights_cast(model, bf16):
        held = {n: p.dtype for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
        loss, grads = loss_and_grads()
    assert torch.equal(loss, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        assert torch.equal(got, want)
    assert all(g.abs().sum() > 0 for g in grads)  # every trained tensor saw the cast weights
    assert torch.bfloat16 in held.values()
    assert all(dtype == torch.float32 for name, dtype in held.items() if "norm" in name or "embed" in name
               or "wte" in name or "wpe" in name or "ln_" in name)  # autocast runs these in fp32
    assert all(p.dtype == torch.float32 for p in trained)
    assert {n: p for n, p in model.named_parameters() if not p.requires_grad}.keys() == frozen.keys()
    assert all(p is frozen[n] for n, p in model.named_parameters() if not p.requires_grad)  # originals back


def test_frozen_weights_cast_leaves_fp32_runs_alone():
    model = tiny("bert").model
    apply_method(model, group_option("method", "lora"))
    before = {n: p for n, p in model.named_parameters()}
    with frozen_weights_cast(model, TrainConfig(precision="fp32")):
        assert all(p is before[n] for n, p in model.named_parameters())
