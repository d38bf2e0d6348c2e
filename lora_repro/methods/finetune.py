"""The fine-tuning baselines: full fine-tuning, FT^Top2 (last k blocks), BitFit (biases only), and none."""

from __future__ import annotations

from torch import nn

from lora_repro.models.arch import ArchSpec, blocks
from lora_repro.schemas import FineTuneConfig


def apply_none(model: nn.Module, spec: ArchSpec, cfg: FineTuneConfig) -> None:
    """Nothing trains beyond the task head: the untuned (zero-shot) baseline, run with train.epochs=0."""


def apply_full(model: nn.Module, spec: ArchSpec, cfg: FineTuneConfig) -> None:
    """Every weight trains (the head too)."""
    for param in model.parameters():
        param.requires_grad_(True)


def apply_top_k(model: nn.Module, spec: ArchSpec, cfg: FineTuneConfig) -> None:
    """Only the last k transformer blocks train (Li & Liang's FT^Top2 with k=2)."""
    layers = blocks(model, spec)
    k = cfg.top_k
    if k is None or k > len(layers):
        raise ValueError(f"ft_top2: method.top_k={k} must be in [1, {len(layers)}] for a {len(layers)}-block model")
    for block in list(layers)[-k:]:
        for param in block.parameters():
            param.requires_grad_(True)


def apply_bitfit(model: nn.Module, spec: ArchSpec, cfg: FineTuneConfig) -> None:
    """Only bias terms train (Zaken et al. 2021)."""
    biases = [p for n, p in model.named_parameters() if n.endswith(".bias")]
    if not biases:
        raise ValueError(
            f"bitfit: the {spec.family} model has no bias parameters to train "
            "(e.g. Llama has none). Fix: choose another method for this model."
        )
    for param in biases:
        param.requires_grad_(True)
