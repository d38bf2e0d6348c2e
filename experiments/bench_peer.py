"""`make bench-peer`: lora-repro's LoRA training path vs PEFT + HF Trainer, same job, same machine.

    python -m experiments.bench_peer [--rounds 3] [--steps 100] [--threads 2] [--settings equal default best]
                                     [--compile] [--profile STEPS] [--no-infer] [--report-only]

Runs `lora_repro.bench.peer.race`, keeps its raw results in results/tables/bench_peer.json and
renders results/tables/bench_peer.md from them (`--report-only`: render again from the JSON).
See lora_repro/bench/peer_jobs.py for the jobs and the three settings.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from lora_repro.bench.peer import race
from lora_repro.bench.peer_jobs import SETTINGS, JobSpec
from lora_repro.errors import BadInput, OneLineParser, one_line_errors, positive_int
from lora_repro.io import atomic_write_text
from lora_repro.paths import cache_dir, results_dir
from lora_repro.preflight import check_folders
from lora_repro.report.bench_peer import to_markdown

log = logging.getLogger("bench_peer")


@one_line_errors("experiments.bench_peer")
def main(argv: list[str]) -> None:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--steps", type=positive_int, default=100, help="optimizer steps per job (<= 125: one epoch)")
    parser.add_argument("--skip", type=int, default=10, help="first steps left out of the step statistics")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--compile", action="store_true", help="torch.compile both sides in the `best` setting")
    parser.add_argument("--no-infer", action="store_true", help="skip the merged-vs-base inference check")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="also profile STEPS steps of each side (separate jobs) with torch.profiler")
    parser.add_argument("--out", default=None, help="markdown path (default results/tables/bench_peer.md)")
    parser.add_argument("--report-only", action="store_true", help="render the markdown from the saved JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = results_dir() / "tables" / "bench_peer.md" if args.out is None else Path(args.out)
    raw_path = out.with_suffix(".json")
    check_inputs(args, raw_path)
    if args.report_only:
        raw = json.loads(raw_path.read_text())
    else:
        spec = JobSpec(steps=args.steps, skip=args.skip, threads=args.threads, compile=args.compile)
        raw = race(spec, args.rounds, tuple(args.settings), cache_dir() / "bench_peer_batches.pt",
                   infer=not args.no_infer, profile_steps=args.profile)
        raw["command"] = " ".join(["python -m experiments.bench_peer", *argv])
        atomic_write_text(raw_path, json.dumps(raw, indent=1) + "\n")
    text = to_markdown(raw, raw["command"])
    atomic_write_text(out, text)
    print(text)
    log.info("wrote %s and %s (%.1f min)", out, raw_path, raw["wall_s"] / 60)


def check_inputs(args: argparse.Namespace, raw_path: Path) -> None:
    """What the flags need before a job starts: steps left after the skipped ones, the saved JSON for
    --report-only, writable results and cache folders."""
    if not 0 <= args.skip < args.steps:
        raise BadInput(f"--skip {args.skip} leaves no step of --steps {args.steps} to measure; "
                       "use 0 <= --skip < --steps")
    if args.report_only and not raw_path.is_file():
        raise BadInput(f"--report-only needs {raw_path}, which does not exist; run without --report-only first")
    check_folders(raw_path.parent)


if __name__ == "__main__":
    main()
