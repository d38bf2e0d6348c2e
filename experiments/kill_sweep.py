"""Kill a sweep at random points, rerun it to completion, and check the store: every run recorded once.

    python -m experiments.kill_sweep --kills 3 --seed 0 --expect 6 -- \\
        experiment_name=killsweep task=stsb,sst2 seed=0,1,2 model=tiny_llama train.checkpoint_every=2

Each round starts `python -m experiments.run -m <overrides>` in its own session, waits for a
seeded number (0 or 1) of new records, sleeps a seeded random time and SIGKILLs the whole session,
which may land in an import, mid-training, in an evaluation or in a record write. The last round
runs to the end. The check: the experiment's records all read back (none torn), each (task,
method, seed) exactly once, `--expect` of them, and every run recorded before the last round was
skipped by it ("already in the store" in its log) with its record untouched. Prints a JSON summary;
exit 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from lora_repro.paths import REPO_ROOT
from lora_repro.store import RunStore

DEADLINE_S = 600
SKIP_MESSAGE = "already in the store"


def record_times(store: RunStore, experiment: str) -> dict[str, str]:
    """key -> created_at of the experiment's records (reading them validates every one)."""
    if not (store.root / "runs" / experiment).is_dir():
        return {}
    return {r["key"]: r["created_at"] for r in store.records(experiment)}


def start(overrides: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "experiments.run", "-m", *overrides], cwd=REPO_ROOT,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill_round(overrides: list[str], store: RunStore, experiment: str, draw: random.Random, max_delay_s: float,
               log: Path) -> bool:
    """One interrupted round; False if the sweep finished before the kill came."""
    before = len(record_times(store, experiment))
    wanted, delay = before + draw.choice([0, 1]), draw.uniform(0, max_delay_s)
    sweep = start(overrides, log)
    deadline = time.monotonic() + DEADLINE_S
    while sweep.poll() is None and len(record_times(store, experiment)) < wanted and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(delay)  # the random point: what the sweep is doing now is whatever it is doing
    if sweep.poll() is not None:
        return False
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    return True


def check(store: RunStore, experiment: str, expect: int, before_last: dict[str, str], last_log: str) -> list[str]:
    """Every way the store breaks the sweep's contract (empty: it holds)."""
    records = store.records(experiment)
    problems = []
    runs = Counter((r["task"], r["method"], r["seed"]) for r in records)
    problems += [f"{run} recorded {n} times" for run, n in runs.items() if n > 1]
    if len(records) != expect:
        problems.append(f"{len(records)} records, expected {expect}")
    retrained = [r["key"] for r in records if r["key"] in before_last and r["created_at"] != before_last[r["key"]]]
    problems += [f"{key} was retrained by the last round" for key in retrained]
    if last_log.count(SKIP_MESSAGE) < len(before_last):
        problems.append(f"the last round skipped {last_log.count(SKIP_MESSAGE)} runs, {len(before_last)} were stored")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="+", help="the sweep's overrides (must set experiment_name)")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--expect", type=int, required=True, help="how many runs the sweep holds")
    parser.add_argument("--max-delay", type=float, default=5.0, help="seconds: the range of the random kill points")
    parser.add_argument("--logs", type=Path, default=Path("outputs/kill_sweep"))
    args = parser.parse_args(argv)
    names = [o.split("=", 1)[1] for o in args.overrides if o.startswith("experiment_name=")]
    if not names:
        parser.error("give experiment_name=<name>: the check reads that experiment's records")
    experiment, store, draw = names[0], RunStore(), random.Random(args.seed)
    args.logs.mkdir(parents=True, exist_ok=True)
    kills = 0
    for number in range(args.kills):
        if not kill_round(args.overrides, store, experiment, draw, args.max_delay, args.logs / f"round{number}.log"):
            break
        kills += 1
    before_last = record_times(store, experiment)
    last = start(args.overrides, args.logs / "last.log")
    last.wait(DEADLINE_S)
    last_log = (args.logs / "last.log").read_text(errors="replace")
    problems = [] if last.returncode == 0 else [f"the last round exited {last.returncode}"]
    problems += check(store, experiment, args.expect, before_last, last_log)
    print(json.dumps({"kills": kills, "recorded_before_last_round": len(before_last),
                      "skipped_by_last_round": last_log.count(SKIP_MESSAGE),
                      "records": len(record_times(store, experiment)), "problems": problems}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
