"""`python -m experiments.sweep_report +experiment=sweep_rank_glue` (or `--experiment NAME`): the
sweep's table, figures, φ heat maps and Table 7 analogue from the store; trains nothing.

    python -m experiments.sweep_report --experiment sweep_rank_glue [--metric best.accuracy] [--wandb]
"""

from __future__ import annotations

import argparse
import logging

from lora_repro.analysis.report import write_sweep_report
from lora_repro.config import compose_config
from lora_repro.errors import OneLineParser, one_line_errors
from lora_repro.preflight import check_folders
from lora_repro.tracking import add_report_arguments, report_logger


@one_line_errors("experiments.sweep_report")
def main(argv: list[str]) -> None:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides naming the sweep (+experiment=sweep_rank_glue)")
    parser.add_argument("--experiment", help="the experiment (store folder) name, instead of +experiment=...")
    parser.add_argument("--metric", help="record column to report (default: the task's headline, BLEU for NLG)")
    add_report_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not args.experiment and not args.overrides:
        parser.error("name the sweep: --experiment NAME or +experiment=sweep_rank_glue")
    name = args.experiment or compose_config(args.overrides).experiment_name
    check_folders()
    for kind, path in write_sweep_report(name, metric=args.metric, wandb_logger=report_logger(args)).items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
