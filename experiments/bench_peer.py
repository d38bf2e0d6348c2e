"""`make bench-peer`: lora-repro's LoRA training path vs PEFT + HF Trainer, same job, same machine.

    python -m experiments.bench_peer [--rounds 3] [--steps 100] [--threads 2] [--no-ablation] [--peft-grouped]
                                     [--profile STEPS]

Jobs alternate in one invocation (round i runs them in a rotated order), each in a fresh process;
then the inference check (base vs LoRA merged). Prints per-job step time (median), samples/s,
peak RSS, the ratios lora-repro / PEFT, and writes results/tables/bench_peer.md.
See lora_repro/bench/peer.py for the job definition.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from lora_repro.bench.peer import JobSpec, run_in_subprocess
from lora_repro.paths import cache_dir, results_dir
from lora_repro.report.bench_peer import summarise, to_markdown

log = logging.getLogger("bench_peer")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per job (<= 125: one epoch)")
    parser.add_argument("--skip", type=int, default=10, help="first steps left out of the step statistics")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-ablation", action="store_true", help="skip ours without length grouping")
    parser.add_argument("--peft-grouped", action="store_true",
                        help="also run PEFT + Trainer with train_sampling_strategy='group_by_length'")
    parser.add_argument("--no-infer", action="store_true", help="skip the merged-vs-base inference check")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="also profile STEPS steps of each side (separate jobs) with torch.profiler")
    parser.add_argument("--out", default=None, help="markdown path (default results/tables/bench_peer.md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    spec = JobSpec(steps=args.steps, skip=args.skip, threads=args.threads)
    jobs = ["ours", "peft"] + ([] if args.no_ablation else ["ours_nogroup"]) + (["peft_grouped"] if args.peft_grouped else [])
    started = time.perf_counter()
    load_before = os.getloadavg()
    results: list[dict] = []
    for round_index in range(args.rounds):
        shift = round_index % len(jobs)
        for kind in jobs[shift:] + jobs[:shift]:
            result = run_in_subprocess(kind, spec)
            result["round"] = round_index
            results.append(result)
            log.info("round %d %-12s step %.1f ms  %.1f samples/s  peak RSS %.0f MiB", round_index, kind,
                     1000 * result["step_s_median"], result["samples_per_s"], result["peak_rss_bytes"] / 2**20)
    infer = None
    if not args.no_infer:
        infer = run_in_subprocess("infer", spec)
        log.info("inference: merged/base %.4f, unmerged/base %.4f", infer["ratio_total"]["merged"],
                 infer["ratio_total"]["unmerged"])
    profiles = {}
    if args.profile:
        profiled = JobSpec(**{**asdict(spec), "profile_steps": args.profile, "steps": args.skip + args.profile + 2})
        for kind in ("ours", "peft"):
            result = run_in_subprocess(kind, profiled)
            profiles[kind] = {"table": result["profile"], "seconds": result["profile_s"], "steps": args.profile}
    summary = summarise(results)
    wall = time.perf_counter() - started
    command = "python -m experiments.bench_peer " + " ".join(argv if argv is not None else sys.argv[1:])
    loads = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}
    raw = cache_dir() / "bench_peer_last.json"  # the raw job results, for a look beyond the table
    raw.write_text(json.dumps({"spec": asdict(spec), "results": results, "infer": infer, "profiles": profiles,
                               "loads": loads, "command": command, "wall_s": wall}, indent=1))
    text = to_markdown(summary, results, infer, profiles, spec, command.strip(), wall, loads)
    out = results_dir() / "tables" / "bench_peer.md" if args.out is None else Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    log.info("wrote %s (%.1f min)", out, wall / 60)


if __name__ == "__main__":
    main()
