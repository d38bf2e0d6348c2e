"""Shared test helpers: the tiny families and how to build one."""

from pathlib import Path

from lora_repro.models import load_model

FAMILIES = {"bert": "seq_cls", "roberta": "seq_cls", "deberta-v2": "seq_cls", "gpt2": "causal_lm", "llama": "causal_lm"}


def tiny(family: str, seed: int = 0):
    """A tiny random model of `family` with its byte-level tokenizer (a LoadedModel)."""
    return load_model({"name": f"tiny_{family}", "source": "tiny", "family": family}, FAMILIES[family],
                      num_labels=2, seed=seed)


def adapter_path(spec, site: str, block: int) -> str:
    """Where an adapter at `site` of block `block` lives (lora_repro/methods/adapters.py)."""
    prefix = f"{spec.blocks}.{block}"
    if site in ("attn_out", "ffn_out"):
        return f"{prefix}.{getattr(spec, site)}.adapter"
    if site == "ffn_add_norm" and spec.out_norm:  # post-LN: the block's closing LayerNorm is wrapped
        return f"{prefix}.{spec.out_norm}.adapter"
    return f"{prefix}.adapter"  # on the block output (a forward hook)


def write_text(folder: Path, name: str, text: str) -> Path:
    """A UTF-8 text file in `folder` (scorer inputs in the tests)."""
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path
