"""Bottleneck adapters: Houlsby (H), Lin (L), Pfeiffer (P) and AdapterDrop (D).

Written here because PEFT has no bottleneck adapters and AdapterHub's `adapters` pins
transformers 4.57 (LORA_PAPER.md §3.5); each is a ~10-line module. An adapter adapts the output y of
a projection: y + up(act(down(y))), placed before the block's residual add, so the frozen block
around it is untouched. Up-projection starts at zero: the adapted model starts as the base model.

Placement (paper Sec. 5.1 and its baselines):
- adapter_h: after the attention output projection and after the FFN output projection (Houlsby 2019);
- adapter_l: after the FFN only, with its own LayerNorm on the adapter input (Lin et al. 2020);
- adapter_p: after the FFN only (Pfeiffer et al. 2021);
- adapter_d: Houlsby placement with the adapters of the lowest `drop_layers` blocks removed (AdapterDrop).
Count: L_adpt * (2 d r + r + d) + 2 L_LN d, the paper's formula.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lora_repro.models.arch import ArchSpec, blocks, hidden_size

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "tanh": nn.Tanh}


class Adapter(nn.Module):
    """down (d -> r), non-linearity, up (r -> d), residual; optional LayerNorm on the input (Lin)."""

    def __init__(self, d_model: int, bottleneck: int, activation: str, layer_norm: bool, init_std: float):
        super().__init__()
        if bottleneck < 1:
            raise ValueError(f"adapter bottleneck must be >= 1, got {bottleneck}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown adapter activation {activation!r}; use one of {sorted(ACTIVATIONS)}")
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


PLACEMENTS = {
    "adapter_h": ("attn_out", "ffn_out"),
    "adapter_d": ("attn_out", "ffn_out"),
    "adapter_l": ("ffn_out",),
    "adapter_p": ("ffn_out",),
}


def apply(model: nn.Module, spec: ArchSpec, cfg: Mapping) -> None:
    name = cfg["name"]
    placement = cfg.get("placement") or PLACEMENTS[name]
    drop = int(cfg.get("drop_layers", 0))
    layer_norm = bool(cfg.get("layer_norm", name == "adapter_l"))
    d_model = hidden_size(model)
    layers = blocks(model, spec)
    if not 0 <= drop < len(layers):
        raise ValueError(f"drop_layers={drop} must be in [0, {len(layers) - 1}] for a {len(layers)}-block model")
    for index, block in enumerate(layers):
        if index < drop:
            continue
        for where in placement:
            path = getattr(spec, where)
            parent_path, _, child = path.rpartition(".")
            parent = block.get_submodule(parent_path) if parent_path else block
            adapter = Adapter(d_model, int(cfg["bottleneck"]), cfg.get("activation", "relu"), layer_norm,
                              float(cfg.get("init_std", 1e-2)))
            setattr(parent, child, Adapted(getattr(parent, child), adapter))
    for pname, param in model.named_parameters():
        if ".adapter." in pname:
            param.requires_grad_(True)
