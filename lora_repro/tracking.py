"""Experiment tracking: wandb (offline unless a key is set) or nothing.

The results store is the source of truth; wandb mirrors it for browsing: the resolved config,
per-epoch metrics, parameter counts, timing and memory, grouped by experiment and tagged by
task, method and rank.
"""

from __future__ import annotations

import os
from typing import Any


class NoTracker:
    def log_params(self, params: dict) -> None: ...
    def log_epoch(self, entry: dict) -> None: ...
    def log_record(self, record: dict) -> None: ...
    def finish(self) -> None: ...


class WandbTracker(NoTracker):
    def __init__(self, cfg: dict, key: str):
        import wandb

        logger = cfg["logger"]
        mode = logger.get("mode") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        method = cfg["method"]
        tags = [cfg["task"]["name"], method["name"], cfg.get("scale", "")]
        if "r" in method:
            tags.append(f"r={method['r']}")
        self.run = wandb.init(
            project=logger.get("project", "lora-repro"), entity=logger.get("entity"), mode=mode,
            group=cfg["experiment_name"], name=f"{cfg['task']['name']}-{method['name']}-s{cfg['seed']}-{key[:6]}",
            tags=[t for t in tags if t], config=cfg, reinit="finish_previous", dir=logger.get("dir"),
        )

    def log_params(self, params: dict) -> None:
        self.run.summary.update(params)

    def log_epoch(self, entry: dict) -> None:
        self.run.log({k: v for k, v in entry.items() if isinstance(v, (int, float))}, step=entry["epoch"])

    def log_record(self, record: dict) -> None:
        flat: dict[str, Any] = {}
        for section in ("best", "params", "timing", "memory"):
            for k, v in record[section].items():
                if isinstance(v, (int, float)):
                    flat[f"{section}/{k}"] = v
        flat["best_epoch"] = record["best_epoch"]
        self.run.summary.update(flat)

    def finish(self) -> None:
        self.run.finish()


def make_tracker(cfg: dict, key: str) -> NoTracker:
    name = (cfg.get("logger") or {}).get("name", "none")
    if name == "none":
        return NoTracker()
    if name == "wandb":
        return WandbTracker(cfg, key)
    raise ValueError(f"unknown logger {name!r}; use logger=none or logger=wandb")
