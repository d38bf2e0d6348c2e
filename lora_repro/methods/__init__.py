"""The paper's methods, one registry: name -> (config family, how to apply it to a model).

`apply_method` types the method config by its family's schema (lora_repro/schemas.py), freezes the
model, lets the method insert its modules and mark what trains, then unfreezes the task head
(every method trains the head; the paper's counts exclude it). Variants of a family (adapter_h/l/p/d,
prefix_embed/layer) are presets of values in conf/method/, applied by the same function.

To add a method: a module here with `apply(model, spec, cfg)`, a schema in schemas.py (or an existing
family), a `METHODS` entry, and a preset in conf/method/<name>.yaml naming its schema.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from lora_repro.interop import peft as peft_interop
from lora_repro.methods import adapters, finetune, lora, prefix
from lora_repro.models.arch import ArchSpec, is_head_param, spec_for
from lora_repro.schemas import ConfigError, MethodConfig

Apply = Callable[[nn.Module, ArchSpec, MethodConfig], object]

# name -> (family: the key of its schema in config.METHOD_SCHEMAS, apply)
METHODS: dict[str, tuple[str, Apply]] = {
    "none": ("finetune", finetune.apply_none),
    "full": ("finetune", finetune.apply_full),
    "ft_top2": ("finetune", finetune.apply_top_k),
    "bitfit": ("finetune", finetune.apply_bitfit),
    "prefix_embed": ("prefix", prefix.apply),
    "prefix_layer": ("prefix", prefix.apply),
    "adapter_h": ("adapter", adapters.apply),
    "adapter_l": ("adapter", adapters.apply),
    "adapter_p": ("adapter", adapters.apply),
    "adapter_d": ("adapter", adapters.apply),
    "lora": ("lora", lora.apply),
    "peft_adapter": ("peft_adapter", peft_interop.apply),
}


class UnknownMethodError(ConfigError):
    """A method name that the registry does not hold."""


@dataclass
class MethodHandle:
    """What the run loop needs from a method after it is applied."""

    name: str
    spec: ArchSpec
    batch_hook: prefix.VirtualTokenHandle | None = None

    def prepare_batch(self, batch: dict) -> dict:
        return self.batch_hook.prepare_batch(batch) if self.batch_hook else batch


def family_of(name: str) -> str:
    """The config family of a method name (finetune, lora, adapter, prefix)."""
    if name not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; known: {sorted(METHODS)} (conf/method/*.yaml)")
    return METHODS[name][0]


def apply_method(model: nn.Module, cfg: Mapping | MethodConfig) -> MethodHandle:
    """Apply the method that `cfg` configures (a typed config, or a dict typed here) in place; return its handle."""
    from lora_repro.config import method_config

    typed = cfg if isinstance(cfg, MethodConfig) else method_config(dict(cfg))
    name = typed.name
    spec = spec_for(model)
    for param in model.parameters():
        param.requires_grad_(False)
    hook = METHODS[name][1](model, spec, typed)
    for pname, param in model.named_parameters():
        if is_head_param(pname, spec):
            param.requires_grad_(True)
    return MethodHandle(name, spec, hook if isinstance(hook, prefix.VirtualTokenHandle) else None)


def count_params(model: nn.Module, spec: ArchSpec | None = None) -> dict[str, int]:
    """Trainable parameters without the head (the paper's convention), with it, and in total."""
    spec = spec or spec_for(model)
    trainable = with_head = total = 0
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:  # tied weights count once
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            with_head += param.numel()
            if not is_head_param(name, spec):
                trainable += param.numel()
    return {"trainable_params": trainable, "trainable_params_with_head": with_head, "total_params": total}


def method_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only what the method trained (method modules + head): the small checkpoint the paper ships."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n: t.detach().clone() for n, t in model.state_dict().items() if n in trainable}


def load_method_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a method-only state dict into a model with the same method applied; keys must match exactly."""
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"method state dict does not fit this model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}. Fix: apply the same method config before loading."
        )
    model.load_state_dict(dict(state), strict=False)
