"""wandb as a dashboard, offline: run names carry swept values, a sweep is one group with its swept keys
as config columns, and reports log tables and images to a summary run. Every check reads the offline
run file back once wandb has finished writing it (wait_for_records), never a half-written file."""

from __future__ import annotations

import json

import matplotlib
import pandas as pd
import pytest
from omegaconf import OmegaConf
from wandb_records import logged_keys, wait_for_records

from lora_repro.config import compose_config, resolve
from lora_repro.run import run
from lora_repro.store import RunStore
from lora_repro.tracking import log_report, log_result_files, run_name, swept_values

matplotlib.use("Agg")


def test_run_name_carries_the_swept_values():
    cfg = {"task": {"name": "sst2"}, "method": {"name": "lora", "r": 4, "targets": ["q", "v"]}, "seed": 1,
           "logger": {"name": "wandb", "swept": ["method.r", "method.targets", "seed"]}}
    assert swept_values(cfg) == {"method.r": "4", "method.targets": "['q', 'v']", "seed": "1"}
    assert run_name(cfg, "0123456789abcdef") == "sst2-lora-r=4-targets=['q'+'v']-seed=1-012345"
    unswept = {**cfg, "logger": {"name": "wandb"}}  # outside Hydra: only the seed
    assert run_name(unswept, "0123456789abcdef") == "sst2-lora-seed=1-012345"


def test_log_report_writes_tables_and_images_to_a_group_summary_run(tmp_path):
    import matplotlib.pyplot as plt

    figure = tmp_path / "rank.png"
    plt.plot([1, 2], [3, 4])
    plt.savefig(figure)
    plt.close()
    table = pd.DataFrame({"point": ["r=1", "r=2"], "mean": [80.5, 81.25], "n": [3, 3]})
    run_dir = log_report("sweep_x", {"points": table}, {"rank": figure}, summary={"runs": 6},
                         logger={"dir": str(tmp_path), "mode": "offline"})
    records = wait_for_records(run_dir)
    history, summary = logged_keys(records)
    assert {"tables/points/_type", "figures/rank/_type"} <= history
    assert json.loads(summary["tables/points/_type"]) == "table-file"
    assert json.loads(summary["figures/rank/_type"]) == "image-file"
    assert summary["runs"] == "6"
    header = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert header.run_group == "sweep_x" and header.job_type == "report" and header.display_name == "sweep_x-report"
    saved = json.loads((run_dir / "files" / json.loads(summary["tables/points/path"])).read_text())
    assert saved["columns"] == ["point", "mean", "n"] and saved["data"][1] == ["r=2", 81.25, 3]
    assert (run_dir / "files" / json.loads(summary["figures/rank/path"])).stat().st_size > 0
    with pytest.raises(FileNotFoundError, match="figure files not found"):
        log_report("sweep_x", {}, {"rank": tmp_path / "missing.png"}, logger={"dir": str(tmp_path)})


def test_report_files_on_disk_are_logged_as_tables_and_images(tmp_path):
    """The GLUE / NLG / latency reports write CSV and PNG files; one call mirrors them to wandb."""
    table = tmp_path / "glue_glue_cpu.csv"
    pd.DataFrame({"method": ["lora"], "sst2": [91.2]}).to_csv(table, index=False)
    run_dir = log_result_files("glue_cpu", [table], logger={"dir": str(tmp_path), "mode": "offline"})
    history, summary = logged_keys(wait_for_records(run_dir))
    assert "tables/glue_glue_cpu/_type" in history and json.loads(summary["tables/glue_glue_cpu/nrows"]) == 1
    with pytest.raises(ValueError, match=r"\.csv tables and \.png figures"):
        log_result_files("glue_cpu", [tmp_path / "table.md"])


@pytest.mark.slow
def test_a_sweep_run_is_one_point_of_its_group(store_root, tmp_path):
    overrides = ["task=stsb", "model=tiny_bert", "scale=smoke", "logger=wandb", "method.r=2",
                 "experiment_name=sweep_demo", "train.train_subset=16", "train.eval_subset=16"]
    cfg = resolve(OmegaConf.to_container(compose_config(overrides), resolve=True))
    cfg["logger"].update(dir=str(tmp_path), swept=["method.r"])
    record = run(cfg, RunStore(store_root))
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    records = wait_for_records(run_dir)
    header = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert header.run_group == "sweep_demo" and header.display_name == f"stsb-lora-r=2-seed=0-{record['key'][:6]}"
    config = {item.key: json.loads(item.value_json) for item in header.config.update}
    assert config["method"]["r"] == 2  # the swept key is a config column (method.r)
    history, summary = logged_keys(records)
    assert {"train_loss", "pearson"} <= history
    assert {"params/trainable", "best/pearson", "timing/train_s", "memory/peak_rss_bytes"} <= set(summary)
