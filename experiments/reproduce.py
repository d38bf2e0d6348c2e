"""`make reproduce-glue`, `make reproduce-e2e` (and friends): run what the store lacks for a
protocol, then write its table (GLUE or NLG, by the protocol's task kind).

    python -m experiments.reproduce +experiment=glue_cpu [--seeds 5] [--shard 0/2] [--table-only] [overrides...]

`--shard i/n` takes every n-th method, so n processes can share the machine; the table is written
by the unsharded call. The work is lora_repro.protocol.reproduce.
"""

from __future__ import annotations

import argparse
import logging

from lora_repro.protocol import reproduce


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. +experiment=glue_cpu train.lr=1e-3")
    parser.add_argument("--seeds", type=int, default=None, help="run seeds 0..N-1 (default: the protocol's)")
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th method starting at i")
    parser.add_argument("--table-only", action="store_true", help="write the table from the store, train nothing")
    args = parser.parse_intermixed_args()  # overrides may follow --shard (the Makefile passes ARGS last)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    index, count = (int(x) for x in args.shard.split("/"))
    reproduce(args.overrides, seeds=args.seeds, shard=(index, count), table_only=args.table_only)


if __name__ == "__main__":
    main()
