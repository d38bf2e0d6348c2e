"""Experiment tracking: wandb (offline unless a key is set) or nothing.

The results store is the source of truth; wandb mirrors it for browsing: the resolved config (so a
sweep's swept keys, e.g. method.r, are config columns), per-epoch metrics, parameter counts, timing
and memory. A sweep (one experiment) is one wandb group; a run's name carries its swept values; a
report (sweep, GLUE, NLG, latency) logs its tables and figures to a summary run of the group
(`log_report`). Offline runs sync later with `wandb sync <dir>/wandb/offline-run-*`.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lora_repro.config import method_label

# Hydra overrides that choose a protocol or a machine, not a swept value: left out of run names.
_NOT_SWEPT = ("+experiment", "experiment", "hydra", "logger", "force", "scale", "data_root")


def _mode(logger: Mapping) -> str:
    return logger.get("mode") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


def swept_values(cfg: Mapping) -> dict[str, str]:
    """The values that make this run one point of a sweep: `logger.swept` (dotted config keys) if
    given, else the overrides of the current Hydra job (a multirun job's own values)."""
    names = (cfg.get("logger") or {}).get("swept")
    if names:
        return {name: str(_dotted(cfg, name)) for name in names}
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    except ValueError:
        overrides = []
    pairs = ((key.lstrip("+~"), value) for key, _, value in (item.partition("=") for item in overrides))
    return {key: value for key, value in pairs if re.split(r"[./]", key)[0] not in _NOT_SWEPT}


def _dotted(cfg: Mapping, name: str) -> Any:
    node: Any = cfg
    for part in name.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def run_name(cfg: Mapping, key: str) -> str:
    """e.g. `sst2-lora-r=4-seed=1-3fa2c1`: task, method, the swept values, the record key's start."""
    swept = {name.rpartition(".")[2]: value.replace(",", "+").replace(" ", "")
             for name, value in swept_values(cfg).items()}
    swept.setdefault("seed", str(cfg.get("seed")))
    parts = [cfg["task"]["name"], method_label(cfg)]
    parts += [f"{name}={value}" for name, value in swept.items() if name not in ("task", "method")]
    return "-".join([*parts, key[:6]])


class NoTracker:
    def log_params(self, params: dict) -> None: ...
    def log_epoch(self, entry: dict) -> None: ...
    def log_record(self, record: dict) -> None: ...
    def finish(self) -> None: ...


class WandbTracker(NoTracker):
    def __init__(self, cfg: dict, key: str):
        import wandb

        logger = cfg["logger"]
        method = cfg["method"]
        tags = [cfg["task"]["name"], method["name"], cfg.get("scale", "")]
        if "r" in method:
            tags.append(f"r={method['r']}")
        self.run = wandb.init(
            project=logger.get("project", "lora-repro"), entity=logger.get("entity"), mode=_mode(logger),
            group=cfg["experiment_name"], job_type="run", name=run_name(cfg, key),
            tags=[t for t in tags if t], config=cfg, reinit="finish_previous", dir=logger.get("dir"),
        )

    def log_params(self, params: dict) -> None:
        """The parameter counts at the start (the record's `params`), so a running run shows them."""
        self.run.summary.update({f"params/{name}": count for name, count in params.items()})

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


def log_report(group: str, tables: Mapping[str, Any], images: Mapping[str, str | os.PathLike],
               summary: Mapping[str, Any] | None = None, logger: Mapping | None = None) -> Path:
    """Log a report's tables (pandas DataFrames -> wandb Tables) and figures (PNG files -> wandb
    Images) to one summary run of the wandb group `group` (job type "report"); returns its run dir.

    Called by the sweep report and usable by any report (GLUE, NLG, latency) that holds its tables
    as DataFrames and its figures as files.
    """
    import wandb

    logger = dict(logger or {})
    missing = [str(path) for path in images.values() if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"log_report: figure files not found: {missing}; write the figures first")
    run = wandb.init(project=logger.get("project", "lora-repro"), entity=logger.get("entity"), mode=_mode(logger),
                     group=group, job_type="report", name=f"{group}-report", dir=logger.get("dir"),
                     config={"experiment_name": group}, reinit="finish_previous")
    payload: dict[str, Any] = {f"tables/{name}": wandb.Table(dataframe=frame.reset_index(drop=True))
                               for name, frame in tables.items()}
    payload.update({f"figures/{name}": wandb.Image(str(path)) for name, path in images.items()})
    run.log(payload)
    run.summary.update(dict(summary or {}))
    run_dir = Path(run.dir).parent
    run.finish()
    return run_dir


def log_result_files(group: str, paths: list[str | os.PathLike], logger: Mapping | None = None) -> Path:
    """Log files a report already wrote (GLUE, NLG, latency, sweep): each .csv as a wandb Table, each
    .png as a wandb Image, under their file names, to the group's summary run."""
    import pandas as pd

    files = [Path(path) for path in paths]
    unknown = [str(path) for path in files if path.suffix not in (".csv", ".png")]
    if unknown:
        raise ValueError(f"log_result_files takes .csv tables and .png figures; got {unknown}")
    tables = {path.stem: pd.read_csv(path) for path in files if path.suffix == ".csv"}
    return log_report(group, tables, {path.stem: path for path in files if path.suffix == ".png"}, logger=logger)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """`--wandb` and `--wandb-dir` for an entry point that writes a report (sweep, GLUE/NLG, latency)."""
    parser.add_argument("--wandb", action="store_true",
                        help="log the report's tables and figures to its group's wandb summary run "
                        "(offline unless WANDB_API_KEY is set; `wandb sync` later)")
    parser.add_argument("--wandb-dir", default=None, help="where wandb writes its (offline) run")


def report_logger(args: argparse.Namespace) -> dict | None:
    """The logger settings `log_report` takes for parsed `add_report_arguments`, or None without --wandb."""
    return {"dir": args.wandb_dir} if args.wandb else None
