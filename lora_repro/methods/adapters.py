"""Bottleneck adapters: Houlsby (H), Lin (L), Pfeiffer (P) and AdapterDrop (D).

Written here because PEFT has no bottleneck adapters and AdapterHub's `adapters` pins transformers 4.57
(docs/paper_reference.md, "Adapters"). Every variant is one module: f(u) = W_up act(W_down norm(u))
(norm: the adapter's own LayerNorm,
Lin's only; identity otherwise) added to a residual r, Adapter(u, r) = r + f(u). W_up starts at
zero, so an adapted model starts as its base model. The variants differ in where u and r come from
(`method.placement`; the presets in conf/method/adapter_*.yaml hold each variant's values). In a block, x is
a sublayer's input, h its output projection's output (after the model's dropout for ffn_add_norm, before it
for the projection sites), LN the block's closing LayerNorm (post-LN blocks: BERT, RoBERTa, DeBERTa;
`ArchSpec.out_norm`):

- attn_out, ffn_out (Houlsby et al. 2019; the LoRA repo's NLU fork, models/roberta/modeling_roberta.py):
  u = r = h, before the residual add: LN(x + h + f(h)) post-LN, x + h + f(h) pre-LN (GPT-2, Llama). The fork
  puts the adapter after the model's dropout; here it wraps the projection, before it: the same function in
  evaluation, while in training the model's dropout also masks the adapter's update.
- ffn_add_norm (Pfeiffer et al. 2021; AdapterHub SeqBnConfig, whose original_ln_before, residual_before_ln and
  original_ln_after are all True; the fork's `pfeiffer` type): the adapter's residual is r = h, taken before
  the norm; it reads u = LN(h + x); the pretrained norm is applied again after it, with x added back:
      post-LN: out = LN(h + f(LN(h + x)) + x) = LN(s + f(LN(s))), s = x + h  (the same frozen LN both times)
      pre-LN:  out = y + f(y), y = x + h   (AdapterHub passes no norm for GPT-2/Llama blocks: the add is the
                                            block output, and the next block's input norm follows)
- block_out (Lin et al. 2020; zlinao/VGLM modeling_vlm.py, an adapter on every GPT-2 block's output):
  out = H + f(LN_a(H)), H the block's output, LN_a the adapter's own LayerNorm. Pre-LN: H = x + h, the residual
  stream after the MLP's add. Post-LN: H = LN(x + h), after the block's closing LayerNorm, because Lin et al.
  define the adapter on the layer output H_i whatever the block holds; before that LN it would be Pfeiffer's
  design plus a norm.

AdapterDrop (Rücklé et al. 2021): `drop_layers` builds no adapters in the lowest blocks (static, as
AdapterHub's leave_out); `random_drop_max` > 0 (robust AdapterDrop) keeps adapters in every block and skips
those of the lowest k blocks in each training forward pass, k ~ U{0, ..., random_drop_max} from torch's global
generator, so a seeded run draws the same k's (AdapterHub's AdapterDrop notebook: k in {0..10} of RoBERTa-base's
12 blocks); `eval_drop_layers` skips the lowest blocks' adapters at evaluation (0: all active), the inference
saving AdapterDrop measures.
Count: L_adpt * (2 d r + r + d) + 2 L_LN d, the paper's formula (Pfeiffer's norm is the model's own, frozen).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lora_repro.models.arch import ArchSpec, blocks, hidden_size, replace_module
from lora_repro.schemas import AdapterConfig

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "tanh": nn.Tanh}


class DropSchedule:
    """Which blocks' adapters sit out the current forward pass: a forward pre-hook on the whole model.

    Training passes draw k (Robust AdapterDrop); evaluation uses the fixed `eval_drop_layers`.
    """

    def __init__(self, random_drop_max: int, eval_drop_layers: int):
        self.random_drop_max = random_drop_max
        self.eval_drop_layers = eval_drop_layers
        self.skipped = eval_drop_layers

    def __call__(self, model: nn.Module, args: tuple) -> None:
        if not model.training:
            self.skipped = self.eval_drop_layers
        elif self.random_drop_max:
            self.skipped = int(torch.randint(self.random_drop_max + 1, ()))
        else:  # no random drop: training keeps every adapter (and draws nothing from the generator)
            self.skipped = 0

    def active(self, block_index: int) -> bool:
        return block_index >= self.skipped


class Adapter(nn.Module):
    """r + up(act(down(norm(u)))), or r alone while AdapterDrop skips this block."""

    def __init__(self, d_model: int, cfg: AdapterConfig, block_index: int, schedule: DropSchedule | None):
        super().__init__()
        self.norm = nn.LayerNorm(d_model) if cfg.layer_norm else nn.Identity()
        self.down = nn.Linear(d_model, cfg.bottleneck)
        self.act = ACTIVATIONS[cfg.activation]()
        self.up = nn.Linear(cfg.bottleneck, d_model)
        nn.init.normal_(self.down.weight, std=cfg.init_std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.block_index = block_index
        self.schedule = schedule

    def forward(self, u: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if self.schedule is not None and not self.schedule.active(self.block_index):
            return residual
        return residual + self.up(self.act(self.down(self.norm(u))))


class Adapted(nn.Module):
    """A frozen projection followed by an adapter on its output (Houlsby's sites)."""

    def __init__(self, base: nn.Module, adapter: Adapter):
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return self.adapter(y, y)


class AddNormAdapted(Adapted):
    """A post-LN block's closing LayerNorm (base) with Pfeiffer's adapter: LN(s + f(LN(s))), s the residual sum."""

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.base(self.adapter(self.base(s), s))


def _adapt_block_output(block: nn.Module, args: tuple, output):
    """Forward hook: the block's output hidden state H becomes block.adapter(H, H) (tuple outputs: the first)."""
    if isinstance(output, tuple):
        return (block.adapter(output[0], output[0]), *output[1:])
    return block.adapter(output, output)


def _on_block_output(block: nn.Module, spec: ArchSpec, adapter: Adapter) -> None:
    # A hook, not a wrapper: the block keeps its class and parameter names; prepend=True runs it before
    # transformers' own output-recording hooks, so recorded hidden states include the adapter.
    block.adapter = adapter
    block.register_forward_hook(_adapt_block_output, prepend=True)


def _on_ffn_add_norm(block: nn.Module, spec: ArchSpec, adapter: Adapter) -> None:
    if spec.out_norm is None:  # pre-LN: the FFN's add has no norm and is the block output
        _on_block_output(block, spec, adapter)
    else:
        replace_module(block, spec.out_norm, lambda norm: AddNormAdapted(norm, adapter))


def _on_projection(site: str) -> Callable[[nn.Module, ArchSpec, Adapter], None]:
    def place(block: nn.Module, spec: ArchSpec, adapter: Adapter) -> None:
        replace_module(block, getattr(spec, site), lambda base: Adapted(base, adapter))
    return place


PLACEMENTS: dict[str, Callable[[nn.Module, ArchSpec, Adapter], None]] = {
    "attn_out": _on_projection("attn_out"),
    "ffn_out": _on_projection("ffn_out"),
    "ffn_add_norm": _on_ffn_add_norm,
    "block_out": _on_block_output,
}


def _check_depths(cfg: AdapterConfig, n_blocks: int) -> None:
    for key in ("drop_layers", "random_drop_max", "eval_drop_layers"):
        if getattr(cfg, key) >= n_blocks:
            raise ValueError(f"method.{key}={getattr(cfg, key)} must be < {n_blocks} (the model's block count)")


def apply(model: nn.Module, spec: ArchSpec, cfg: AdapterConfig) -> None:
    """Put an adapter at each of `cfg.placement` in every block from `cfg.drop_layers` up."""
    layers = blocks(model, spec)
    _check_depths(cfg, len(layers))
    schedule = None
    if cfg.random_drop_max or cfg.eval_drop_layers:
        schedule = DropSchedule(cfg.random_drop_max, cfg.eval_drop_layers)
        model.register_forward_pre_hook(schedule)
    d_model = hidden_size(model)
    for index, block in enumerate(layers):
        if index < cfg.drop_layers:
            continue
        for site in cfg.placement:
            PLACEMENTS[site](block, spec, Adapter(d_model, cfg, index, schedule))
    for pname, param in model.named_parameters():
        if ".adapter." in pname:
            param.requires_grad_(True)
