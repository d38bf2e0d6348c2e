"""The fine-tuning baselines: full fine-tuning, FT^Top2 (last k blocks), BitFit (biases only), and none."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from lora_repro.models.arch import ArchSpec, blocks


def apply_none(model: nn.Module, spec: ArchSpec, cfg: Mapping) -> None:
    """Nothing trains beyond the task head: the untuned (zero-shot) baseline, run with train.epochs=0."""


def apply_full(model: nn.Module, spec: ArchSpec, cfg: Mapping) -> None:
    """Every weight trains (the head too)."""
    for param in model.parameters():
        param.requires_grad_(True)


def apply_top_k(model: nn.Module, spec: ArchSpec, cfg: Mapping) -> None:
    """Only the last k transformer blocks train (Li & Liang's FT^Top2 with k=2)."""
    layers = blocks(model, spec)
    k = int(cfg.get("top_k", 2))
    if not 1 <= k <= len(layers):
        raise ValueError(f"ft_top2: top_k={k} must be in [1, {len(layers)}] for a {len(layers)}-block model")
    for block in list(layers)[-k:]:
        for param in block.parameters():
            param.requires_grad_(True)


def apply_bitfit(model: nn.Module, spec: ArchSpec, cfg: Mapping) -> None:
    """Only bias terms train (Zaken et al. 2021)."""
    biases = [p for n, p in model.named_parameters() if n.endswith(".bias")]
    if not biases:
        raise ValueError(
            f"bitfit: the {spec.family} model has no bias parameters to train "
            "(e.g. Llama has none). Fix: choose another method for this model."
        )
    for param in biases:
        param.requires_grad_(True)
