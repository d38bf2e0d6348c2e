"""Processes the suite starts end when asked: Ctrl-C on a make target leaves none running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from lora_repro.paths import CACHE_ENV, REPO_ROOT

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


@pytest.mark.slow
def test_ctrl_c_on_make_reproduce_stops_every_shard(tmp_path):
    env = {**os.environ, "LORA_REPRO_RESULTS": str(tmp_path / "results"), CACHE_ENV: str(tmp_path / "cache")}
    # train.epochs=100000: the shards are still training whenever the interrupt comes
    command = ["make", "--no-print-directory", "reproduce-glue", "SCALE=smoke", "JOBS=2", f"PYTHON={sys.executable}",
               "STAMP=", "ARGS=train.epochs=100000"]
    make = subprocess.Popen(command, cwd=REPO_ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sid = make.pid

    def shards() -> list[psutil.Process]:
        return [p for p in session_processes(sid) if "--shard" in p.cmdline()]  # the python shards, not the shell

    try:
        wait_until(lambda: make.poll() is not None or len(shards()) == 2, "two shard processes")
        assert make.poll() is None, f"make exited ({make.returncode}) before starting its shards"
        os.killpg(sid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        make.wait(DEADLINE_S)
        wait_until(lambda: not session_processes(sid), "exit of every process make started")
    finally:
        for process in session_processes(sid):
            process.kill()
    assert make.returncode != 0
    assert not (tmp_path / "results" / "runs").exists() or not any((tmp_path / "results" / "runs").rglob("*.json"))
