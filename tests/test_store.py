"""The results store: keyed, atomic, immutable records and their flattened table."""

import json
import multiprocessing
import os
import re
import subprocess
import sys
import time

import pytest

from lora_repro import io, store

CONFIG = {
    "task": {"name": "rte", "max_length": 128},
    "method": {"name": "lora", "r": 8, "alpha": 16},
    "seed": 0,
    "logger": {"wandb": False},
    "output_dir": "/tmp/somewhere",
}
ENV = {"git_commit": None, "git_dirty": None, "packages": {}, "hardware": {}}


def make_record(config=CONFIG, experiment="demo", **overrides) -> dict:
    fields = dict(
        experiment=experiment, task="rte", model="tiny-bert", method="lora", seed=0,
        scale="smoke", epochs=[{"epoch": 1, "accuracy": 0.5}, {"epoch": 2, "accuracy": 0.75}],
        best={"accuracy": 0.75}, best_epoch=2,
        params={"trainable": 1000, "trainable_with_head": 1500, "total": 100000},
        timing={"train_s": 1.5}, memory={"peak_rss_bytes": 10}, checkpoint={"path": None},
        status="completed", env=ENV,
    )
    fields.update(overrides)
    return store.new_record(config, **fields)


def test_key_ignores_bookkeeping_and_order():
    key = store.run_key(CONFIG)
    assert re.fullmatch(r"[0-9a-f]{16}", key)
    reordered = {"seed": 0, "method": {"alpha": 16, "r": 8, "name": "lora"},
                 "task": {"max_length": 128, "name": "rte"}, "force": True, "hydra": {"x": 1}}
    assert store.run_key(reordered) == key
    assert store.run_key({**CONFIG, "seed": 1}) != key
    with pytest.raises(ValueError, match="not plain JSON"):
        store.run_key({"path": object()})


def test_write_read_and_rerun_skip(store_root):
    runs = store.RunStore()
    record = make_record()
    assert not runs.exists("demo", record["key"])
    path = runs.write(record)
    assert path == store_root / "runs" / "demo" / f"{record['key']}.json"
    assert runs.exists("demo", record["key"]) and runs.read("demo", record["key"]) == record
    with pytest.raises(store.RecordExistsError, match="force=True"):
        runs.write(make_record(timing={"train_s": 9.0}))
    assert runs.read("demo", record["key"])["timing"] == {"train_s": 1.5}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left


def test_force_overwrites(store_root):
    runs = store.RunStore()
    runs.write(make_record())
    replaced = make_record(timing={"train_s": 9.0})
    runs.write(replaced, force=True)
    assert runs.read("demo", replaced["key"])["timing"] == {"train_s": 9.0}


def _race(root, writer: int, force: bool, start, results) -> None:
    runs = store.RunStore(root)
    record = make_record(timing={"writer": writer, "padding": "x" * 200_000})
    start.wait()
    try:
        runs.write(record, force=force)
        results.put("written")
    except store.RecordExistsError:
        results.put("exists")


@pytest.mark.parametrize("force", [False, True])
def test_concurrent_writers_leave_one_whole_record(store_root, force):
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(4), context.Queue()
    workers = [
        context.Process(target=_race, args=(store_root, i, force, start, results)) for i in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    outcomes = sorted(results.get(timeout=5) for _ in workers)
    assert outcomes == (["written"] * 4 if force else ["exists"] * 3 + ["written"])
    folder = store_root / "runs" / "demo"
    assert [p.suffix for p in folder.iterdir()] == [".json"]
    record = store.RunStore().read("demo", store.run_key(CONFIG))  # parses and validates
    assert record["timing"]["writer"] in range(4)


def test_dataframe_flattens_nested_fields(store_root):
    runs = store.RunStore()
    runs.write(make_record())
    runs.write(make_record({**CONFIG, "seed": 1}, seed=1, best={"accuracy": 0.8}))
    runs.write(make_record(experiment="other"))
    table = store.load_dataframe(experiment="demo")
    assert len(table) == 2 and len(store.load_dataframe()) == 3
    for column in ("best.accuracy", "config.method.r", "params.trainable",
                   "params.trainable_with_head", "timing.train_s", "epochs", "key", "status"):
        assert column in table.columns
    assert sorted(table["best.accuracy"]) == [0.75, 0.8]
    assert table["config.method.r"].tolist() == [8, 8]


def test_bad_records_are_refused_with_the_reason(store_root):
    record = make_record()
    broken = {name: value for name, value in record.items() if name not in ("task", "params")}
    with pytest.raises(ValueError, match=r"missing fields \['task', 'params'\]"):
        store.RunStore().write(broken)
    with pytest.raises(ValueError, match=r"key .* != run_key"):
        store.RunStore().write({**record, "config": {**CONFIG, "seed": 5}})
    with pytest.raises(ValueError, match="status 'done'"):
        make_record(status="done")

    path = store_root / "runs" / "demo" / f"{record['key']}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=rf"{path}.*missing fields"):
        store.RunStore().records()
    path.write_text('{"key": ')
    with pytest.raises(ValueError, match=rf"{path}, line 1: not valid JSON"):
        store.RunStore().read("demo", record["key"])


def test_env_info_names_code_and_hardware():
    info = store.env_info()
    assert set(info) == {"git_commit", "git_dirty", "code", "packages", "hardware"}
    assert info["packages"]["torch"] and info["hardware"]["cpu_count"] >= 1
    assert len(info["code"]) == 16
    json.dumps(info)


def test_records_are_world_readable(store_root):
    path = store.RunStore().write(make_record())
    assert path.stat().st_mode & 0o777 == 0o644


def test_interrupted_writes_are_cleaned_but_a_live_writers_file_is_not(store_root):
    folder = store_root / "runs" / "demo"
    folder.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = io._host()
    orphan = folder / f".abc.json.{host}-{dead.pid}.x1y2.tmp"  # its writer is gone
    live = folder / f".def.json.{host}-{os.getpid()}.x1y2.tmp"  # this process: a write in progress
    old = folder / ".0123456789abcdef.q9w8.tmp"  # from before names carried a pid, an hour old
    for tmp in (orphan, live, old):
        tmp.write_text("{")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    store.RunStore()
    assert sorted(p.name for p in folder.iterdir()) == [live.name]


def test_a_migrated_record_is_read_by_its_previous_key_but_never_reused_for_it(store_root):
    """A config keyed like a migrated record's old key trains anew (the old config said what the run did
    not do: e.g. the NLG records stored as grouped were trained in shuffled order); references still read."""
    runs = store.RunStore()
    old_key = store.run_key({**CONFIG, "seed": 7})
    record = {**make_record(), "previous_keys": [old_key]}
    runs.write(record)
    assert runs.read("demo", old_key) == record and runs.exists("demo", record["key"])
    assert not runs.exists("demo", old_key)
    assert not runs.exists("demo", store.run_key({**CONFIG, "seed": 8}))
    retrained = make_record({**CONFIG, "seed": 7}, seed=7)
    assert retrained["key"] == old_key
    runs.write(retrained)  # the run that config really describes takes its key
    assert runs.read("demo", old_key) == retrained and runs.read("demo", record["key"]) == record
    with pytest.raises(ValueError, match="previous_keys"):
        store.validate_record({**record, "previous_keys": ["nope"]})


def test_options_added_later_keep_old_keys_at_their_old_behaviour():
    config = {**CONFIG, "train": {"lr": 1e-3}}
    key = store.run_key(config)
    assert store.run_key({**config, "train": {"lr": 1e-3, "precision": "fp32"}}) == key
    assert store.run_key({**config, "train": {"lr": 1e-3, "precision": "bf16"}}) != key
