"""One run, config to record: skip it if the store has it (made from the same data: `reusable`), build the
model, apply the method, start from a source run's weights if asked, train, save the method-only weights,
write one record (a failed one, with its reason, when the loss became NaN or inf).

The config comes resolved and validated (`config.resolve`); side effects (weights, record, wandb,
resume state, the NLG test decode) happen only on the process that owns the run (rank 0 under
torchrun or accelerate launch; see lora_repro/distributed.py). With `train.checkpoint_every`, a
killed run's resume state is picked up by the rerun and deleted once the record is written.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from lora_repro import checkpoints, preflight, provenance
from lora_repro.config import ConfigError, device_for, method_label
from lora_repro.distributed import is_rank_zero, setup, wait_for_rank_zero
from lora_repro.dropout import fast_dropout
from lora_repro.io import clean_stale_temps
from lora_repro.methods import MethodHandle, apply_method, count_params, load_method_state_dict
from lora_repro.models import LoadedModel, load_model
from lora_repro.paths import cache_dir, data_root
from lora_repro.resume import Checkpointer, resume_path
from lora_repro.store import RunStore, new_record, run_key
from lora_repro.tasks import family
from lora_repro.tasks.base import TaskFamily
from lora_repro.tracking import make_tracker
from lora_repro.train import NonFiniteLoss, autocast, frozen_weights_cast, train_config, train_loop

log = logging.getLogger(__name__)

__all__ = ["ConfigError", "build", "is_rank_zero", "run"]


def build(cfg: dict) -> tuple[LoadedModel, MethodHandle, TaskFamily]:
    """The run's model with its method applied, before any training, seeded as `run` seeds it.

    The one place that knows how a config becomes a model: `run`, the PEFT export of a stored run and
    the re-created initial LoRA factors of the subspace analysis all build through it.
    """
    tasks = family(cfg["task"]["kind"])
    torch.manual_seed(int(cfg["seed"]))
    loaded = load_model(cfg["model"], tasks.TASK_KIND, tasks.num_labels(cfg["task"]["name"]), seed=int(cfg["seed"]),
                        head_dropout=train_config(cfg["train"]).cls_dropout)
    return loaded, apply_method(loaded.model, cfg["method"]), tasks


class DataMismatchError(ConfigError):
    """A stored run was made from other data than this run would read; the message names both."""


def data_fingerprint(cfg: dict, tasks: TaskFamily) -> dict:
    """The record's `data` field for this config: the data root, the files the task reads, the subset."""
    root = data_root(cfg["data_root"]) if cfg["data_source"] == "local" else None
    subset = {name: cfg["train"][name] for name in ("train_subset", "eval_subset", "subset_seed")}
    return provenance.data_fingerprint(root, cfg["data_source"], tasks.data_files(cfg), subset)


def reusable(stored: dict, data: dict, cfg: dict, where: str) -> bool:
    """Whether the stored record stands for this run (skip it) or it runs again (`stale=rerun`, other code).

    Other data never returns the stored metrics: it stops here, naming both fingerprints and the fix.
    A record without a data or code fingerprint (made before they existed) counts as unknown.
    """
    made_from = stored.get("data")
    if made_from is None:
        log.warning("%s was made before records named their data (data unknown); reusing it", where)
    elif made_from["sha256"] != data["sha256"]:
        raise DataMismatchError(
            f"{where} was made from data {made_from['sha256']} (root {made_from['root']}) but this run reads "
            f"{data['sha256']} (root {data['root']}): {provenance.data_difference(made_from, data)}. Fix: point "
            "data_root/$LORA_REPRO_DATA at the data the record used, or rerun with force=true to replace it")
    if not provenance.is_stale(stored):
        return True
    code = f"code {provenance.record_code(stored)}, this checkout {provenance.code_fingerprint()}"
    if cfg.get("stale", "keep") == "rerun":
        log.info("rerun: %s was made by other code (%s; stale=rerun)", where, code)
        return False
    log.warning("%s was made by other code (%s); reusing it (stale=rerun retrains it)", where, code)
    return True


def run(cfg: dict, store: RunStore | None = None, init_key: str | None = None) -> dict:
    """Run one resolved config and return its record (the stored one if it already ran).

    `init_key`: the key of the run named by `train.init_from_task` (`config.init_source_key`);
    without it the latest matching run on that task is used, with a warning. The machine's side
    (folders, data, hub) is checked first (`preflight.check_run`), before anything is written or the
    store is asked. A stored failed run is trained again; a NaN or inf loss ends the run with a failed
    record that says why (`reason`).
    """
    store = store or RunStore()
    preflight.check_run(cfg)
    key, experiment = run_key(cfg), cfg["experiment_name"]
    for folder in (checkpoints.weights_path(experiment, key).parent, cache_dir() / cfg["task"]["kind"]):
        clean_stale_temps(folder)  # what killed writes of weights and tokenised data left (the store's: RunStore)
    tasks = family(cfg["task"]["kind"])
    inputs = data_fingerprint(cfg, tasks)  # before the store: a missing data root stops here, not at old metrics
    replace = bool(cfg["force"])
    if store.exists(experiment, key) and not replace:
        stored = store.read(experiment, key)
        if stored["status"] != "completed":
            log.warning("rerun: %s/%s is stored as %s (%s)", experiment, key, stored["status"], stored.get("reason"))
        elif reusable(stored, inputs, cfg, f"{experiment}/{key}"):
            log.info("skip: %s/%s already in the store (force=true to rerun)", experiment, key)
            if is_rank_zero():  # killed between writing the record and deleting its resume state
                resume_path(experiment, key).unlink(missing_ok=True)
            return stored
        replace = True
    train_cfg = train_config(cfg["train"])
    if train_cfg.num_threads:
        torch.set_num_threads(train_cfg.num_threads)
    device = setup(device_for(train_cfg.device))
    started = time.perf_counter()
    loaded, handle, _ = build(cfg)
    model = loaded.model
    init_path = checkpoints.init_from_task(model, cfg, store, init_key) if train_cfg.init_from_task else None
    model.to(device)
    params = count_params(model, handle.spec)
    params = {"trainable": params["trainable_params"], "trainable_with_head": params["trainable_params_with_head"],
              "total": params["total_params"]}
    data = tasks.prepare(cfg, loaded.tokenizer, handle, device)
    tracker = make_tracker(cfg if is_rank_zero() else {"logger": {"name": "none"}}, key)
    tracker.log_params(params)
    checkpointer = Checkpointer(resume_path(experiment, key), train_cfg.checkpoint_every, write=is_rank_zero())
    written = {"params": params, "data": inputs}
    with frozen_weights_cast(model, train_cfg), fast_dropout(train_cfg.fast_dropout):
        try:
            state, measured = train_loop(model, handle, data, train_cfg, device, on_epoch=tracker.log_epoch,
                                         checkpointer=checkpointer)
        except NonFiniteLoss as err:
            log.error("run %s/%s failed: %s", experiment, key, err)
            failed = {"epochs": err.history, "best": {}, "best_epoch": None, "timing": {"steps": err.step},
                      "memory": {}, "checkpoint": {"init_from": init_path}}
            return finish(cfg, (store, tracker, checkpointer), {**written, **failed}, replace, "failed", str(err))
        best = dict(state.best or {})
        if state.best_weights is not None:
            load_method_state_dict(model, state.best_weights)
        if data.finish is not None and is_rank_zero():
            with autocast(train_cfg, device):
                best.update(data.finish(model))
    checkpoint = {"bytes": checkpoints.state_bytes(state.best_weights), "init_from": init_path}
    if train_cfg.save_weights and state.best_weights is not None and is_rank_zero():
        checkpoint.update(checkpoints.save_method_weights(state.best_weights, experiment, key))
    measured["timing"]["wall_s"] = round(time.perf_counter() - started, 3)
    outcome = {"epochs": state.history, "best": best, "best_epoch": state.best_epoch, "timing": measured["timing"],
               "memory": measured["memory"], "checkpoint": checkpoint}
    return finish(cfg, (store, tracker, checkpointer), {**written, **outcome}, replace, "completed")


def finish(cfg: dict, sinks: tuple[RunStore, Any, Checkpointer], fields: dict, replace: bool, status: str,
           reason: str | None = None) -> dict:
    """The run's record (completed or failed) from its `fields`, written by rank 0, then its resume state
    deleted (a failed run's too: its rerun starts over); `replace`: a stored record of this key is
    superseded (forced, stale, or a failed run trained again). `sinks`: the store, tracker, checkpointer."""
    store, tracker, checkpointer = sinks
    record = new_record(
        cfg, experiment=cfg["experiment_name"], task=cfg["task"]["name"], model=cfg["model"]["name"],
        method=method_label(cfg), seed=int(cfg["seed"]), scale=cfg["scale"], status=status, reason=reason, **fields,
    )
    if is_rank_zero():
        store.write(record, force=replace)
        checkpointer.discard()
        tracker.log_record(record)
    wait_for_rank_zero()
    tracker.finish()
    return record
