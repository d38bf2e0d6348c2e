"""PEFT LoRA adapters out of and into the suite's LoRA layers (lora_repro.methods.lora).

Out: `export_adapter` writes the folder `PeftModel.from_pretrained(base, folder)` reads. The config is
PEFT's own LoraConfig, saved by PEFT. The weights file is written here in PEFT's on-disk layout
(`base_model.model.<module>.lora_A.weight` / `.lora_B.weight`, and the head's plain parameter names
for `modules_to_save`) rather than through `get_peft_model(...).save_pretrained`, because that would
inject PEFT into the suite's model (or need a second copy of the base, double the memory at paper
scale); the round-trip tests load every architecture's export with PEFT to hold the layout to it.

A suite layer with several sliced branches (GPT-2's fused c_attn with rank-r q and v blocks) becomes
one PEFT LoRA over the whole fused output: A stacked, B block-diagonal in the slices' rows, rank the
sum of the ranks. PEFT has one scaling per module, so the first branch's scaling is kept
(lora_alpha = scaling * rank) and the other branches' B blocks are rescaled by their scaling over it.
Modules are named by full path (target_modules, rank_pattern, alpha_pattern) because PEFT matches
names by suffix, and `output.dense` (BERT's MLP out) is also a suffix of `attention.output.dense` (W_o).

In: `load_adapter` lets PEFT itself read the config, match its targets (lists, regexes,
layers_to_transform, rank/alpha patterns, rsLoRA) and load the weights, then turns each PEFT LoRA layer
into a suite LoRALinear with one '' branch over the whole output (PEFT's function class, GPT-2's fused
c_attn included) and unwraps the modules_to_save head, so no PEFT object stays in the model.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftConfig, PeftModel, PeftType
from peft.tuners import lora as peft_lora
from peft.utils import ModulesToSaveWrapper
from safetensors.torch import save_file
from torch import nn

from lora_repro.methods.lora import LoRALinear, lora_layers
from lora_repro.models.arch import ArchSpec, is_head_param, replace_module, spec_for
from lora_repro.schemas import PeftAdapterConfig

PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
ADAPTER = "default"
# LoraConfig options whose forward is not plain (alpha / r) B A x, beyond the fields PEFT itself tags
# as LoRA variants (DoRA, aLoRA, ...): the suite's LoRALinear cannot hold them.
UNSUPPORTED = ("lora_bias", "use_qalora", "trainable_token_indices", "target_parameters", "layer_replication",
               "megatron_config")


class AdapterError(ValueError):
    """An adapter that cannot be exported or applied; the message names it and the fix."""


# --- out -------------------------------------------------------------------------------------------


@dataclass
class FusedUpdate:
    """One suite LoRALinear as a single PEFT LoRA: A (R, in), B (out, R), PEFT scaling alpha / R."""

    lora_A: torch.Tensor
    lora_B: torch.Tensor
    alpha: float

    @property
    def r(self) -> int:
        return self.lora_A.shape[0]


def fuse_branches(layer: LoRALinear) -> FusedUpdate:
    """Stack the branches' A; put each B (rescaled to the first branch's scaling) in its slice's rows."""
    branches = list(layer.branches.values())  # built in the order of layer.slices
    spans = list(layer.slices.values())
    scaling = branches[0].scaling
    lora_a = torch.cat([branch.lora_A.detach() for branch in branches])
    lora_b = lora_a.new_zeros(layer.out_features, lora_a.shape[0])
    column = 0
    for branch, (start, stop) in zip(branches, spans, strict=True):
        lora_b[start:stop, column:column + branch.r] = branch.lora_B.detach() * (branch.scaling / scaling)
        column += branch.r
    return FusedUpdate(lora_a, lora_b, scaling * lora_a.shape[0])


def task_type(model: nn.Module) -> str:
    """PEFT's task type for the suite's two task kinds (it picks the PeftModel subclass on load)."""
    if type(model).__name__.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    if model.can_generate():
        return "CAUSAL_LM"
    raise AdapterError(f"{type(model).__name__} is neither a sequence classifier nor a causal LM; "
                       "the suite exports those two task kinds only")


def head_modules(model: nn.Module, spec: ArchSpec) -> list[str]:
    """The head modules the suite trains with every method, as PEFT's modules_to_save."""
    names = {name for name, _ in model.named_modules()}
    return [head for head in spec.head if head in names]


def peft_config_for(model: nn.Module, updates: Mapping[str, FusedUpdate], base_name: str | None) -> LoraConfig:
    """The LoraConfig that makes PEFT build exactly the fused updates (ranks and alphas per module)."""
    spec = spec_for(model)
    first = next(iter(updates.values()))
    dropouts = {getattr(layer.dropout, "p", 0.0) for layer in lora_layers(model)}
    if len(dropouts) > 1:
        raise AdapterError(f"LoRA layers use different dropouts {sorted(dropouts)}; PEFT holds one lora_dropout")
    return LoraConfig(
        r=first.r,
        lora_alpha=first.alpha,
        target_modules=list(updates),
        rank_pattern={re.escape(path): u.r for path, u in updates.items() if u.r != first.r},
        alpha_pattern={re.escape(path): u.alpha for path, u in updates.items() if u.alpha != first.alpha},
        lora_dropout=dropouts.pop(),
        fan_in_fan_out=spec.conv1d,
        modules_to_save=head_modules(model, spec) or None,
        task_type=task_type(model),
        base_model_name_or_path=base_name,
        bias="none",
    )


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """Refuse a non-empty target before any work: an export never mixes with older files."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AdapterError(f"output folder {out} already exists and is not empty; choose a new folder or remove it")
    return out


def export_adapter(model: nn.Module, out_dir: str | os.PathLike, base_name: str | None = None) -> Path:
    """Write the model's suite LoRA layers and task head as a PEFT adapter folder (atomically)."""
    out = check_out_dir(out_dir)
    layers = {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}
    if not layers:
        raise AdapterError("the model has no suite LoRA layers; only method=lora runs export to PEFT")
    updates = {name: fuse_branches(layer) for name, layer in layers.items()}
    config = peft_config_for(model, updates, base_name)
    spec = spec_for(model)
    tensors = {}
    for name, update in updates.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = update.lora_A
        tensors[f"{PREFIX}{name}.lora_B.weight"] = update.lora_B
    for name, tensor in model.state_dict().items():
        if is_head_param(name, spec):
            tensors[PREFIX + name] = tensor
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        config.save_pretrained(str(tmp))
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE),
                  metadata={"format": "pt"})
        for path in (tmp, tmp / CONFIG_FILE, tmp / WEIGHTS_FILE):  # mkdtemp / safetensors make them private
            path.chmod(0o755 if path.is_dir() else 0o644)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# --- in --------------------------------------------------------------------------------------------


def read_adapter_config(source: str) -> LoraConfig:
    """The adapter's LoraConfig, refused with one line if the suite's LoRA layer cannot compute it."""
    local = Path(source).expanduser()
    if not local.is_dir() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise AdapterError(f"PEFT adapter {source!r}: no such folder, and the hub is offline (HF_HUB_OFFLINE=1). "
                           "Fix: pass a folder holding adapter_config.json, or go online to use a hub id")
    if local.is_dir() and not (local / CONFIG_FILE).is_file():
        raise AdapterError(f"PEFT adapter {source!r} has no {CONFIG_FILE}; "
                           "fix: pass the folder that PeftModel.save_pretrained wrote")
    try:
        config = PeftConfig.from_pretrained(str(local) if local.is_dir() else source)
    except (OSError, ValueError, TypeError) as err:
        raise AdapterError(f"PEFT adapter {source!r}: cannot read its config ({err}); "
                           "fix: pass a PEFT LoRA adapter folder or hub id") from err
    if config.peft_type != PeftType.LORA:
        raise AdapterError(f"PEFT adapter {source!r} is {config.peft_type}, not LoRA; "
                           "the suite applies LoRA adapters only")
    variants = [f.name for f in dataclasses.fields(LoraConfig) if f.metadata.get("is_lora_variant")]
    used = [name for name in (*variants, *UNSUPPORTED) if getattr(config, name, None)]
    if used:
        raise AdapterError(f"PEFT adapter {source!r} uses {', '.join(used)}, which the suite's LoRA layer "
                           "(plain (alpha / r) B A x) does not compute; fix: use a plain LoRA adapter")
    return config


def _suite_layer(layer: nn.Module, name: str, source: str, dropout: float | None) -> LoRALinear:
    """A suite LoRALinear with one branch over all outputs, computing what the PEFT layer computes."""
    if type(layer) is not peft_lora.Linear or ADAPTER in layer.lora_variant:
        raise AdapterError(f"PEFT adapter {source!r}: {name} is a {type(layer).__name__} LoRA "
                           f"{'variant' if ADAPTER in layer.lora_variant else 'layer'}; the suite converts plain "
                           "LoRA on Linear/Conv1D projections only. Fix: target linear projections only")
    lora_a, lora_b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
    rank, scaling = lora_a.shape[0], layer.scaling[ADAPTER]
    p = getattr(layer.lora_dropout[ADAPTER], "p", 0.0) if dropout is None else dropout
    suite = LoRALinear(layer.base_layer, {"": (0, lora_b.shape[0])}, {"": rank}, alpha=scaling * rank,
                       dropout=p, init="kaiming", init_std=0.0)
    (branch,) = suite.branches.values()
    branch.scaling = scaling  # exactly PEFT's, also for rsLoRA (alpha / sqrt(r)) and alpha/rank patterns
    with torch.no_grad():
        branch.lora_A.copy_(lora_a)
        branch.lora_B.copy_(lora_b)
    return suite


def load_adapter(model: nn.Module, source: str, dropout: float | None = None) -> list[str]:
    """Apply a PEFT LoRA adapter (folder, or hub id when online) to `model` in place as suite LoRA layers.

    The adapter's modules_to_save (e.g. the classifier it trained) replace the model's own modules.
    `dropout` overrides the adapter's lora_dropout (for training on). Returns the adapted module paths.
    """
    config = read_adapter_config(source)
    try:
        PeftModel.from_pretrained(model, source, config=config, is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as err:
        raise AdapterError(f"PEFT adapter {source!r} does not fit this model ({str(err).splitlines()[0]}); fix: use "
                           f"the base model it was trained on ({config.base_model_name_or_path})") from err
    adapted = []
    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            replace_module(model, name, lambda wrapper: wrapper.modules_to_save[ADAPTER])
        elif isinstance(module, peft_lora.LoraLayer):
            replace_module(model, name, lambda layer, n=name: _suite_layer(layer, n, source, dropout))
            adapted.append(name)
    if hasattr(model, "peft_config"):
        del model.peft_config  # PEFT's bookkeeping on the wrapped model
    left = [name for name, module in model.named_modules() if type(module).__module__.startswith("peft.")]
    if left:
        raise AdapterError(f"PEFT adapter {source!r} left PEFT modules the suite cannot convert: {left[:3]}")
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_" in name)
    return adapted


def apply(model: nn.Module, spec: ArchSpec, cfg: PeftAdapterConfig) -> None:
    """The method registry entry (method=peft_adapter): cfg.path a folder or hub id, cfg.dropout optional."""
    load_adapter(model, cfg.path, dropout=cfg.dropout)
