"""LoRA (Hu et al., 2021, Sec. 4): h = W0 x + (alpha / r) * B A x, with W0 frozen.

Written here rather than taken from PEFT because the paper's GPT-2 setting adapts only the q and v
slices of the fused c_attn with separate rank-r blocks (PEFT adapts the whole fused projection with
one shared A, a different function class), because the paper's Gaussian init and per-target ranks
must be explicit knobs, and because the layer is the object of study (merge, subspace analysis).
PEFT stays the reference: tests check that this layer matches PEFT's outputs and gradients.

LoRA dropout acts on the layer input, one mask per input for all of a layer's branches: on GPT-2's fused
c_attn the q and v updates see the same dropped input, as loralib's MergedLinear (its one lora_dropout on
the shared x). Before this, each branch drew its own mask; no committed record ran a fused projection with
LoRA dropout (results/runs: GPT-2 records none, the rest single-branch layers, where nothing changes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lora_repro.models.arch import QKV_SLICE, ArchSpec, block_linears, blocks, replace_module
from lora_repro.schemas import LoRAConfig


class LoRABranch(nn.Module):
    """The low-rank update B A of one weight: A (r, in) random, B (out, r) zero, so ΔW = 0 at start."""

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, init: str, init_std: float):
        super().__init__()
        if r < 1 or r > min(in_features, out_features):
            raise ValueError(
                f"LoRA rank r={r} is impossible for a {out_features}x{in_features} weight; "
                f"choose 1 <= r <= {min(in_features, out_features)}"
            )
        self.r = r
        self.scaling = alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        if init == "kaiming":  # loralib and PEFT
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        else:  # the paper text: "random Gaussian"; std as the original GPT-2 code (0.02)
            nn.init.normal_(self.lora_A, std=init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The update for an input that LoRALinear has already passed through its dropout."""
        # scale the rank-r intermediate, not the (tokens x out) product: r/out of the elementwise work
        return (x @ self.lora_A.t() * self.scaling) @ self.lora_B.t()

    def delta_weight(self) -> torch.Tensor:
        """ΔW in (out, in) orientation."""
        return (self.lora_B @ self.lora_A) * self.scaling


class LoRALinear(nn.Module):
    """A frozen nn.Linear or Conv1D plus LoRA branches on whole or sliced outputs.

    `slices` maps a name to the output columns it adapts; one branch ('' -> all columns) for a plain
    projection, two ('q', 'v') for GPT-2's fused c_attn. `merge()` folds ΔW into the base weight so
    inference costs exactly the base graph; `unmerge()` takes it out again. A merged layer returns
    the base output and gives the branches no gradient, so `train()` unmerges (as loralib does):
    training a merged model trains LoRA, never silently nothing.
    """

    def __init__(self, base: nn.Module, slices: Mapping[str, tuple[int, int]], r: Mapping[str, int],
                 alpha: float, dropout: float, init: str, init_std: float):
        super().__init__()
        self.base = base
        self.conv1d = isinstance(base, Conv1D)
        in_features, out_features = (base.weight.shape if self.conv1d else base.weight.shape[::-1])
        self.out_features = out_features
        self.slices = dict(slices)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()  # one mask for every branch
        self.branches = nn.ModuleDict({
            (name or "all"): LoRABranch(in_features, stop - start, r[name], alpha, init, init_std)
            for name, (start, stop) in self.slices.items()
        })
        self.merged = False

    def train(self, mode: bool = True) -> LoRALinear:
        if mode:
            self.unmerge()
        return super().train(mode)

    def _spans(self):
        for name, (start, stop) in self.slices.items():
            yield self.branches[name or "all"], start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        dropped = self.dropout(x)
        for branch, start, stop in self._spans():
            delta = branch(dropped)
            if stop - start == self.out_features:
                out = out + delta
            else:
                out = out + nn.functional.pad(delta, (start, self.out_features - stop))
        return out

    @torch.no_grad()
    def _apply_delta(self, sign: float) -> None:
        for branch, start, stop in self._spans():
            delta = branch.delta_weight().to(self.base.weight.dtype) * sign
            if self.conv1d:
                self.base.weight[:, start:stop] += delta.t()
            else:
                self.base.weight[start:stop] += delta

    def merge(self) -> None:
        if not self.merged:
            self._apply_delta(1.0)
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            self._apply_delta(-1.0)
            self.merged = False


def apply(model: nn.Module, spec: ArchSpec, cfg: LoRAConfig) -> None:
    """Wrap every targeted weight in every block with LoRA (everything else stays frozen)."""
    ranks = cfg.ranks()
    common = dict(alpha=float(cfg.alpha), dropout=cfg.dropout, init=cfg.init, init_std=cfg.init_std)
    for block in blocks(model, spec):
        plan: dict[str, dict[str, tuple[int, int]]] = {}
        rank_by_path: dict[str, dict[str, int]] = {}
        for target in cfg.targets:
            for path in block_linears(block, spec, target):
                module = block.get_submodule(path)
                width = module.weight.shape[1] if isinstance(module, Conv1D) else module.weight.shape[0]
                if spec.fused_qkv and target in QKV_SLICE and path == spec.attn[target]:
                    third = width // 3
                    start = QKV_SLICE[target] * third
                    plan.setdefault(path, {})[target] = (start, start + third)
                    rank_by_path.setdefault(path, {})[target] = ranks[target]
                else:
                    plan.setdefault(path, {})[""] = (0, width)
                    rank_by_path.setdefault(path, {})[""] = ranks[target]
        for path, slices in plan.items():
            replace_module(block, path, lambda base, s=slices, r=rank_by_path[path]: LoRALinear(base, s, r, **common))
    for name, param in model.named_parameters():
        if ".lora_" in name:
            param.requires_grad_(True)


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def merge(model: nn.Module) -> None:
    for layer in lora_layers(model):
        layer.merge()


def unmerge(model: nn.Module) -> None:
    for layer in lora_layers(model):
        layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every ΔW into its base weight and put the base modules back: the base model's graph."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            module.merge()
            replace_module(model, name, lambda layer: layer.base)
    return model
