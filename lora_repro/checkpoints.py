"""Method-only weights on disk: save a run's best weights, find a source run, start a model from it.

A run saves only what its method trained (method modules + task head), the small checkpoint the
paper ships, as safetensors under the cache, named by the run's key. `train.init_from_task` starts
a run's method weights (not its head) from the run of the same protocol, method and seed on another
task (the paper: MRPC/RTE/STS-B from MNLI); the caller names that run's key
(`config.init_source_key`), and without one the latest matching completed run is used, with a warning.

The record keeps the file's sha256 (`checkpoint.sha256`); every reader of saved weights (a run's
init source, the PEFT export, the analyses) goes through `load_verified`, so altered or truncated
bytes stop with one line naming the file instead of being used or failing inside safetensors.
Records saved before the checksum have none: their files are only checked to be readable.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

from lora_repro.config import ConfigError, method_label
from lora_repro.io import atomic_write_bytes
from lora_repro.models.arch import is_head_param, spec_for
from lora_repro.paths import REPO_ROOT, cache_dir
from lora_repro.store import RunStore

log = logging.getLogger(__name__)


def weights_path(experiment: str, key: str) -> Path:
    return cache_dir() / "weights" / experiment / f"{key}.safetensors"


def state_bytes(state: dict[str, torch.Tensor] | None) -> int:
    """In-memory size of a method state dict (the record's checkpoint bytes)."""
    return sum(t.numel() * t.element_size() for t in (state or {}).values())


class WeightsError(ConfigError):
    """Saved weights that cannot be trusted (altered, truncated, unreadable); the message names the file."""


def save_method_weights(state: dict[str, torch.Tensor], experiment: str, key: str) -> dict[str, Any]:
    """Write the weights atomically; return the record's checkpoint fields (path relative to the repo,
    size and sha256 of the file's bytes)."""
    path = weights_path(experiment, key)
    data = save({k: v.contiguous() for k, v in state.items()})
    atomic_write_bytes(path, data)
    return {"path": os.path.relpath(path, REPO_ROOT), "file_bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def record_weights(record: Mapping) -> Path | None:
    """Where a record's saved weights are, or None if it saved none: the path the record names (relative
    to the checkout that made it), else the same file under this machine's cache (`$LORA_REPRO_CACHE`),
    so records merged from another checkout find their weights when the cache points at its .cache."""
    saved = (record.get("checkpoint") or {}).get("path")
    if not saved:
        return None
    named = Path(saved) if Path(saved).is_absolute() else REPO_ROOT / saved
    cached = weights_path(record["experiment"], record["key"])
    return cached if not named.is_file() and cached.is_file() else named


def load_verified(path: Path, sha256: str | None) -> dict[str, torch.Tensor]:
    """The tensors in `path`, after checking its bytes against the record's `sha256` (None: not recorded)."""
    data = path.read_bytes()
    fix = "delete it and rerun the run that saved it with force=true"
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise WeightsError(f"{path}: sha256 {hashlib.sha256(data).hexdigest()[:16]}... differs from its record's "
                           f"{sha256[:16]}...: the file was altered or damaged. Fix: {fix}")
    try:
        return load(data)
    except SafetensorError as err:
        raise WeightsError(f"{path}: not a readable safetensors file ({err}); it is truncated or damaged. "
                           f"Fix: {fix}") from None


def source_record(cfg: dict, store: RunStore, source_task: str, init_key: str | None) -> dict:
    """The source run's record: the one keyed `init_key`, else the latest completed run of this
    experiment, method and seed on `source_task` with the same method config."""
    experiment = cfg["experiment_name"]
    if init_key is not None:
        if store.exists(experiment, init_key):
            return store.read(experiment, init_key)
        raise ConfigError(
            f"train.init_from_task={source_task}: the store has no {source_task} run {experiment}/{init_key} "
            f"(the same protocol, method and seed). Fix: run task={source_task} first "
            "(the reproduce driver orders it first)."
        )
    matches = [r for r in store.records(experiment) if r["task"] == source_task and r["status"] == "completed"
               and r["method"] == method_label(cfg) and r["seed"] == cfg["seed"]
               and r["config"]["method"] == cfg["method"]]
    if not matches:
        raise ConfigError(
            f"train.init_from_task={source_task}: no completed {source_task} run of method "
            f"{cfg['method']['name']} seed {cfg['seed']} in experiment {experiment}. "
            f"Fix: run task={source_task} first (the reproduce driver orders it first)."
        )
    latest = max(matches, key=lambda r: r["created_at"])
    log.warning("init_from_task=%s: no source key given; using the latest matching run %s", source_task, latest["key"])
    return latest


def init_from_task(model: nn.Module, cfg: dict, store: RunStore, init_key: str | None = None) -> str:
    """Load the source run's method weights (not its head) into `model`; return the file's path."""
    source_task = cfg["train"]["init_from_task"]
    source = source_record(cfg, store, source_task, init_key)
    path = record_weights(source)
    if path is None or not path.exists():
        raise ConfigError(
            f"train.init_from_task={source_task}: the {source_task} run {source['key']} "
            + (f"saved its weights to {path}, which is gone" if path else "saved no weights (train.save_weights=false)")
            + f". Fix: rerun task={source_task} with force=true train.save_weights=true."
        )
    spec = spec_for(model)
    saved = load_verified(path, source["checkpoint"].get("sha256"))
    state = {k: v for k, v in saved.items() if not is_head_param(k, spec)}
    own = {n for n, p in model.named_parameters() if p.requires_grad and not is_head_param(n, spec)}
    missing = own - set(state)
    if missing:
        raise ConfigError(f"{path} lacks method weights {sorted(missing)[:3]}; "
                          "was it saved with the same method config?")
    model.load_state_dict(state, strict=False)
    return str(path)
