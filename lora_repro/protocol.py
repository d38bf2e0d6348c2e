"""A protocol (conf/experiment/*.yaml `protocol:`) as runs: plan every (method, task, seed), run what
the store lacks with init sources first, and write the protocol's tables from the store.

Runs are ordered so a task that others initialise from (`train.init_from_task`: MNLI in the paper,
STS-B at cpu scale) runs before them. Several processes share a protocol either through a queue
folder (`lora_repro.run_queue`: run by run, longest first; what `make reproduce-*` does) or as shards
(`index`/`count`: every count-th method; what the Hydra launchers do, one shard per job). The tables are
written by a call that is neither a shard nor a queue worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from lora_repro import preflight
from lora_repro.config import ConfigError, compose_config, method_label, resolve
from lora_repro.distributed import is_rank_zero, world_size
from lora_repro.paths import results_dir
from lora_repro.report.efficiency import write_efficiency_table
from lora_repro.report.glue import write_glue_table
from lora_repro.report.nlg import write_nlg_table
from lora_repro.run import run
from lora_repro.run_queue import RunQueue, claim_order, expected_seconds, run_id, source_id
from lora_repro.store import RunStore, run_key

log = logging.getLogger("reproduce")


def init_order(plan: list[dict]) -> list[dict]:
    """The plan sorted (stably) so a run's `init_from_task` source of the same method and seed runs first."""
    source = {(method_label(c), c["seed"], c["task"]["name"]): c["train"].get("init_from_task") for c in plan}

    def depth(key: tuple, chain: tuple = ()) -> int:
        if not source.get(key):
            return 0
        if key in chain:
            raise ConfigError(f"train.init_from_task forms a cycle: {' -> '.join(k[2] for k in (*chain, key))}; "
                              "fix the protocol's hparams so one task starts from the pretrained model")
        return 1 + depth((key[0], key[1], source[key]), (*chain, key))

    return sorted(plan, key=lambda c: depth((method_label(c), c["seed"], c["task"]["name"])))


def plan_runs(overrides: Sequence[str], methods: Sequence[str], tasks: Sequence[str],
              seeds: Sequence[int]) -> list[dict]:
    """One resolved config per (method, task, seed), composed with the caller's overrides."""
    plan = []
    for method in methods:
        for task in tasks:
            for seed in seeds:
                composed = compose_config([*overrides, f"task={task}", f"method={method}", f"seed={seed}"])
                plan.append(resolve(OmegaConf.to_container(composed, resolve=True), overrides))
    return plan


def protocol_keys(overrides: Sequence[str], protocol: dict, seeds: Sequence[int]) -> set[str]:
    """The record keys of a protocol's current runs: its tables (and the notebooks) show these runs only."""
    return {run_key(c) for c in plan_runs(overrides, protocol["methods"], protocol["tasks"], seeds)}


def reproduce(overrides: Sequence[str], seeds: int | None = None, shard: tuple[int, int] = (0, 1),
              table_only: bool = False, check_only: bool = False, queue: Path | None = None) -> list[Path]:
    """Run a protocol's missing runs (this shard's methods, or those this process claims from `queue`),
    then write its tables, unless this call is a shard or a queue worker; returns the tables' CSV files
    (none from a shard or a queue worker). `check_only`: check every run (values, data, folders) and
    stop, as `make reproduce-*` does once before it starts its processes."""
    base = compose_config(overrides)
    if seeds is not None and seeds < 1:
        raise ConfigError(f"seeds={seeds}: give a number of seeds >= 1 (seeds 0..N-1), or none for the protocol's")
    if "methods" not in (base.get("protocol") or {}):
        raise ConfigError(f"{' '.join(overrides) or 'no override'} names no protocol (methods, tasks, seeds); use "
                          "+experiment=<protocol>, e.g. glue_cpu (a sweep runs with experiments.run -m)")
    protocol = OmegaConf.to_container(base.protocol, resolve=True)
    seed_list = list(range(seeds)) if seeds is not None else protocol["seeds"]
    index, count = shard
    if queue is not None and (count > 1 or table_only or world_size() > 1):
        raise ConfigError("--queue splits the runs among processes: not with --shard, --table-only (which runs "
                          "nothing) or under torchrun (whose ranks train each run together)")
    queue_worker = RunQueue(queue) if queue is not None else None
    started = time.perf_counter()
    if check_only or not table_only:
        methods = protocol["methods"] if check_only or queue_worker else protocol["methods"][index::count]
        plan = init_order(plan_runs(overrides, methods, protocol["tasks"], seed_list))
        for cfg in plan:  # every run's data and folders before the first run (and its skip lookup)
            preflight.check_run(cfg)
        if check_only:
            return []
        run_plan(plan, queue_worker)
    if count == 1 and queue_worker is None and is_rank_zero():  # under torchrun every rank runs the plan
        wall_s = None if table_only else time.perf_counter() - started
        return write_tables(base, protocol, protocol_keys(overrides, protocol, seed_list), wall_s)
    return []


def run_plan(plan: list[dict], queue: RunQueue | None) -> None:
    """Run `plan` in order, or the runs this process claims from `queue` (longest first by the store's
    newest time for each)."""
    keys = {run_id(c): run_key(c) for c in plan}

    def execute(cfg: dict) -> bool:
        """Run (or find stored) `cfg`; whether it completed."""
        log.info("%s %s seed %d", cfg["task"]["name"], method_label(cfg), cfg["seed"])
        # a source outside the plan: the store's latest match
        return run(cfg, init_key=keys.get(source_id(cfg)))["status"] == "completed"

    if queue is None:
        for number, cfg in enumerate(plan, 1):
            log.info("[%d/%d]", number, len(plan))
            execute(cfg)
        return
    seconds = expected_seconds(RunStore().records(plan[0]["experiment_name"])) if plan else {}
    taken = queue.work(claim_order(plan, seconds), execute)
    log.info("this process took %d of the %d runs", taken, len(plan))


def write_tables(base, protocol: dict, keys: set[str], wall_s: float | None) -> list[Path]:
    """The protocol's tables (GLUE + efficiency, or NLG) from this protocol's records (`keys`) only;
    returns their CSV files."""
    out = results_dir() / "tables"
    name = base.experiment_name
    if base.task.kind == "glue":
        write_glue_table(name, protocol["methods"], protocol["tasks"], base.paper_protocol, out, wall_s, keys=keys)
        write_efficiency_table(name, protocol["methods"], out, keys=keys)
        written = [out / f"glue_{name}.csv", out / f"efficiency_{name}.csv"]
    else:
        write_nlg_table(name, base.task.dataset, protocol["methods"], base.paper_protocol,
                        protocol.get("notes", []), out, wall_s, keys=keys)
        written = [out / f"{base.task.dataset}_{name}.csv"]
    log.info("wrote the table for %s under %s", name, out)
    return written
