"""The notebooks and the reports' wandb mirror, against a smoke-scale store made by real tiny runs.

One module-scoped store holds the GLUE and E2E smoke protocols (tiny BERT / tiny GPT-2), a rank sweep
of the GLUE sweep protocol with saved weights (r = 2, 4, two seeds), three weight-type cells, and the
smoke latency grid. Every notebook executes against it in a fresh kernel (a broken notebook fails
here), the rank sweep's φ view falls back to committed outputs where the weights are gone, the
paper's observations are judged on constructed sweeps with known answers, and `--wandb` on the
GLUE/NLG/latency entry points logs their tables and figures, read back from the offline run.
"""

from __future__ import annotations

import json
import shutil

import nbformat
import numpy as np
import pandas as pd
import pytest
from helpers import tiny_run
from wandb_records import logged_keys, wait_for_records

from lora_repro.analysis import lowrank, observations
from lora_repro.analysis.notebooks import execute, notebook_paths
from lora_repro.analysis.report import write_sweep_report
from lora_repro.analysis.results import SCALE_ENV
from lora_repro.analysis.sweep import Sweep, aggregate
from lora_repro.paths import CACHE_ENV
from lora_repro.store import RunStore

NOTEBOOKS = ("efficiency", "glue_results", "nlg_results", "subspace", "sweeps")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    if shutil.which("java") is None:
        pytest.skip("the E2E smoke run scores METEOR with Java; install default-jre-headless")
    import experiments.latency as latency_entry
    from lora_repro.protocol import reproduce

    root = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORA_REPRO_RESULTS", str(root))
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("cache")))  # the saved weights go there
        patch.setenv(SCALE_ENV, "smoke")
        for protocol in ("glue_smoke", "e2e_smoke"):
            reproduce([f"+experiment={protocol}"])
        for r in (2, 4):
            for seed in (0, 1):
                tiny_run(root, "+experiment=sweep_rank_glue", f"seed={seed}", **{"method.r": r})
        for cell in ("q", "v", "qv"):
            tiny_run(root, "+experiment=sweep_targets_glue", f"+lora_targets={cell}")
        latency_entry.main(["--grid", "smoke", "--device", "cpu"])
        yield root


def _outputs(notebook) -> tuple[str, int]:
    """All text a notebook showed (streams, markdown, plain text) and how many images."""
    texts, images = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            images += "image/png" in data
            texts.append(output.get("text", "") + data.get("text/markdown", "") + data.get("text/plain", ""))
    return "\n".join(texts), images


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_against_the_smoke_store(store, name):
    notebook = execute(notebook_paths([name])[0], save=False, timeout=300)
    text, images = _outputs(notebook)
    assert f"results store: {store.resolve()}/" in text and "scale 'smoke'" in text
    reference = RunStore(store).records("e2e_smoke")[0]["best"]["samples"][0]["reference"]
    expected = {
        "glue_results": (["GLUE dev, glue_smoke", "| lora | 2,048 (0.3M)"], 1),
        "nlg_results": (["e2e_smoke: ours and the paper's gpt2_medium", reference,
                         "holds no runs of protocol webnlg_smoke; run `make reproduce-webnlg`"], 1),
        "sweeps": (["Sweep sweep_rank_glue: tiny_bert on sst2", "(a) sweep_rank_glue: a small r suffices: **",
                    "(b) sweep_targets_glue: more weight types beat one at a fixed budget: **",
                    "(c) sweep_rank_glue", "(d) sweep_rank_glue",
                    "no completed runs of experiment 'sweep_budget_glue'"], 2),
        "subspace": (["φ and Table 7 computed from the saved weights of 4 runs", "phi_r2_r4_q", "w_vs_delta",
                      "rank, same seed, initial"], 9),
        "efficiency": (["Inference latency, tiny_gpt2: latency_cpu_smoke", "samples_per_s"], 3),
    }[name]
    for snippet in expected[0]:
        assert snippet in text, snippet
    assert images >= expected[1]


def test_committed_notebooks_carry_outputs_of_the_committed_store():
    """Executed outputs come from results/ at cpu scale (`make notebooks`), never from a temporary store."""
    for path in notebook_paths():
        notebook = nbformat.read(path, as_version=4)
        text, _ = _outputs(notebook)
        assert "results store: results/ ($LORA_REPRO_RESULTS), protocols at scale 'cpu'" in text, path.name
        assert all(cell.execution_count for cell in notebook.cells if cell.cell_type == "code"), path.name


@pytest.mark.slow
def test_subspace_view_falls_back_to_the_committed_outputs(store, tmp_path, monkeypatch):
    written = write_sweep_report("sweep_rank_glue", store)  # with the weights: φ CSVs and heat maps
    assert {"phi", "table7"} <= set(written) and pd.read_csv(written["phi"])["kind"].str.len().gt(0).all()
    clone = tmp_path / "clone"  # a fresh clone: the records without their weights
    for record in RunStore(store).records("sweep_rank_glue"):
        record["checkpoint"]["path"] = "nowhere/weights.safetensors"
        RunStore(clone).write(record)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "empty-cache"))
    bare = lowrank.view("sweep_rank_glue", tmp_path / "figures", clone)
    assert bare.source == "none" and "4 of 4 runs of sweep_rank_glue have no saved weights on disk" in bare.message
    assert "run `make sweep-rank`" in bare.message and "\n" not in bare.message
    for folder in ("tables", "figures"):
        shutil.copytree(store / folder, clone / folder)
    committed = lowrank.view("sweep_rank_glue", tmp_path / "figures", clone)
    assert committed.source == "committed" and "showing the committed outputs" in committed.message
    pd.testing.assert_frame_equal(committed.phi_summary, pd.read_csv(written["phi"]))
    assert list(committed.figures)[:2] == ["phi_r2_r4_q", "phi_r2_r4_v"] and "w_vs_delta" in committed.figures
    assert "rank" not in committed.figures  # the sweep's own figure is not a φ heat map


def _rank_sweep(values: dict[int, list[float]]) -> Sweep:
    rows = [{"config.method.r": r, "config.seed": seed, "best.accuracy": score, "params.trainable": r,
             "timing.wall_s": 1.0} for r, scores in values.items() for seed, score in enumerate(scores)]
    runs = pd.DataFrame(rows)
    return Sweep("sweep_rank_x", runs, ["config.method.r"], "best.accuracy", "rank")


def test_small_rank_is_judged_against_the_seed_spread_of_the_largest_rank():
    holds = observations.small_rank(_rank_sweep({1: [80.0, 81.0], 2: [82.0, 82.0], 64: [79.5, 82.5]}))
    assert holds.holds is True and "r=1: 80.50" in holds.numbers and "within the spread of r=64" in holds.numbers
    fails = observations.small_rank(_rank_sweep({1: [70.0, 71.0], 4: [90.0, 91.0], 64: [79.5, 82.5]}))
    assert fails.holds is False and "r=1: 70.50 (seeds 70.00-71.00, n=2), below" in fails.numbers
    assert "r=4: 90.50 (seeds 90.00-91.00, n=2), above" in fails.numbers
    other = observations.small_rank(_rank_sweep({1: [80.0], 16: [80.0]}))
    assert "r=64 not in the sweep: r=16 is the largest" in other.numbers and "one seed at r=16" in other.numbers


def test_more_types_compares_the_best_cells_and_the_seed_noise():
    runs = pd.DataFrame({"config.method.targets": ["q", "q", "v", "v", "q+v", "q+v"], "config.seed": [0, 1] * 3,
                         "best.accuracy": [80.0, 81.0, 82.0, 82.0, 84.0, 85.0], "params.trainable": [8] * 6,
                         "timing.wall_s": [1.0] * 6})
    sweep = Sweep("sweep_targets_x", runs, ["config.method.targets"], "best.accuracy", "targets")
    assert aggregate(runs, sweep.swept, sweep.metric)["n"].tolist() == [2, 2, 2]
    found = observations.more_types(sweep)
    assert found.holds is True and "{q+v}: 84.50" in found.numbers and "best single type {v}: 82.00" in found.numbers
    assert "difference +2.50, larger than the seed std (0.71)" in found.numbers


def _phi(same_seed: float, start: float, other_seeds: float, control: float) -> pd.DataFrame:
    kinds = {"rank, same seed, trained": same_seed, "rank, same seed, initial": start,
             "rank, different seeds, trained": other_seeds, "random control": control}
    return pd.DataFrame([{"layer": layer, "target": target, "kind": kind, "r_low": 8, "r_high": 64,
                          "phi_1_1": value} for layer in (0, 1) for target in ("q", "v")
                         for kind, value in kinds.items()])


def test_shared_direction_is_judged_on_a_start_that_shares_nothing_against_the_control():
    learned = observations.shared_direction(_phi(0.6, 0.01, 0.4, 0.003), "sweep_rank_x")
    assert learned.holds is True and "Judged on 'rank, same seed, trained'" in learned.numbers
    assert "rank, different seeds, trained: W_q 0.400, W_v 0.400" in learned.numbers  # stated, though lower
    drawn = observations.shared_direction(_phi(0.9, 0.8, 0.4, 0.003), "sweep_rank_x")  # the start shared it
    assert drawn.holds is False and "Judged on 'rank, different seeds, trained'" in drawn.numbers
    assert "lowest 0.400 <= 0.5" in drawn.numbers
    assert observations.shared_direction(_phi(0.6, 0.01, 0.7, 0.4), "sweep_rank_x").holds is False  # control
    assert observations.shared_direction(pd.DataFrame(), "sweep_rank_x").holds is None


def test_amplification_is_judged_at_the_smallest_rank():
    table7 = pd.DataFrame({"layer": [3, 3], "r": [4, 64], "proj_delta": [0.3, 2.0], "proj_W": [20.0, 40.0],
                           "proj_random": [0.02, 0.3], "amplification": [21.5, 1.9]})
    found = observations.amplifies(table7, "sweep_rank_x")
    assert found.holds is True and "r=4: factor 21.50" in found.numbers and "r=64: factor 1.90" in found.numbers
    weak = table7.assign(amplification=[1.2, 0.9])
    assert observations.amplifies(weak, "sweep_rank_x").holds is False
    assert "**does not hold**" in observations.markdown([observations.amplifies(weak, "sweep_rank_x")])


@pytest.mark.slow
def test_reports_log_their_tables_and_figures_to_wandb(store, tmp_path, monkeypatch):
    import experiments.latency as latency_entry
    import experiments.reproduce as reproduce_entry

    monkeypatch.setenv("LORA_REPRO_RESULTS", str(store))
    for protocol in ("glue_smoke", "e2e_smoke"):
        reproduce_entry.main([f"+experiment={protocol}", "--table-only", "--wandb", "--wandb-dir", str(tmp_path)])
    latency_entry.main(["--grid", "smoke", "--device", "cpu", "--wandb", "--wandb-dir", str(tmp_path)])
    logged = {}
    for run_dir in (tmp_path / "wandb").glob("offline-run-*"):
        records = wait_for_records(run_dir)
        header = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert header.job_type == "report" and header.display_name == f"{header.run_group}-report"
        logged[header.run_group] = (run_dir, *logged_keys(records))
    expected = {"glue_smoke": (["glue_glue_smoke", "efficiency_glue_smoke"], []),
                "e2e_smoke": (["e2e_e2e_smoke"], []),
                "latency_cpu_smoke": (["latency_cpu_smoke"], ["latency_heatmap_cpu_smoke"])}
    assert set(logged) == set(expected)
    for group, (tables, figures) in expected.items():
        run_dir, history, summary = logged[group]
        assert {f"tables/{t}/_type" for t in tables} | {f"figures/{f}/_type" for f in figures} <= history, group
        for table in tables:
            saved = json.loads((run_dir / "files" / json.loads(summary[f"tables/{table}/path"])).read_text())
            on_disk = pd.read_csv(store / "tables" / f"{table}.csv")
            assert saved["columns"] == list(on_disk.columns) and len(saved["data"]) == len(on_disk), table
    heatmap = logged["latency_cpu_smoke"][2]["figures/latency_heatmap_cpu_smoke/path"]
    assert (logged["latency_cpu_smoke"][0] / "files" / json.loads(heatmap)).stat().st_size > 0
    assert np.isfinite(json.loads(logged["glue_smoke"][2]["tables/glue_glue_smoke/nrows"]))
