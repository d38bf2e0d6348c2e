"""`make reproduce-glue`, `make reproduce-e2e` (and friends): run what the store lacks for a
protocol, then write its table (GLUE or NLG, by the protocol's task kind).

    python -m experiments.reproduce +experiment=glue_cpu [--seeds 5] [--queue DIR | --shard 0/2] [--table-only]
        [--wandb] [overrides...]

`--queue DIR`: the processes given the same (existing) folder share the runs one by one, longest first,
so they finish together (`make reproduce-*` starts JOBS of them; lora_repro.run_queue). `--shard i/n`
takes every n-th method (one shard per Hydra launcher job). The table is written by a call with
neither, which with --wandb also logs the tables to the protocol's wandb summary run.
The work is lora_repro.protocol.reproduce. Bad input (a flag, a value, the data, the folders) stops
every run before the first one with one line and exit code 2 (`--debug`: the traceback).
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from lora_repro.config import compose_config
from lora_repro.errors import OneLineParser, one_line_errors, positive_int
from lora_repro.protocol import reproduce
from lora_repro.tracking import add_report_arguments, log_result_files, report_logger


def shard(text: str) -> tuple[int, int]:
    """An argparse `type`: `i/n` with 0 <= i < n."""
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not int(match[1]) < int(match[2]):
        raise argparse.ArgumentTypeError(f"{text!r} is not i/n with 0 <= i < n, e.g. 0/2")
    return int(match[1]), int(match[2])


@one_line_errors("experiments.reproduce")
def main(argv: list[str]) -> None:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. +experiment=glue_cpu train.lr=1e-3")
    parser.add_argument("--seeds", type=positive_int, default=None, help="run seeds 0..N-1 (default: the protocol's)")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--shard", type=shard, default=(0, 1), help="i/n: run every n-th method starting at i")
    split.add_argument("--queue", type=Path, help="a fresh folder shared by the processes that split the runs")
    parser.add_argument("--table-only", action="store_true", help="write the table from the store, train nothing")
    parser.add_argument("--check-only", action="store_true",
                        help="check every run of the protocol (values, data, folders), run nothing")
    add_report_arguments(parser)
    args = parser.parse_intermixed_args(argv)  # overrides may follow --shard (the Makefile passes ARGS last)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    tables = reproduce(args.overrides, seeds=args.seeds, shard=args.shard, table_only=args.table_only,
                       check_only=args.check_only, queue=args.queue)
    if args.wandb and tables:  # the unsharded call wrote the tables
        log_result_files(compose_config(args.overrides).experiment_name, tables, report_logger(args))


if __name__ == "__main__":
    main()
