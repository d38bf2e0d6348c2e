"""`make reproduce-glue`, `make reproduce-e2e` (and friends): run what the store lacks for a
protocol, then write its table (GLUE or NLG, by the protocol's task kind).

    python -m experiments.reproduce +experiment=glue_cpu [--seeds 5] [--shard 0/2] [--table-only] [overrides...]

Runs are ordered so a task that others initialise from (`train.init_from_task`: MNLI in the paper,
STS-B at cpu scale) runs before them. `--shard i/n` takes every
n-th method, so n processes can share the machine; the table is written by the unsharded call.
"""

from __future__ import annotations

import argparse
import logging
import time

from omegaconf import OmegaConf

from lora_repro.config import ConfigError, compose_config, method_label, resolve
from lora_repro.paths import results_dir
from lora_repro.report.efficiency import write_efficiency_table
from lora_repro.report.glue import write_glue_table
from lora_repro.report.nlg import write_nlg_table
from lora_repro.run import run
from lora_repro.store import run_key

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. +experiment=glue_cpu train.lr=1e-3")
    parser.add_argument("--seeds", type=int, default=None, help="run seeds 0..N-1 (default: the protocol's)")
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th method starting at i")
    parser.add_argument("--table-only", action="store_true", help="write the table from the store, train nothing")
    args = parser.parse_intermixed_args()  # overrides may follow --shard (the Makefile passes ARGS last)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    base = compose_config(args.overrides)
    protocol = OmegaConf.to_container(base.protocol, resolve=True)
    seeds = list(range(args.seeds)) if args.seeds else protocol["seeds"]
    index, count = (int(x) for x in args.shard.split("/"))
    methods = protocol["methods"][index::count]
    tasks = protocol["tasks"]
    started = time.perf_counter()

    def planned(methods: list[str]) -> list[dict]:
        return [resolve(OmegaConf.to_container(compose_config(
            [*args.overrides, f"task={t}", f"method={m}", f"seed={s}"]), resolve=True), args.overrides)
            for m in methods for t in tasks for s in seeds]

    if not args.table_only:
        plan = init_order(planned(methods))
        keys = {(method_label(c), c["seed"], c["task"]["name"]): run_key(c) for c in plan}
        for number, cfg in enumerate(plan, 1):
            log.info("[%d/%d] %s %s seed %d", number, len(plan), cfg["task"]["name"], method_label(cfg), cfg["seed"])
            source = (method_label(cfg), cfg["seed"], cfg["train"].get("init_from_task"))
            run(cfg, init_key=keys.get(source))  # a source outside the plan: the store's latest match
    if count == 1:
        wall_s = None if args.table_only else time.perf_counter() - started
        out = results_dir() / "tables"
        keys = {run_key(cfg) for cfg in planned(protocol["methods"])}  # only this protocol's runs
        if base.task.kind == "glue":
            write_glue_table(base.experiment_name, protocol["methods"], protocol["tasks"], base.paper_protocol, out,
                             wall_s, keys=keys)
            write_efficiency_table(base.experiment_name, protocol["methods"], out, keys=keys)
        else:
            write_nlg_table(base.experiment_name, base.task.dataset, protocol["methods"], base.paper_protocol,
                            protocol.get("notes", []), out, wall_s, keys=keys)
        log.info("wrote the table for %s under %s", base.experiment_name, out)


if __name__ == "__main__":
    main()
