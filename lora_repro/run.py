"""One run, config to record: resolve and check the config, skip it if the store has it, build the
model, apply the method, train, measure, save the method-only weights, write one record.

Side effects (weights, record, wandb) happen only on the process that owns the run (rank 0).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lora_repro.config import group_option
from lora_repro.methods import apply_method, count_params, load_method_state_dict
from lora_repro.models import load_model
from lora_repro.models.arch import is_head_param, spec_for
from lora_repro.paths import REPO_ROOT, cache_dir
from lora_repro.store import RunStore, new_record, run_key
from lora_repro.tasks import glue as glue_task
from lora_repro.tasks import nlg as nlg_task
from lora_repro.tracking import make_tracker
from lora_repro.train import autocast, train_loop

log = logging.getLogger(__name__)

TASK_FAMILIES = {"glue": glue_task, "nlg": nlg_task}
ALL = "_all"


class ConfigError(ValueError):
    """A run config that cannot run; the message names the key and the fix."""


def resolve(cfg: dict, explicit: dict[str, Any] | None = None) -> dict:
    """Merge a protocol's per-method, per-task values into train/method and drop the protocol block.

    Precedence: config defaults < scale < protocol (`hparams._all`, then `task_hparams[task]`,
    then `hparams[method]._all`, then `hparams[method][task]`) < explicit command-line overrides
    (`explicit`, dotted keys). Keys are train keys, or `method.<key>` for the method config.
    """
    cfg = copy.deepcopy(cfg)
    protocol = cfg.pop("protocol", None) or {}
    task, method = cfg["task"]["name"], method_label(cfg)
    hparams = protocol.get("hparams", {})
    layers = (hparams.get(ALL, {}), protocol.get("task_hparams", {}).get(task, {}),
              hparams.get(method, {}).get(ALL, {}), hparams.get(method, {}).get(task, {}))
    for layer in layers:
        for key, value in layer.items():
            section, _, name = key.rpartition(".")
            cfg[section or "train"][name] = value
    for dotted, value in (explicit or {}).items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    validate(cfg)
    return cfg


def method_label(cfg: dict) -> str:
    """The method's name in tables and records: a variant's label (e.g. adapter_h_6m) or its name."""
    return cfg["method"].get("label", cfg["method"]["name"])


def validate(cfg: dict) -> None:
    """Catch impossible configs before any model is built."""
    train = cfg["train"]
    kind = cfg["task"].get("kind")
    if kind not in TASK_FAMILIES:
        raise ConfigError(f"task.kind={kind!r} has no runner; known: {sorted(TASK_FAMILIES)}")
    for key in ("lr", "batch_size", "max_length"):
        if not isinstance(train.get(key), (int, float)) or train[key] <= 0:
            raise ConfigError(f"train.{key} must be a positive number, got {train.get(key)!r}")
    if not isinstance(train.get("epochs"), int) or train["epochs"] < 0:
        raise ConfigError(f"train.epochs must be an integer >= 0 (0: evaluate the untrained model), got {train.get('epochs')!r}")
    for key in ("train_subset", "eval_subset"):
        if train.get(key) is not None and int(train[key]) < 1:
            raise ConfigError(f"train.{key} must be null or >= 1, got {train[key]!r}")
    if train.get("device") not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device must be auto, cpu or cuda, got {train.get('device')!r}")
    if train["device"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    try:
        autocast(train, device_for(train))
    except ValueError as err:
        raise ConfigError(str(err)) from err


def device_for(train_cfg: dict) -> torch.device:
    if train_cfg["device"] == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(train_cfg["device"])


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def weights_path(experiment: str, key: str) -> Path:
    return cache_dir() / "weights" / experiment / f"{key}.safetensors"


def init_source_key(composed: dict, explicit: dict[str, Any] | None = None) -> str | None:
    """The key of the run a config starts from (`train.init_from_task`): the same composition (protocol,
    method, seed) with the source task in place of its own; None when it starts from the pretrained model."""
    source = resolve(composed, explicit)["train"].get("init_from_task")
    if not source:
        return None
    other = copy.deepcopy(composed)
    other["task"] = group_option("task", source)
    rest = {k: v for k, v in (explicit or {}).items() if k != "train.init_from_task"}
    return run_key(resolve(other, rest))


def _source_record(cfg: dict, store: RunStore, source_task: str, init_key: str | None) -> dict:
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


def _init_from_task(model, cfg: dict, store: RunStore, source_task: str, init_key: str | None = None) -> str:
    """Start the method weights (not the head) from the same protocol/method/seed run on another task."""
    source = _source_record(cfg, store, source_task, init_key)
    saved = source["checkpoint"].get("path")
    path = REPO_ROOT / saved if saved else None
    if path is None or not path.exists():
        raise ConfigError(
            f"train.init_from_task={source_task}: the {source_task} run {source['key']} "
            + (f"saved its weights to {path}, which is gone" if path else "saved no weights (train.save_weights=false)")
            + f". Fix: rerun task={source_task} with force=true train.save_weights=true."
        )
    state = {k: v for k, v in load_file(path).items() if not is_head_param(k, spec_for(model))}
    own = {n: p for n, p in model.named_parameters() if p.requires_grad and not is_head_param(n, spec_for(model))}
    missing = set(own) - set(state)
    if missing:
        raise ConfigError(f"{path} lacks method weights {sorted(missing)[:3]}; was it saved with the same method config?")
    model.load_state_dict(state, strict=False)
    return str(path)


def run(cfg: dict, store: RunStore | None = None, init_key: str | None = None) -> dict:
    """Run one resolved config and return its record (the stored one if it already ran).

    `init_key`: the key of the run named by `train.init_from_task` (see `init_source_key`); without
    it the latest matching run on that task is used, with a warning.
    """
    store = store or RunStore()
    key = run_key(cfg)
    experiment = cfg["experiment_name"]
    if store.exists(experiment, key) and not cfg.get("force"):
        log.info("skip: %s/%s already in the store (force=true to rerun)", experiment, key)
        return store.read(experiment, key)
    train_cfg, task_cfg = cfg["train"], cfg["task"]
    if train_cfg.get("num_threads"):
        torch.set_num_threads(int(train_cfg["num_threads"]))
    torch.manual_seed(int(cfg["seed"]))
    device = device_for(train_cfg)
    family = TASK_FAMILIES[task_cfg["kind"]]
    started = time.perf_counter()
    loaded = load_model(cfg["model"], family.TASK_KIND, family.num_labels(task_cfg["name"]), seed=int(cfg["seed"]),
                        head_dropout=train_cfg.get("cls_dropout"))
    model = loaded.model
    handle = apply_method(model, cfg["method"])
    init_path = None
    if train_cfg.get("init_from_task"):
        init_path = _init_from_task(model, cfg, store, train_cfg["init_from_task"], init_key)
    model.to(device)
    params = count_params(model, handle.spec)
    data = family.prepare(cfg, loaded.tokenizer, handle, device)
    tracker = make_tracker(cfg, key) if is_rank_zero() else make_tracker({"logger": {"name": "none"}}, key)
    tracker.log_params(params)
    state, measured = train_loop(model, handle, data.train_batches, data.steps_per_epoch, data.evaluate,
                                 data.headline, train_cfg, device, data.causal, on_epoch=tracker.log_epoch,
                                 maximize=data.maximize)
    best = dict(state.best or {})
    if state.best_weights is not None:
        load_method_state_dict(model, state.best_weights)
    if data.finish is not None:
        with autocast(train_cfg, device):
            best.update(data.finish(model))
    checkpoint: dict[str, Any] = {"bytes": sum(t.numel() * t.element_size() for t in (state.best_weights or {}).values()),
                                  "init_from": init_path}
    if train_cfg.get("save_weights") and state.best_weights is not None and is_rank_zero():
        path = weights_path(experiment, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in state.best_weights.items()}, str(tmp))
        os.replace(tmp, path)
        checkpoint.update(path=os.path.relpath(path, REPO_ROOT), file_bytes=path.stat().st_size)
    measured["timing"]["wall_s"] = round(time.perf_counter() - started, 3)
    record = new_record(
        cfg, experiment=experiment, task=task_cfg["name"], model=cfg["model"]["name"], method=method_label(cfg),
        seed=int(cfg["seed"]), scale=cfg["scale"], epochs=state.history, best=best, best_epoch=state.best_epoch,
        params={"trainable": params["trainable_params"], "trainable_with_head": params["trainable_params_with_head"],
                "total": params["total_params"]},
        timing=measured["timing"], memory=measured["memory"], checkpoint=checkpoint, status="completed",
    )
    if is_rank_zero():
        store.write(record, force=bool(cfg.get("force")))
        tracker.log_record(record)
    tracker.finish()
    return record


def explicit_overrides(overrides: list[str]) -> dict[str, Any]:
    """Command-line `train.x=v` / `method.x=v` overrides, re-applied after a protocol's values."""
    from omegaconf import OmegaConf

    result = {}
    for item in overrides:
        key, _, value = item.lstrip("+").partition("=")
        if key.startswith(("train.", "method.")) and value:
            result[key] = OmegaConf.to_container(OmegaConf.from_dotlist([f"x={value}"]))["x"]
    return result
