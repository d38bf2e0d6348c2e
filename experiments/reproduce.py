"""`make reproduce-glue`, `make reproduce-e2e` (and friends): run what the store lacks for a
protocol, then write its table (GLUE or NLG, by the protocol's task kind).

    python -m experiments.reproduce +experiment=glue_cpu [--seeds 5] [--shard 0/2] [--table-only] [--wandb]
        [overrides...]

`--shard i/n` takes every n-th method, so n processes can share the machine; the table is written
by the unsharded call, which with --wandb also logs the tables to the protocol's wandb summary run.
The work is lora_repro.protocol.reproduce.
"""

from __future__ import annotations

import argparse
import logging

from lora_repro.config import compose_config
from lora_repro.protocol import reproduce
from lora_repro.tracking import add_report_arguments, log_result_files, report_logger


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. +experiment=glue_cpu train.lr=1e-3")
    parser.add_argument("--seeds", type=int, default=None, help="run seeds 0..N-1 (default: the protocol's)")
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th method starting at i")
    parser.add_argument("--table-only", action="store_true", help="write the table from the store, train nothing")
    add_report_arguments(parser)
    args = parser.parse_intermixed_args(argv)  # overrides may follow --shard (the Makefile passes ARGS last)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    index, count = (int(x) for x in args.shard.split("/"))
    tables = reproduce(args.overrides, seeds=args.seeds, shard=(index, count), table_only=args.table_only)
    if args.wandb and tables:  # the unsharded call wrote the tables
        log_result_files(compose_config(args.overrides).experiment_name, tables, report_logger(args))


if __name__ == "__main__":
    main()
