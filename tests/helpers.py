"""Shared test helpers: the tiny families and how to build one; a sweep protocol's run at smoke size."""

from pathlib import Path

from lora_repro.models import load_model

# Sweep protocols (MiniLM-L6 at cpu scale) shrunk on the command line, as a multirun job's values would be.
TINY = {"train.train_subset": 32, "train.eval_subset": 16, "train.max_length": 32, "train.batch_size": 8}

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


def tiny_run(root, *overrides: str, **explicit) -> dict:
    """One run of a sweep protocol on tiny BERT at smoke size into the store at `root`; `explicit` are the
    values a multirun job would set (e.g. method.r=4)."""
    from lora_repro.config import resolve_overrides
    from lora_repro.run import run
    from lora_repro.store import RunStore

    values = [f"{key}={value}" for key, value in {**TINY, **explicit}.items()]
    return run(resolve_overrides(["model=tiny_bert", *overrides, *values]), RunStore(root))
