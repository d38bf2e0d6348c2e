"""Scale-out and process hygiene: Ctrl-C on make leaves no process, several processes match one,
a killed sweep completes with every record once, `make reproduce-*`'s workers share the runs, sweeps and
`make reproduce-*` run on Hydra launchers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from lora_repro.paths import CACHE_ENV, REPO_ROOT
from lora_repro.store import RunStore

DEADLINE_S = 180


def session_processes(sid: int) -> list[psutil.Process]:
    """Every live process of session `sid` (make, its shell and whatever they started)."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == sid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return found


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {DEADLINE_S} s"
        time.sleep(0.2)


# train.epochs=100000: the workers are still training whenever the interrupt comes
MAKE_TARGETS = {
    # background queue workers (a non-interactive shell makes them ignore SIGINT)
    "reproduce": (["reproduce-glue", "SCALE=smoke", "ARGS=train.epochs=100000"], "--queue"),
    # a Hydra multirun on joblib worker processes
    "sweep": (["sweep-budget", "ARGS=model=tiny_bert scale=smoke train.epochs=100000 hydra.sweep.dir={tmp}/sweep"],
              "joblib.externals.loky.backend.popen_loky_posix"),
}


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(MAKE_TARGETS))
def test_ctrl_c_on_make_stops_every_process_it_started(target, tmp_path):
    arguments, worker_flag = MAKE_TARGETS[target]
    env = {**os.environ, "LORA_REPRO_RESULTS": str(tmp_path / "results"), CACHE_ENV: str(tmp_path / "cache")}
    command = ["make", "--no-print-directory", *(a.format(tmp=tmp_path) for a in arguments), "JOBS=2",
               f"PYTHON={sys.executable}", "STAMP="]
    make = subprocess.Popen(command, cwd=REPO_ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sid = make.pid

    def workers() -> list[psutil.Process]:
        return [p for p in session_processes(sid) if worker_flag in p.cmdline()]  # python workers, not the shell

    try:
        wait_until(lambda: make.poll() is not None or len(workers()) == 2, "two worker processes")
        assert make.poll() is None, f"make exited ({make.returncode}) before starting its workers"
        os.killpg(sid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        make.wait(DEADLINE_S)
        wait_until(lambda: not session_processes(sid), "exit of every process make started")
    finally:
        for process in session_processes(sid):
            process.kill()
    assert make.returncode != 0
    assert not list((tmp_path / "results").rglob("*.json"))



@pytest.mark.parametrize("one_fails", [False, True])
def test_make_reproduce_exits_with_its_workers_status_and_writes_the_table_only_after_success(tmp_path, one_fails):
    """Every worker succeeding: make exits 0 and writes the table; one failing: make fails, no table call.
    (The Ctrl-C trap's `kill` of already finished workers must not turn a success into exit 1.)"""
    calls = tmp_path / "calls.log"
    fake = tmp_path / "python"
    fail = f'mkdir {tmp_path}/failed 2>/dev/null && exit 3' if one_fails else ':'  # the first worker only
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\ncase "$*" in *"--queue"*) {fail};; esac\nexit 0\n')
    fake.chmod(0o755)
    done = subprocess.run(["make", "--no-print-directory", "reproduce-glue", "JOBS=2", f"PYTHON={fake}", "STAMP="],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    called = calls.read_text().splitlines()
    workers = [line for line in called if "--queue" in line]
    assert len(workers) == 2 and len(set(workers)) == 1  # both get the same queue folder
    assert not Path(workers[0].split("--queue ")[1].split()[0]).exists()  # removed when make ends
    assert (done.returncode == 0) == (not one_fails), done.stderr
    assert any("--table-only" in line for line in called) == (not one_fails)


@pytest.mark.slow
def test_make_reproduce_workers_share_the_runs_and_write_each_once(tmp_path):
    """Two queue workers on the smoke protocol: every run once, LoRA's SST-2 from its STS-B weights."""
    env = {**os.environ, "LORA_REPRO_RESULTS": str(tmp_path / "results"), CACHE_ENV: str(tmp_path / "cache")}
    done = subprocess.run(["make", "--no-print-directory", "reproduce-glue", "SCALE=smoke", "JOBS=2",
                           f"PYTHON={sys.executable}", "STAMP="], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    taken = [int(n) for n in re.findall(r"this process took (\d+) of the 4 runs", done.stderr)]
    assert len(taken) == 2 and sum(taken) == 4
    records = RunStore(tmp_path / "results").records("glue_smoke")
    assert sorted((r["method"], r["task"]) for r in records) == [("full", "sst2"), ("full", "stsb"),
                                                                ("lora", "sst2"), ("lora", "stsb")]
    init = {(r["method"], r["task"]): r["checkpoint"]["init_from"] for r in records}
    assert init[("lora", "sst2")] and init[("lora", "stsb")] is None
    assert (tmp_path / "results" / "tables" / "glue_glue_smoke.md").is_file()


# 61 rows in batches of 8: the last batch (5 rows) splits 3 + 2, so the loss weighting matters;
# tiny_llama has no dropout, so one process and two see the same numbers up to float reassociation
DDP_RUN = ["task=stsb", "model=tiny_llama", "method=lora", "train.lr=1e-2", "train.train_subset=61", "train.epochs=2",
           "train.save_weights=true", "train.num_threads=1", "experiment_name=ddp"]
DDP_TOLERANCE = 1e-5  # absolute, on every epoch metric and every trained weight (measured: 5e-7, 9e-8)
LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2", "--num_machines=1",
                   "--mixed_precision=no", "--dynamo_backend=no"],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_match_one_with_the_same_global_batch(launcher, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from lora_repro.config import resolve_overrides
    from lora_repro.run import run
    from lora_repro.store import run_key

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "one"))
    single = run(resolve_overrides(DDP_RUN), RunStore(tmp_path / "one"))
    single_weights = load_file(REPO_ROOT / single["checkpoint"]["path"])
    env = {**os.environ, "LORA_REPRO_RESULTS": str(tmp_path / "two"), CACHE_ENV: str(tmp_path / "two")}
    done = subprocess.run([sys.executable, *LAUNCHERS[launcher], "-m", "experiments.run", *DDP_RUN,
                           f"hydra.run.dir={tmp_path / 'out'}"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr[-3000:]
    two = RunStore(tmp_path / "two").read("ddp", run_key(resolve_overrides(DDP_RUN)))
    assert [e["step"] for e in two["epochs"]] == [e["step"] for e in single["epochs"]] == [8, 16]
    for ours, theirs in zip(two["epochs"], single["epochs"], strict=True):
        assert ours == pytest.approx(theirs, abs=DDP_TOLERANCE, rel=0)
    weights = load_file(tmp_path / "two" / "weights" / "ddp" / f"{two['key']}.safetensors")
    assert weights.keys() == single_weights.keys()
    assert max(float((weights[k] - single_weights[k]).abs().max()) for k in weights) <= DDP_TOLERANCE
    assert len(list((tmp_path / "two" / "runs" / "ddp").glob("*.json"))) == 1  # rank 1 wrote nothing


@pytest.mark.slow
def test_a_sweep_killed_at_random_points_completes_with_every_record_once(tmp_path):
    import json

    env = {**os.environ, "LORA_REPRO_RESULTS": str(tmp_path / "results"), CACHE_ENV: str(tmp_path / "cache")}
    sweep = ["experiment_name=killsweep", "task=stsb,sst2", "seed=0,1,2", "model=tiny_llama", "train.epochs=3",
             "train.num_threads=1", "train.checkpoint_every=2", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    done = subprocess.run([sys.executable, "-m", "experiments.kill_sweep", "--kills=3", "--seed=0", "--expect=6",
                           "--max-delay=2", f"--logs={tmp_path / 'logs'}", *sweep],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["problems"] == [] and summary["records"] == 6 and summary["kills"] >= 1
    assert summary["skipped_by_last_round"] >= summary["recorded_before_last_round"]


def submitit_env(tmp_path) -> dict:
    return {**os.environ, "LORA_REPRO_RESULTS": str(tmp_path / "results"), CACHE_ENV: str(tmp_path / "cache")}


@pytest.mark.slow
def test_a_submitit_local_sweep_records_each_run_from_its_own_job(tmp_path):

    command = [sys.executable, "-m", "experiments.run", "-m", "hydra/launcher=submitit_local_sweep",
               f"hydra.sweep.dir={tmp_path / 'sweep'}", "experiment_name=submitit", "task=stsb,sst2",
               "model=tiny_llama", "train.num_threads=1"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=submitit_env(tmp_path), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = RunStore(tmp_path / "results").records("submitit")
    assert sorted(r["task"] for r in records) == ["sst2", "stsb"]
    assert len(list((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))) == 2  # one submitit job per run


@pytest.mark.slow
def test_make_reproduce_runs_its_shards_on_a_hydra_launcher_by_one_override(tmp_path):
    from lora_repro.protocol import plan_runs
    from lora_repro.store import run_key

    command = ["make", "--no-print-directory", "reproduce-glue", "SCALE=smoke", "JOBS=2", f"PYTHON={sys.executable}",
               "STAMP=", "LAUNCHER=submitit_local_sweep", f"LAUNCH_ARGS=hydra.sweep.dir={tmp_path / 'sweep'}"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=submitit_env(tmp_path), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = {run_key(c) for c in plan_runs(["+experiment=glue_smoke"], ["full", "lora"], ["sst2", "stsb"], [0])}
    assert {r["key"] for r in RunStore(tmp_path / "results").records("glue_smoke")} == expected
    assert len(list((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))) == 2  # one job per shard
    assert (tmp_path / "results" / "tables" / "glue_glue_smoke.md").is_file()


@pytest.mark.slow
def test_a_protocol_under_torchrun_runs_init_chains_and_writes_once(tmp_path):

    command = [sys.executable, *LAUNCHERS["torchrun"], "-m", "experiments.reproduce", "+experiment=glue_smoke",
               "model=tiny_llama"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=submitit_env(tmp_path), capture_output=True, text=True,
                          timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr[-3000:]
    records = {(r["task"], r["method"]): r for r in RunStore(tmp_path / "results").records("glue_smoke")}
    assert sorted(records) == [("sst2", "full"), ("sst2", "lora"), ("stsb", "full"), ("stsb", "lora")]
    assert records["stsb", "lora"]["key"] in records["sst2", "lora"]["checkpoint"]["init_from"]
    assert (tmp_path / "results" / "tables" / "glue_glue_smoke.md").is_file()
