"""Sweep reports on smoke-scale records made by real tiny runs of the sweep protocols (the cpu-scale
protocol values with the training shrunk on the command line): grouping by every swept key, seed
aggregation, the paper's numbers beside ours, figures, φ / Table 7 from the saved weights; and the
multirun machinery end to end (slow): joblib launcher, records in the store, a rerun trains nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import TINY, tiny_run

from lora_repro.analysis.report import write_sweep_report
from lora_repro.analysis.sweep import SweepInputError, aggregate, load_sweep, swept_keys
from lora_repro.paths import CACHE_ENV, REPO_ROOT
from lora_repro.store import RunStore

PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("cache")))  # the saved weights go there
        for r in (2, 4):
            for seed in (0, 1):
                tiny_run(root, "+experiment=sweep_rank_glue", f"seed={seed}", **{"method.r": r})
        for cell in ("q", "v", "qv"):  # conf/lora_targets/: r=8 for one type, 4 for two
            tiny_run(root, "+experiment=sweep_targets_glue", f"+lora_targets={cell}")
        for point in ("lora_r1", "lora_r8", "bitfit"):  # conf/budget_point/
            tiny_run(root, "+experiment=sweep_budget_glue", f"budget_point={point}")
        yield root


def test_swept_keys_vary_within_the_experiment_and_exclude_seed_and_duplicates():
    runs = pd.DataFrame({"config.method.name": ["lora"] * 4, "config.method.r": [2, 2, 4, 4],
                         "config.seed": [0, 1, 0, 1],
                         "config.method.targets": ["q+v"] * 4, "config.cell.r": [2, 2, 4, 4],
                         "config.train.lr": [1e-3] * 4, "best.accuracy": [50.0, 60.0, 70.0, 90.0],
                         "params.trainable": [10, 10, 20, 20], "timing.wall_s": [1.0, 2.0, 3.0, 4.0],
                         "method": ["lora"] * 4})
    assert swept_keys(runs) == ["config.method.r"]  # config.cell.r splits the runs the same way
    points = aggregate(runs, ["config.method.r"], "best.accuracy")
    assert points["point"].tolist() == ["r=2", "r=4"]
    assert points["mean"].tolist() == [55.0, 80.0] and points["min"].tolist() == [50.0, 70.0]
    assert points["n"].tolist() == [2, 2] and points["wall_s"].tolist() == [3.0, 7.0]
    assert points["std"].iloc[1] == pytest.approx(np.std([70.0, 90.0], ddof=1))


def test_rank_sweep_report(store):
    sweep = load_sweep("sweep_rank_glue", store)
    assert sweep.kind == "rank" and sweep.swept == ["config.method.r"]  # seeds are aggregated, not grouped
    stored = {(r["config"]["method"]["r"], r["seed"]): 100 * r["best"]["accuracy"]
              for r in RunStore(store).records("sweep_rank_glue")}
    points = sweep.points
    assert points["point"].tolist() == ["r=2", "r=4"] and points["n"].tolist() == [2, 2]
    assert points["mean"].iloc[1] == pytest.approx((stored[(4, 0)] + stored[(4, 1)]) / 2)
    paths = write_sweep_report("sweep_rank_glue", store)
    table = paths["md"].read_text()
    assert "seeds [0, 1], 4 runs; swept method.r;" in table and "tiny_bert on sst2" in table
    assert "Table 6 (GPT-3 175B" in table and "| GPT-3 175B |" in table  # the paper's shape beside ours
    assert "Table 7 analogue" in table and "r=2 vs r=4, seed 0 (initial)" in table
    assert "random Gaussian control" in table and "r=8/64 not in the sweep: r=2/4 used" in table
    assert pd.read_csv(paths["csv"])["point"].tolist() == ["r=2", "r=4"]
    for key in ("figure_rank", "figure_phi_r2_r4_q", "figure_phi_seeds_v", "figure_w_vs_delta", "figure_phi_layers_r_q",
                "figure_phi_layers_seeds_v"):
        assert paths[key].read_bytes()[:4] == PNG, key
    first = table
    write_sweep_report("sweep_rank_glue", store)  # regenerated from the same store: the same table
    assert paths["md"].read_text() == first


def test_targets_sweep_groups_by_targets_and_rank_at_one_budget(store):
    sweep = load_sweep("sweep_targets_glue", store)
    assert sweep.kind == "targets"
    assert sweep.swept == ["config.method.r", "config.method.targets"]
    points = sweep.points
    assert sorted(points["point"]) == ["r=4 targets=q+v", "r=8 targets=q", "r=8 targets=v"]
    assert points["trainable"].nunique() == 1  # the 8/4/2 pattern: one budget for every cell
    paths = write_sweep_report("sweep_targets_glue", store)
    assert "Table 5 (GPT-3 175B" in paths["md"].read_text()
    assert paths["figure_targets"].read_bytes()[:4] == PNG


def test_budget_sweep_spans_methods_and_sizes(store):
    sweep = load_sweep("sweep_budget_glue", store)
    assert sweep.kind == "budget" and "config.method.name" in sweep.swept
    labels = set(sweep.points["point"])
    assert {"lora r=1", "lora r=8", "bitfit"} <= {" ".join(p.split()[:2]) if "lora" in p else p.split()[0]
                                                  for p in labels}
    paths = write_sweep_report("sweep_budget_glue", store)
    assert "Table 15 / Figure 2" in paths["md"].read_text()
    assert paths["figure_budget"].read_bytes()[:4] == PNG


def test_missing_sweep_names_the_fix(store):
    with pytest.raises(SweepInputError, match=r"no completed runs of experiment 'sweep_nothing'.*make sweep"):
        load_sweep("sweep_nothing", store)
    with pytest.raises(SweepInputError, match=r"metric 'best\.nope'"):
        load_sweep("sweep_rank_glue", store, metric="best.nope")


@pytest.mark.slow
def test_multirun_with_joblib_stores_records_and_a_rerun_trains_nothing(tmp_path):
    env = {**os.environ, "LORA_REPRO_RESULTS": str(tmp_path / "results"), CACHE_ENV: str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "experiments.run", "-m", "+experiment=sweep_rank_glue", "model=tiny_bert",
           *[f"{k}={v}" for k, v in TINY.items()], "method.r=2,4", "seed=0", "hydra/launcher=joblib_sweep",
           "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    first = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    records = RunStore(tmp_path / "results").records("sweep_rank_glue")
    assert sorted(r["config"]["method"]["r"] for r in records) == [2, 4]
    assert {r["config"]["train"]["train_subset"] for r in records} == {32}  # command line beats the protocol
    second = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    logged = second.stdout + second.stderr  # Hydra's job logging writes to stdout
    assert second.returncode == 0 and logged.count("already in the store") == 2 and "epoch 1:" not in logged
    report = [sys.executable, "-m", "experiments.sweep_report", "+experiment=sweep_rank_glue"]
    done = subprocess.run(report, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "results" / "tables" / "sweep_rank_glue.md").is_file()


def test_a_rank_table_keeps_its_phi_sections_when_the_weights_are_gone(store, monkeypatch):
    """The weights are a cache (absent from a fresh clone): a rewrite keeps the φ / Table 7 computed before."""
    from lora_repro.analysis import lowrank

    paths = write_sweep_report("sweep_rank_glue", store)
    first = paths["md"].read_text()
    monkeypatch.setattr(lowrank, "missing_weights", lambda sweep, root: ["a-run-key"])
    write_sweep_report("sweep_rank_glue", store)
    assert lowrank.SECTIONS_START in first and paths["md"].read_text() == first
