"""The race against PEFT + HF Trainer: each job in a fresh process, rounds in a rotating order.

A job (`<side>_<setting>`, see `bench.peer_jobs`) runs in its own interpreter
(`python -m lora_repro.bench.peer <job> '<json spec>'`) so that its memory is its own: the resident
set right after the side's imports, the peak (`ru_maxrss`: imports, model, data and training), and
their difference. It prints one JSON line. `race` builds the `equal` setting's batches once, runs
`rounds` rounds of every job (round i starts at a different job, so drift hits all alike), then the
inference check and, if asked, a profiled run of each side.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from lora_repro.bench.peer_jobs import SETTINGS, SIDES, JobSpec, build_shared_batches, job_infer, job_ours, job_peft
from lora_repro.bench.steps import environment, peak_rss_bytes, rss_bytes

log = logging.getLogger(__name__)
RESULT_PREFIX = "BENCH_RESULT "
# What each side imports before it builds anything: the harness (model loading, data) on both sides,
# then the framework. RSS after these imports is the side's fixed cost.
IMPORTS = {
    "common": ("torch", "transformers", "lora_repro.models", "lora_repro.data.glue", "lora_repro.measure"),
    "ours": ("lora_repro.methods", "lora_repro.train"),
    "peft": ("peft", "transformers.trainer"),
}


def job_names(settings: tuple[str, ...] = SETTINGS) -> list[str]:
    return [f"{side}_{setting}" for setting in settings for side in SIDES]


def run_job(kind: str, spec: JobSpec) -> dict[str, Any]:
    """One job in this process: `<side>_<setting>` or `infer`."""
    side, _, setting = kind.partition("_")
    if kind != "infer" and (side not in SIDES or setting not in SETTINGS):
        raise ValueError(f"unknown job {kind!r}; use one of {job_names()} or 'infer'")
    for module in IMPORTS["common"] + IMPORTS.get(side, ()):
        importlib.import_module(module)
    rss_after_imports = rss_bytes()
    started = time.perf_counter()
    result = job_infer(spec) if kind == "infer" else {"ours": job_ours, "peft": job_peft}[side](spec, setting)
    return {**result, "job": kind, "side": side, "setting": setting, "job_wall_s": time.perf_counter() - started,
            "rss_after_imports_bytes": rss_after_imports, "peak_rss_bytes": peak_rss_bytes(), "env": environment()}


def run_in_subprocess(kind: str, spec: JobSpec, timeout: float = 1800) -> dict[str, Any]:
    """Run one job in a fresh interpreter and return its result dict."""
    from lora_repro.paths import REPO_ROOT

    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(spec.threads),
           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-m", "lora_repro.bench.peer", kind, json.dumps(asdict(spec))],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT, check=False)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f"bench job {kind!r} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")


def race(spec: JobSpec, rounds: int, settings: tuple[str, ...], batches_path: Path, infer: bool = True,
         profile_steps: int = 0) -> dict[str, Any]:
    """Every job of `settings`, `rounds` times in a rotating order; the raw results for the report."""
    started, load_before = time.perf_counter(), os.getloadavg()
    profile_len = spec.skip + profile_steps + 2  # a profiled job's steps: warm-up, the window, and its close
    if "equal" in settings:  # enough shared batches for the timed jobs and the profiled ones
        longest = replace(spec, steps=max(spec.steps, profile_len if profile_steps else 0))
        spec = replace(spec, batches_path=str(build_shared_batches(longest, batches_path)))
    jobs, results = job_names(settings), []
    for round_index in range(rounds):
        shift = round_index % len(jobs)
        for kind in jobs[shift:] + jobs[:shift]:
            result = {**run_in_subprocess(kind, spec), "round": round_index}
            results.append(result)
            log.info("round %d %-13s step %.1f ms (mean), CPU %.1f ms, peak RSS %.0f MiB", round_index, kind,
                     1000 * result["step_s_mean"], 1000 * result["cpu_step_s_mean"], result["peak_rss_bytes"] / 2**20)
    profiles = {}
    if profile_steps:
        profiled = replace(spec, profile_steps=profile_steps, steps=profile_len)
        setting = "equal" if "equal" in settings else settings[0]
        for side in SIDES:
            result = run_in_subprocess(f"{side}_{setting}", profiled)
            profiles[side] = {"table": result["profile"], "seconds": result["profile_s"], "steps": profile_steps,
                              "setting": setting}
    return {"spec": asdict(spec), "results": results, "infer": run_in_subprocess("infer", spec) if infer else None,
            "profiles": profiles, "wall_s": time.perf_counter() - started,
            "loads": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}}


def main(argv: list[str]) -> None:
    """The child process: run one job, print its result as one JSON line."""
    import warnings

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    result = run_job(argv[0], JobSpec(**json.loads(argv[1])))
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
