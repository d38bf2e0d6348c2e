"""`make latency`: time one forward pass of GPT-2 medium per method over batch x seq (Table 1, Fig. 5).

    python -m experiments.latency [--grid cpu|paper|smoke] [--device cpu|cuda|auto] [--force] [--wandb]
    python -m experiments.latency --thread-noise 1 2     # which CPU thread count times quietest

Grids live in conf/bench/latency_<grid>.yaml (cpu: small, ~35 min on 2 cores; paper: the paper's
batch {1..32} x seq {128, 256, 512}, 100 trials, for a GPU). One record per variant goes to the
store under experiment `latency_<device>` (`latency_<device>_<grid>` for a grid that is not the
device's default); then results/tables/<experiment>.{md,csv} and
results/figures/latency_heatmap_<device>.png are written from the store. A rerun of the same
config is skipped (tables rewritten from the store) unless --force, which replaces that config's
records (earlier runs of it live on in git history only).
"""

from __future__ import annotations

import argparse
import logging

import pandas as pd
import torch

from lora_repro.bench.latency import DEFAULT_GRID, experiment_name, measure_into_store, thread_noise
from lora_repro.config import group_option
from lora_repro.errors import OneLineParser, one_line_errors, positive_int
from lora_repro.paths import results_dir
from lora_repro.preflight import check_folders
from lora_repro.report.latency import write_latency_report
from lora_repro.store import RunStore
from lora_repro.tracking import add_report_arguments, log_result_files, report_logger

log = logging.getLogger("latency")


@one_line_errors("experiments.latency")
def main(argv: list[str]) -> None:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default=None, help="conf/bench/latency_<grid>.yaml: cpu | paper | smoke "
                        "(default: cpu on a CPU, paper on a GPU)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--trials", type=positive_int, default=None, help="override the grid's timed passes per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="measure again even if the store has this config")
    parser.add_argument("--thread-noise", type=positive_int, nargs="+", metavar="N", default=None,
                        help="instead of the grid: compare the pass noise at these CPU thread counts (batch 1 x "
                        "seq 128, --trials rounds, default 24) to choose the grid's num_threads")
    add_report_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is visible; use --device cpu")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    grid_name = args.grid or DEFAULT_GRID[device.type]
    grid = group_option("bench", f"latency_{grid_name}")
    if args.trials:
        grid["trials"] = args.trials
    if args.thread_noise:
        noise = thread_noise(grid, args.thread_noise, args.trials or 24, seed=args.seed)
        print(pd.DataFrame.from_dict(noise, orient="index").rename_axis("threads").to_string())
        return
    check_folders()
    experiment = experiment_name(device, grid_name)
    store = RunStore()
    measure_into_store(grid, device, args.seed, experiment, store, args.force)
    # The caption's "Regenerate" command measures again (the store already holds this grid), whatever rendered it.
    trials = f" --trials {args.trials}" if args.trials else ""
    command = f"python -m experiments.latency --grid {grid_name} --device {device.type}{trials} --force"
    _, md, figure = write_latency_report(experiment, results_dir() / "tables", results_dir() / "figures",
                                         command, store)
    print(md.read_text())
    log.info("wrote %s and %s", md, figure)
    if args.wandb:
        log_result_files(experiment, [md.with_suffix(".csv"), figure], report_logger(args))


if __name__ == "__main__":
    main()
