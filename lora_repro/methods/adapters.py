"""Bottleneck adapters: Houlsby (H), Lin (L), Pfeiffer (P) and AdapterDrop (D).

Written here because PEFT has no bottleneck adapters and AdapterHub's `adapters` pins
transformers 4.57 (LORA_PAPER.md §3.5); each is a ~10-line module. An adapter adapts the output y of
a projection: y + up(act(down(y))), placed before the block's residual add, so the frozen block
around it is untouched. Up-projection starts at zero: the adapted model starts as the base model.

The variants are presets of `AdapterConfig` values (conf/method/adapter_*.yaml; paper Sec. 5.1):
- adapter_h: placement [attn_out, ffn_out] (Houlsby 2019);
- adapter_l: placement [ffn_out], layer_norm true (Lin et al. 2020);
- adapter_p: placement [ffn_out] (Pfeiffer et al. 2021);
- adapter_d: Houlsby placement, drop_layers > 0 (AdapterDrop: no adapters in the lowest blocks).
Count: L_adpt * (2 d r + r + d) + 2 L_LN d, the paper's formula.
"""

from __future__ import annotations

import torch
from torch import nn

from lora_repro.models.arch import ArchSpec, blocks, hidden_size, replace_module
from lora_repro.schemas import AdapterConfig

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "tanh": nn.Tanh}


class Adapter(nn.Module):
    """down (d -> r), non-linearity, up (r -> d), residual; optional LayerNorm on the input (Lin)."""

    def __init__(self, d_model: int, bottleneck: int, activation: str, layer_norm: bool, init_std: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.down = nn.Linear(d_model, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, d_model)
        nn.init.normal_(self.down.weight, std=init_std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.up(self.act(self.down(self.norm(y))))


class Adapted(nn.Module):
    """A frozen projection followed by an adapter on its output."""

    def __init__(self, base: nn.Module, adapter: Adapter):
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))


def apply(model: nn.Module, spec: ArchSpec, cfg: AdapterConfig) -> None:
    """Wrap the projections named by `cfg.placement` in every block from `cfg.drop_layers` up."""
    d_model = hidden_size(model)
    layers = blocks(model, spec)
    if cfg.drop_layers >= len(layers):
        raise ValueError(f"method.drop_layers={cfg.drop_layers} must be < {len(layers)} (the model's block count)")
    for block in list(layers)[cfg.drop_layers:]:
        for where in cfg.placement:
            adapter = Adapter(d_model, cfg.bottleneck, cfg.activation, cfg.layer_norm, cfg.init_std)
            replace_module(block, getattr(spec, where), lambda base, adapter=adapter: Adapted(base, adapter))
    for pname, param in model.named_parameters():
        if ".adapter." in pname:
            param.requires_grad_(True)
