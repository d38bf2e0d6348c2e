"""`make latency`: time one forward pass of GPT-2 medium per method over batch x seq (Table 1, Fig. 5).

    python -m experiments.latency [--grid cpu|paper|smoke] [--device cpu|cuda|auto] [--force]
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
import sys
import time
import uuid

import pandas as pd
import torch

from lora_repro.config import group_option
from lora_repro.bench.latency import cell_label, make_variants, run_grid, thread_noise
from lora_repro.paths import results_dir
from lora_repro.report.latency import write_latency_report
from lora_repro.store import RunStore, new_record, run_key

log = logging.getLogger("latency")
DEFAULT_GRID = {"cpu": "cpu", "cuda": "paper"}


def experiment_name(device: torch.device, grid: str) -> str:
    tag = device.type
    return f"latency_{tag}" if DEFAULT_GRID.get(tag) == grid else f"latency_{tag}_{grid}"


def record_config(grid: dict, variant: dict, device: torch.device, seed: int) -> dict:
    return {"bench": "latency", "grid": grid, "variant": variant, "device": device.type, "seed": seed}


def write_records(result, grid: dict, device: torch.device, seed: int, experiment: str, store: RunStore,
                  force: bool) -> None:
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    for variant in result.variants:
        cells = result.cells[variant.name]
        counts = result.counts[variant.name]
        best = {}
        for b, s, _ in grid.get("table1_cells", []):
            for cell in cells:
                if (cell["batch"], cell["seq"]) == (int(b), int(s)):
                    best[f"{cell_label(b, s)}_median_ms"] = cell["median_ms"]
                    if "overhead_pct" in cell:
                        best[f"{cell_label(b, s)}_overhead_pct"] = cell["overhead_pct"]
        record = new_record(
            record_config(grid, variant.describe(), device, seed), experiment=experiment, task="latency",
            model=grid["model"], method=variant.name, seed=seed, scale=grid["name"], epochs=cells, best=best,
            best_epoch=None,
            params={"trainable": counts["method_params"], "trainable_with_head": counts["method_params"],
                    "total": counts["total_params"]},
            timing={**result.info, "run_id": run_id, "warmup": grid["warmup"], "trials": grid["trials"]},
            memory=result.memory[variant.name],
            checkpoint={"path": None, "bytes": None, "note": "latency benchmark: no weights saved"},
            status="completed",
        )
        store.write(record, force=force)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default=None, help="conf/bench/latency_<grid>.yaml: cpu | paper | smoke "
                        "(default: cpu on a CPU, paper on a GPU)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--trials", type=int, default=None, help="override the grid's timed passes per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="measure again even if the store has this config")
    parser.add_argument("--thread-noise", type=int, nargs="+", metavar="N", default=None,
                        help="instead of the grid: compare the pass noise at these CPU thread counts (batch 1 x "
                        "seq 128, --trials rounds, default 24) to choose the grid's num_threads")
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
    experiment = experiment_name(device, grid_name)
    store = RunStore()
    variants = make_variants(grid, group_option("model", grid["model"]))
    keys = [run_key(record_config(grid, v.describe(), device, args.seed)) for v in variants]
    if not args.force and all(store.exists(experiment, k) for k in keys):
        log.info("%s: the store has this grid already (--force to measure again); rewriting the tables", experiment)
    else:
        result = run_grid(grid, device, args.seed)
        write_records(result, grid, device, args.seed, experiment, store, force=True)
        log.info("measured %d variants in %.1f min", len(variants), result.info["wall_s"] / 60)
    command = "python -m experiments.latency " + " ".join(argv if argv is not None else sys.argv[1:])
    _, md, figure = write_latency_report(experiment, results_dir() / "tables", results_dir() / "figures",
                                         command.strip(), store)
    print(md.read_text())
    log.info("wrote %s and %s", md, figure)


if __name__ == "__main__":
    main()
