"""A stored run, found by key or record path, rebuilt as its trained model (for export to PEFT).

The model is rebuilt as `lora_repro.run.run` built it: the record's model config with its seed (tiny
models and fresh heads are seeded), its method config, then the method-only weights the run saved.
Every check on the input runs before a model is built, so bad input costs one line and no work.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from lora_repro.checkpoints import load_verified, record_weights
from lora_repro.interop.peft import AdapterError, check_out_dir, export_adapter
from lora_repro.methods import load_method_state_dict
from lora_repro.run import build
from lora_repro.store import RunStore, validate_record

RUN_KEY_LENGTH = 16


def find_record(ref: str, store: RunStore | None = None) -> dict[str, Any]:
    """The record at path `ref`, or the one whose key is `ref` in the results store."""
    path = Path(ref)
    if path.suffix == ".json":
        if not path.is_file():
            raise AdapterError(f"no record file {ref}; fix: pass results/runs/<experiment>/<key>.json or a run key")
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            validate_record(record, str(path))
        except ValueError as err:
            raise AdapterError(f"{ref} is not a valid run record ({str(err).splitlines()[0]})") from err
        return record
    store = store or RunStore()
    if len(ref) != RUN_KEY_LENGTH:
        raise AdapterError(f"{ref!r} is neither a record .json path nor a {RUN_KEY_LENGTH}-hex run key; fix: pass "
                           "results/runs/<experiment>/<key>.json or its key")
    try:
        matches = [record for record in store.records() if record["key"] == ref]
    except ValueError as err:  # a damaged record elsewhere in the store
        raise AdapterError(f"cannot search {store.root / 'runs'}: {str(err).splitlines()[0]}") from err
    if not matches:
        raise AdapterError(f"no run with key {ref} in {store.root / 'runs'}; fix: check the key "
                           "(ls results/runs/*/) or pass the record's path")
    return matches[0]


def weights_file(record: dict[str, Any]) -> Path:
    """The run's saved LoRA weights; refuse a non-LoRA run or one without weights."""
    method = record["config"]["method"]["name"]
    if method != "lora":
        raise AdapterError(f"run {record['key']} is a {method} run; only LoRA runs export to PEFT adapters. "
                           "Fix: pick a method=lora run")
    path = record_weights(record)
    if path is None or not path.is_file():
        raise AdapterError(
            f"run {record['key']} " + (f"saved its weights to {path}, which is gone" if path else "saved no weights")
            + ". Fix: rerun it with train.save_weights=true force=true"
        )
    return path


def trained_model(record: dict[str, Any], weights: Path) -> nn.Module:
    """The run's model: base from its model config and seed, its LoRA applied, its saved weights loaded
    (checked against the record's sha256 first)."""
    state = load_verified(weights, record["checkpoint"].get("sha256"))
    loaded, _, _ = build(record["config"])
    load_method_state_dict(loaded.model, state)
    return loaded.model.eval()


def export_record(ref: str, out_dir: str | os.PathLike, store: RunStore | None = None) -> Path:
    """Export the LoRA run named by `ref` (key or record path) as a PEFT adapter folder `out_dir`."""
    record = find_record(ref, store)
    weights = weights_file(record)
    check_out_dir(out_dir)
    model_cfg = record["config"]["model"]
    return export_adapter(trained_model(record, weights), out_dir, base_name=model_cfg.get("hub_id"))
