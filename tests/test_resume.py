"""Lossless resume: a run stopped after a checkpoint (an exception, or SIGKILL of its process) and rerun
ends with exactly the epochs of an uninterrupted run, and its resume state is gone once recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny

from lora_repro.config import resolve_overrides
from lora_repro.paths import CACHE_ENV, REPO_ROOT
from lora_repro.resume import load_optimizer_state, resume_path
from lora_repro.run import run
from lora_repro.store import RunStore, run_key
from lora_repro.train import Stepper, build_optimizer

# tiny_bert has dropout, so equality also needs the RNG states restored; 64 rows / batch 8 = 8 steps an epoch
COMMON = ["task=stsb", "model=tiny_bert", "method=lora", "train.epochs=2", "train.num_threads=1",
          "experiment_name=resume"]
DEADLINE_S = 180


class Stop(Exception):
    """Stands in for a crash at a chosen step."""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize(("every", "stop_at", "saved_at"), [
    (3, 5, 3),  # mid-epoch: steps 4-5 are redone
    (4, 9, 8),  # saved at the last batch of epoch 1, before its evaluation
    (3, 16, 15),  # the final step
])
def test_a_run_stopped_mid_training_resumes_to_identical_epochs(store_root, tmp_path, cache, monkeypatch,
                                                                 every, stop_at, saved_at):
    cfg = resolve_overrides([*COMMON, f"train.checkpoint_every={every}"])
    reference = run(cfg, RunStore(tmp_path / "reference"))
    original = Stepper.step

    def crashing(self, state, batch):
        original(self, state, batch)
        if state.step == stop_at:
            raise Stop

    monkeypatch.setattr(Stepper, "step", crashing)
    store = RunStore(store_root)
    with pytest.raises(Stop):
        run(cfg, store)
    saved = resume_path("resume", run_key(cfg))
    assert saved.is_file() and not store.exists("resume", run_key(cfg))
    monkeypatch.setattr(Stepper, "step", original)
    resumed = run(cfg, store)
    assert resumed["epochs"] == reference["epochs"] and resumed["best"] == reference["best"]
    assert resumed["timing"]["resumed_at_steps"] == [saved_at] and resumed["timing"]["steps"] == 16
    assert not saved.exists()


@pytest.mark.slow
def test_an_nlg_run_resumes_to_identical_epochs_and_test_scores(store_root, tmp_path, cache, monkeypatch):
    """The causal LM loss, the NLG loader's own shuffle stream and the test decode after a resume."""
    cfg = resolve_overrides(["+experiment=e2e_smoke", "method=lora", "train.epochs=2", "train.num_threads=1",
                             "train.max_length=256", "train.checkpoint_every=5", "experiment_name=resume"])
    reference = run(cfg, RunStore(tmp_path / "reference"))
    original = Stepper.step

    def crashing(self, state, batch):
        original(self, state, batch)
        if state.step == 13:  # 8 steps an epoch: saved at 10, mid-epoch 2
            raise Stop

    monkeypatch.setattr(Stepper, "step", crashing)
    with pytest.raises(Stop):
        run(cfg, RunStore(store_root))
    monkeypatch.setattr(Stepper, "step", original)
    resumed = run(cfg, RunStore(store_root))
    assert resumed["epochs"] == reference["epochs"] and resumed["timing"]["resumed_at_steps"] == [10]
    assert {k: v for k, v in resumed["best"].items() if k != "generations_dir"} == \
        {k: v for k, v in reference["best"].items() if k != "generations_dir"}


def test_the_checkpoint_interval_is_not_part_of_the_run_key():
    keys = {run_key(resolve_overrides([*COMMON, *extra])) for extra in ([], ["train.checkpoint_every=5"])}
    assert len(keys) == 1


# Runs experiments.run and holds still at a given step (after that step's checkpoint), touching a
# marker file, so the test kills it at a known point without racing the training.
HOLD = """
import os, pathlib, runpy, time
from lora_repro.train import Stepper
step = Stepper.step
def held(self, state, batch):
    step(self, state, batch)
    if state.step == int(os.environ["HOLD_AT_STEP"]):
        pathlib.Path(os.environ["HOLD_MARKER"]).touch()
        while True:
            time.sleep(1)  # until the test's SIGKILL
Stepper.step = held
runpy.run_module("experiments.run", run_name="__main__")  # as python -m, so Hydra finds conf/
"""


def wait_for(condition, what: str, process: subprocess.Popen) -> None:
    """Poll `condition` until true; fail if the process exits first or the deadline passes."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert process.poll() is None, f"the run exited ({process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {DEADLINE_S} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_sigkilled_run_rerun_with_the_same_command_ends_with_identical_metrics(store_root, tmp_path, cache):
    overrides = [*COMMON, "train.checkpoint_every=3", f"hydra.run.dir={tmp_path / 'out'}"]
    cfg = resolve_overrides(overrides)
    reference = run(cfg, RunStore(tmp_path / "reference"))
    marker, saved = tmp_path / "held", resume_path("resume", run_key(cfg))
    env = {**os.environ, "HOLD_AT_STEP": "11", "HOLD_MARKER": str(marker)}
    held = subprocess.Popen([sys.executable, "-c", HOLD, *overrides], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(marker.exists, "step 11", held)
        assert saved.is_file()
    finally:
        held.send_signal(signal.SIGKILL)
        held.wait(DEADLINE_S)
    store = RunStore(store_root)
    assert not store.exists("resume", run_key(cfg))
    subprocess.run([sys.executable, "-m", "experiments.run", *overrides], cwd=REPO_ROOT, check=True,
                   timeout=DEADLINE_S, capture_output=True)
    resumed = store.read("resume", run_key(cfg))
    assert resumed["epochs"] == reference["epochs"] and resumed["best"] == reference["best"]
    assert resumed["timing"]["resumed_at_steps"] == [9]
    assert not saved.exists()


def test_resume_state_lives_beside_the_weights(cache):
    assert resume_path("e", "0123456789abcdef") == Path(cache) / "weights" / "e" / "0123456789abcdef.resume.pt"


def test_an_optimizer_state_saved_unfused_resumes_on_the_fused_kernel():
    """A resume state written before AdamW was fused must not switch the kernel back to the for-loop."""
    model = tiny("bert").model
    for param in model.parameters():
        param.grad = torch.full_like(param, 0.1)
    first = build_optimizer(model, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    first.step()
    saved = first.state_dict()
    for group in saved["param_groups"]:  # as the code before the fused optimizer saved it
        group["fused"] = None
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    load_optimizer_state(optimizer, saved)
    assert all(group["fused"] is True for group in optimizer.param_groups)
    optimizer.step()  # the fused kernel accepts the restored moments and step counts
    assert all(optimizer.state[p]["step"].item() == 2 for p in model.parameters() if p.requires_grad)
