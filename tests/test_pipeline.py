"""End to end at smoke scale: config -> run -> record -> table; reruns skip; protocols resolve to the paper's values."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from lora_repro.config import ConfigError, compose_config, init_source_key, method_label, resolve, resolve_overrides
from lora_repro.paths import CACHE_ENV, REPO_ROOT
from lora_repro.run import run
from lora_repro.store import RunStore, run_key

TASKS = ["mnli", "sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb"]


def resolved(*overrides: str) -> dict:
    return resolve_overrides(list(overrides))


def test_protocol_values_beat_defaults_and_cli_beats_protocol():
    cfg = resolved("+experiment=glue_cpu", "task=sst2", "method=lora")
    assert cfg["train"]["lr"] == 1e-3 and cfg["train"]["train_subset"] == 8000
    assert cfg["train"]["batch_size"] == 32 and cfg["train"]["precision"] == "bf16"  # task_hparams beat _all
    assert cfg["method"]["r"] == 8 and "protocol" not in cfg


@pytest.mark.parametrize("override, section, key, value", [
    ("train.lr=5e-4", "train", "lr", 5e-4),  # the protocol's hparams say 1e-3
    ("train.batch_size=8", "train", "batch_size", 8),  # its task_hparams say 32
    ("method.r=4", "method", "r", 4),  # its per-method hparams say 8
    ("method.alpha=16", "method", "alpha", 16),
    ("method.targets=[q,k,v]", "method", "targets", ["q", "k", "v"]),
    ("train.init_from_task=stsb", "train", "init_from_task", "stsb"),
])
def test_explicit_overrides_beat_the_protocol(override, section, key, value):
    cfg = resolved("+experiment=glue_cpu", "task=sst2", "method=lora", override)
    assert cfg[section][key] == value


@pytest.mark.parametrize("override, message", [
    ("method.alpha=0", "method.alpha must be > 0"),
    ("method.r=0", "method.r must be an integer >= 1"),
    ("method.r=2.5", "method.r must be an integer >= 1"),
    ("method.targets=[]", "method.targets is empty"),
    ("train.max_steps=0", "train.max_steps must be null"),
    ("train.lr=0", "train.lr must be > 0"),
])
def test_bad_values_are_refused_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        resolved("task=sst2", "method=lora", override)


@pytest.mark.parametrize("override", ["method.alpha=big", "train.batch_size=big", "train.no_such_key=1",
                                      "method.rank=4"])
def test_wrong_types_and_unknown_keys_fail_at_compose_time(override):
    with pytest.raises(ConfigCompositionException):
        compose_config(["task=sst2", "method=lora", override])


# Table 9 (RoBERTa) and Table 10 (DeBERTa XXL), per task in TASKS order.
TABLE_9_BASE = dict(batch_size=[16, 16, 16, 32, 32, 16, 32, 16], epochs=[30, 60, 30, 80, 25, 25, 80, 40],
                    lr=[5e-4, 5e-4, 4e-4, 4e-4, 4e-4, 5e-4, 5e-4, 4e-4], max_length=[512] * 8)
TABLE_9_LARGE = dict(batch_size=[4, 4, 4, 4, 4, 4, 8, 8], epochs=[10, 10, 20, 20, 10, 20, 20, 30],
                     lr=[3e-4, 4e-4, 3e-4, 2e-4, 2e-4, 3e-4, 4e-4, 2e-4],
                     max_length=[128, 128, 512, 128, 512, 512, 512, 512])
TABLE_9_HOULSBY_H6M = dict(batch_size=[32] * 8, epochs=[10, 5, 10, 10, 5, 20, 20, 10],
                           lr=[3e-5] + [3e-4] * 7, max_length=[128] * 8)
TABLE_10 = dict(batch_size=[8, 8, 32, 4, 6, 8, 4, 4], epochs=[5, 16, 30, 10, 8, 11, 11, 10],
                lr=[1e-4, 6e-5, 2e-4, 1e-4, 1e-4, 1e-4, 2e-4, 2e-4],
                weight_decay=[0, 0.01, 0.01, 0, 0.01, 0.01, 0.01, 0.1],
                cls_dropout=[0.15, 0, 0, 0.1, 0.1, 0.2, 0.2, 0.2], max_length=[256, 128, 128, 64, 512, 320, 320, 128])


@pytest.mark.parametrize("experiment, method, table, extra", [
    ("glue_paper_roberta_base_lora", "lora", TABLE_9_BASE, {"r": 8, "alpha": 8}),
    ("glue_paper_roberta_large_lora", "lora", TABLE_9_LARGE, {"r": 8, "alpha": 16}),
    ("glue_paper_roberta_large_houlsby", "adapter_h_6m", TABLE_9_HOULSBY_H6M, {"bottleneck": 64}),
    ("glue_paper_deberta_xxl_lora", "lora", TABLE_10, {"r": 8, "alpha": 8}),
])
def test_paper_glue_protocols_match_tables_9_and_10(experiment, method, table, extra):
    for i, task in enumerate(TASKS):
        cfg = resolved(f"+experiment={experiment}", f"task={task}", f"method={method}")
        for key, values in table.items():
            assert cfg["train"][key] == pytest.approx(values[i]), (experiment, task, key)
        for key, value in extra.items():
            assert cfg["method"][key] == value
        assert cfg["scale"] == "paper"


def test_mnli_initialisation_only_where_the_paper_uses_it():
    init = {t: resolved("+experiment=glue_paper_roberta_base_lora", f"task={t}")["train"]["init_from_task"]
            for t in TASKS}
    assert {t for t, v in init.items() if v == "mnli"} == {"mrpc", "rte", "stsb"}
    houlsby = resolved("+experiment=glue_paper_roberta_large_houlsby", "task=rte", "method=lora")
    assert houlsby["train"]["init_from_task"] is None


def test_reproduce_runs_init_sources_first_and_refuses_cycles():
    from lora_repro.protocol import init_order

    def cfg(task: str, init: str | None, method: str = "lora") -> dict:
        return {"task": {"name": task}, "method": {"name": method}, "seed": 0, "train": {"init_from_task": init}}

    plan = [cfg("rte", "stsb"), cfg("mrpc", "stsb"), cfg("stsb", "mnli"), cfg("mnli", None), cfg("rte", None, "full")]
    order = [(c["method"]["name"], c["task"]["name"]) for c in init_order(plan)]
    assert order == [("lora", "mnli"), ("full", "rte"), ("lora", "stsb"), ("lora", "rte"), ("lora", "mrpc")]
    with pytest.raises(ConfigError, match="cycle: rte -> stsb -> rte"):
        init_order([cfg("rte", "stsb"), cfg("stsb", "rte")])


def test_bad_config_stops_before_training():
    cfg = resolved("task=sst2")
    cfg["train"]["epochs"] = -1
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        resolve(cfg)
    cfg = resolved("+experiment=glue_cpu", "task=sst2", "method=lora")
    cfg["method"]["bottleneck"] = 8  # a protocol value for another family: caught after the protocol merge
    with pytest.raises(ConfigError, match=r"method\.bottleneck"):
        resolve(cfg)
    with pytest.raises(MissingConfigException, match="no_such_method"):
        resolved("method=no_such_method")


@pytest.mark.slow
def test_glue_smoke_config_to_record_to_table(store_root, tmp_path):
    env = {"LORA_REPRO_RESULTS": str(store_root), CACHE_ENV: str(tmp_path / "cache")}  # weights saved there
    cmd = [sys.executable, "-m", "experiments.reproduce", "+experiment=glue_smoke"]
    first = subprocess.run(cmd, cwd=REPO_ROOT, env={**_env(), **env}, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    records = RunStore(store_root).records("glue_smoke")
    assert {(r["task"], r["method"]) for r in records} == {("sst2", "full"), ("sst2", "lora"),
                                                          ("stsb", "full"), ("stsb", "lora")}
    for record in records:
        assert record["params"]["trainable"] < record["params"]["trainable_with_head"] <= record["params"]["total"]
        assert record["memory"]["peak_rss_bytes"] > 0 and record["timing"]["train_samples_per_s"] > 0
        assert record["best_epoch"] == 1
    table = (store_root / "tables" / "glue_glue_smoke.md").read_text()
    assert "| lora |" in table and "(95.1)" in table  # ours beside the paper's RoB-base LoRA SST-2
    # the protocol starts LoRA's SST-2 from its STS-B weights: the driver ran STS-B first, the table says so
    init = {(r["task"], r["method"]): r["checkpoint"]["init_from"] for r in records}
    assert init[("sst2", "lora")] and init[("stsb", "lora")] is None and init[("sst2", "full")] is None
    assert "lora SST2 from STSB" in table and table.count("‡") == 2  # the caption's key and the one cell
    efficiency = (store_root / "tables" / "efficiency_glue_smoke.md").read_text()
    lora_row = next(line for line in efficiency.splitlines() if line.startswith("| lora |"))
    assert float(lora_row.split("|")[6]) < 1.0  # LoRA's weights+grads+Adam bytes are a fraction of full FT's
    # a second run trains nothing and writes the same table
    # (overrides may follow --shard: the Makefile passes ARGS last)
    second = subprocess.run([*cmd, "--shard", "0/1", "seed=0"], cwd=REPO_ROOT, env={**_env(), **env},
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and second.stderr.count("already in the store") == 4
    assert _table_body(store_root / "tables" / "glue_glue_smoke.md") == _table_body_text(table)


def _table_body(path: Path) -> list[str]:
    return _table_body_text(path.read_text())


def _table_body_text(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "LORA_REPRO_RESULTS"}


@pytest.mark.slow
def test_wandb_offline_run_holds_the_logged_keys(store_root, tmp_path):
    cfg = resolved("task=stsb", "logger=wandb", "train.train_subset=16", "train.eval_subset=16")
    cfg["logger"]["dir"] = str(tmp_path)
    record = run(cfg, RunStore(store_root))
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    keys = ("params/trainable", "best/pearson", "timing/train_s", "memory/peak_rss_bytes", "pearson",
            "train_loss", "default", record["key"][:6])  # "default": the experiment group
    # the offline run's protobuf log holds every key as plain bytes; wandb's service process may still be
    # writing it when finish() returns, so wait (bounded) for the condition rather than read it once
    deadline = time.monotonic() + 60
    while True:
        missing = [key for key in keys if key.encode() not in runs[0].read_bytes()]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not missing


@pytest.mark.slow
@pytest.mark.java
@pytest.mark.parametrize("dataset", ["e2e", "webnlg", "dart"])
def test_nlg_smoke_pipeline_decodes_once_per_unique_input(dataset, store_root):
    if shutil.which("java") is None:
        pytest.skip("METEOR needs Java (apt-get install default-jre-headless)")
    cfg = resolved(f"+experiment={dataset}_smoke", f"task={dataset}", "method=lora")
    record = run(cfg, RunStore(store_root))
    best = record["best"]
    assert best["decoded_inputs"] == 8  # 8 unique inputs, however many reference lines they have
    assert "BLEU" in best and "METEOR" in best
    if dataset == "webnlg":  # a seeded sample of 8 inputs holds both category kinds
        assert "seen_BLEU" in best and "unseen_BLEU" in best
    if dataset == "e2e":
        assert {"NIST", "ROUGE_L", "CIDEr"} <= set(best)
    hyp_lines = (Path(best["generations_dir"]) / ("e2e_hyp.txt" if dataset == "e2e" else "hypothesis")).read_text()
    assert len(hyp_lines.splitlines()) == 8


def test_bf16_run_trains_and_fp16_on_cpu_is_refused(store_root):
    cfg = resolved("task=sst2", "model=tiny_bert", "method=lora", "scale=smoke", "train.precision=bf16",
                   "experiment_name=bf16")
    record = run(cfg, RunStore(store_root))
    assert record["status"] == "completed" and record["timing"]["steps"] > 0
    assert record["config"]["train"]["precision"] == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolved("task=sst2", "model=tiny_bert", "scale=smoke", "train.precision=fp16", "train.device=cpu")


def test_init_from_a_run_without_saved_weights_names_the_fix(store_root):
    common = ["model=tiny_bert", "method=lora", "scale=smoke", "experiment_name=init"]
    run(resolved("task=stsb", *common), RunStore(store_root))  # smoke scale saves no weights
    fix = r"saved no weights .*rerun task=stsb with force=true train\.save_weights=true"
    with pytest.raises(ConfigError, match=fix):
        run(resolved("task=sst2", "train.init_from_task=stsb", *common), RunStore(store_root))
    with pytest.raises(ConfigError, match="no completed mrpc run"):
        run(resolved("task=sst2", "train.init_from_task=mrpc", *common), RunStore(store_root))


def test_init_source_key_is_the_protocols_run_on_the_source_task():
    glue = ["+experiment=glue_cpu"]
    stsb_lora = run_key(resolved(*glue, "task=stsb", "method=lora"))
    assert init_source_key([*glue, "task=rte", "method=lora"]) == stsb_lora
    assert init_source_key([*glue, "task=rte", "method=full"]) is None  # FT starts from the pretrained model
    # an init given on the command line applies to the run, not to its source
    assert (init_source_key([*glue, "task=rte", "method=full", "train.init_from_task=mrpc"])
            == run_key(resolved(*glue, "task=mrpc", "method=full")))
    # issue 14: `task=rte`, then `train.init_from_task=rte` (default task): the source is the first run
    assert init_source_key(["train.init_from_task=rte"]) == run_key(resolved("task=rte"))


def test_init_from_task_on_the_command_line_starts_from_the_earlier_run(store_root, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    store = RunStore(store_root)
    common = ["model=tiny_bert", "method=lora", "scale=smoke", "experiment_name=init", "train.save_weights=true"]
    source = run(resolved(*common, "task=stsb"), store)
    overrides = [*common, "train.init_from_task=stsb"]
    record = run(resolved(*overrides), store, init_key=init_source_key(overrides))
    assert record["task"] == "sst2" and source["key"] in record["checkpoint"]["init_from"]


def test_init_uses_the_keyed_source_run_not_a_later_one_of_another_config(store_root, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    store = RunStore(store_root)
    common = ["model=tiny_bert", "method=lora", "scale=smoke", "experiment_name=init", "train.save_weights=true"]
    wanted = run(resolved("task=stsb", "train.lr=1e-3", *common), store)
    later = run(resolved("task=stsb", "train.lr=2e-3", *common), store)  # another protocol's source, newer
    store.write({**later, "created_at": "2999-01-01T00:00:00+00:00"}, force=True)  # newer without waiting
    target = resolved("task=sst2", "train.init_from_task=stsb", *common)
    assert wanted["key"] in run(target, store, init_key=wanted["key"])["checkpoint"]["init_from"]
    fallback = resolved("task=sst2", "train.init_from_task=stsb", "train.lr=3e-3", *common)
    assert later["key"] in run(fallback, store)["checkpoint"]["init_from"]  # no key: the latest match


def test_committed_glue_cpu_runs_started_from_the_protocols_source_runs():
    """Provenance of the committed table: each initialised run loaded its protocol's STS-B run."""
    from lora_repro.protocol import init_order

    protocol = OmegaConf.to_container(compose_config(["+experiment=glue_cpu"]).protocol, resolve=True)
    plan = init_order([resolved("+experiment=glue_cpu", f"task={t}", f"method={m}")
                       for m in protocol["methods"] for t in protocol["tasks"]])
    keys = {(method_label(c), c["task"]["name"]): run_key(c) for c in plan}
    store = RunStore(REPO_ROOT / "results")
    started = 0
    for cfg in plan:
        source = cfg["train"].get("init_from_task")
        if source and store.exists("glue_cpu", run_key(cfg)):
            init_from = Path(store.read("glue_cpu", run_key(cfg))["checkpoint"]["init_from"]).stem
            assert init_from == keys[(method_label(cfg), source)], (cfg["task"]["name"], method_label(cfg))
            started += 1
    assert started == 10  # five PEFT methods x (MRPC, RTE)


def test_every_committed_record_keeps_its_key():
    """Each committed record's stored config hashes to its key (the store stays valid), and every protocol
    record today's conf can recompose (its protocol, task, method and seed) recomposes to the same key.
    (Sweep records are recomposed by their rerun: `make sweep-rank` a second time trains nothing.)"""
    protocols = {p.stem for p in (REPO_ROOT / "conf" / "experiment").glob("*.yaml") if not p.stem.startswith("sweep")}
    recomposed, compose = 0, functools.cache(resolved)
    for path in sorted((REPO_ROOT / "results" / "runs").glob("*/*.json")):
        record = json.loads(path.read_text())
        assert run_key(record["config"]) == record["key"], path
        config = record["config"]
        if "task" not in config or record["experiment"] not in protocols:  # latency grids, sweeps
            continue
        cfg = compose(f"+experiment={record['experiment']}", f"task={config['task']['name']}",
                      f"method={record['method']}", f"seed={config['seed']}")
        recomposed += run_key(cfg) == record["key"]
    # the records of today's protocols (48), and full fine-tuning's seeds 1 and 2 on GLUE RTE, MRPC and CoLA (6)
    assert recomposed == 54
