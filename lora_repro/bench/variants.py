"""The model forms the latency benchmark times, and the adapter bottlenecks that meet Table 1's budgets.

GPT-2 medium built from its shape with random weights (timing does not depend on the values), in
five forms: the base model (= full fine-tuning = LoRA merged), LoRA unmerged (r=4 on q, v), LoRA
merged (`merge_and_unload`: the base graph again), and Adapter^L / Adapter^H at Figure 5's bottlenecks
plus the bottlenecks that give Table 1's |Θ| with our parameter formula. A second instance of the
base model (`base_copy`) is timed like any variant: its "overhead" is the machine's noise floor, the
yardstick for the merged-vs-base comparison. `merged_zero` is merged LoRA with ΔW = 0: the same
private copies of the adapted weights as `lora_merged` (which shares nothing else with the base
either), so merged / merged_zero isolates the values from where the copies sit in memory.

Every variant shares the frozen base weights with the base model (only the method modules, and the
merged copies of the LoRA-adapted weights, take new memory).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from lora_repro.config import group_option
from lora_repro.methods import apply_method, count_params, lora
from lora_repro.models.tiny import build_tokenizer, tiny_config


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


def same_graph(a: nn.Module, b: nn.Module) -> bool:
    """True when two models have the same module tree (names and types)."""
    left = [(n, type(m)) for n, m in a.named_modules()]
    right = [(n, type(m)) for n, m in b.named_modules()]
    return left == right
