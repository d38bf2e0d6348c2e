"""A store that never lies: a skip needs the same data, other code is flagged, weights are checked,
and the committed NLG records say how they were trained (the group_by_length migration)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import save

from lora_repro import provenance
from lora_repro.checkpoints import WeightsError, load_verified
from lora_repro.config import ConfigError, resolve_overrides
from lora_repro.io import atomic_write_bytes
from lora_repro.migrations import nlg_ungrouped
from lora_repro.paths import DATA_ENV, REPO_ROOT, DataRootError, data_root
from lora_repro.report.common import stale_text
from lora_repro.run import DataMismatchError, run
from lora_repro.store import RunStore, run_key

MIGRATED = REPO_ROOT / "results" / "runs" / "e2e_cpu" / "b49938882a135470.json"  # E2E LoRA, once 57ebcc9a4710f28c


def _tiny(*extra: str) -> dict:
    return resolve_overrides(["task=sst2", "model=tiny_bert", "method=lora", "scale=smoke", "experiment_name=prov",
                              *extra])


def test_data_fingerprint_hashes_contents_not_the_root(tmp_path):
    for root in (tmp_path / "a", tmp_path / "b"):
        (root / "x").mkdir(parents=True)
        (root / "x" / "train.tsv").write_text("s\tl\nhello\t1\n")
    subset = {"train_subset": 4}
    a = provenance.data_fingerprint(tmp_path / "a", "local", [tmp_path / "a" / "x" / "train.tsv"], subset)
    b = provenance.data_fingerprint(tmp_path / "b", "local", [tmp_path / "b" / "x" / "train.tsv"], subset)
    assert a["sha256"] == b["sha256"] and a["root"] != b["root"]
    assert a["files"] == [{"path": "x/train.tsv", "bytes": 12, "sha256": a["files"][0]["sha256"]}]
    edited = tmp_path / "b" / "x" / "train.tsv"
    edited.write_text("s\tl\nhellO\t1\n")  # same size, other bytes
    os.utime(edited, ns=(edited.stat().st_mtime_ns + 10**9,) * 2)  # as a later edit would (coarse clocks)
    changed = provenance.data_fingerprint(tmp_path / "b", "local", [tmp_path / "b" / "x" / "train.tsv"], subset)
    assert changed["sha256"] != a["sha256"]
    assert provenance.data_difference(a, changed) == "x/train.tsv (12 -> 12 bytes)"
    other_subset = provenance.data_fingerprint(tmp_path / "a", "local", [tmp_path / "a" / "x" / "train.tsv"], {})
    assert other_subset["sha256"] != a["sha256"]


def test_a_skip_needs_the_same_data_and_force_replaces_the_record(store_root, tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "glue" / "SST-2").mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        shutil.copy(data_root() / "glue" / "SST-2" / name, root / "glue" / "SST-2" / name)
    monkeypatch.setenv(DATA_ENV, str(root))  # the key ignores where the data is: as with $LORA_REPRO_DATA
    store, cfg = RunStore(store_root), _tiny()
    first = run(cfg, store)
    assert [f["path"] for f in first["data"]["files"]] == ["glue/SST-2/dev.tsv", "glue/SST-2/train.tsv"]
    assert first["data"]["root"] == str(root.resolve())
    assert run(cfg, store) == first  # the same data: skipped
    train = root / "glue" / "SST-2" / "train.tsv"
    train.write_text("".join(train.read_text().splitlines(keepends=True)[:101]))  # cut to 100 rows (>= the subset)
    with pytest.raises(DataMismatchError) as err:
        run(cfg, store)
    message = str(err.value)
    assert "\n" not in message and first["data"]["sha256"] in message and "glue/SST-2/train.tsv (" in message
    assert "force=true" in message and store.read("prov", first["key"]) == first  # nothing replaced
    second = run({**cfg, "force": True}, store)
    assert second["data"]["sha256"] not in (first["data"]["sha256"], None)
    assert store.read("prov", first["key"])["data"] == second["data"]
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "gone"))
    with pytest.raises(DataRootError):
        run(cfg, store)


def test_a_record_made_by_other_code_is_kept_or_rerun(store_root):
    store, cfg = RunStore(store_root), _tiny()
    first = run(cfg, store)
    assert first["env"]["code"] == provenance.code_fingerprint() and not provenance.is_stale(first)
    path = store.path("prov", first["key"])
    path.write_text(json.dumps({**first, "env": {**first["env"], "code": "0" * 16}}))
    assert run(cfg, store)["env"]["code"] == "0" * 16  # stale=keep: reused
    rerun = run({**cfg, "stale": "rerun"}, store)
    assert store.read("prov", first["key"])["env"]["code"] == rerun["env"]["code"] == provenance.code_fingerprint()
    with pytest.raises(ConfigError, match="stale='later': use one of keep, rerun"):
        _tiny("stale=later")


def test_tables_count_runs_of_other_or_unknown_code():
    runs = pd.DataFrame({"env.code": [provenance.code_fingerprint(), "0" * 16, None]})
    assert stale_text(runs, "reproduce-e2e") == (
        "2 of 3 runs were made by other code than this checkout's (1 code unknown: made before records named "
        "their code); `make reproduce-e2e ARGS=stale=rerun` retrains them (the default, stale=keep, reuses them).")
    assert stale_text(runs.iloc[:1], "reproduce-e2e") == ""
    assert provenance.record_code(json.loads(MIGRATED.read_text())) == provenance.UNKNOWN


def test_weights_are_checked_against_their_record(tmp_path):
    data = save({"w": torch.ones(3)})
    path = atomic_write_bytes(tmp_path / "w.safetensors", data)
    digest = hashlib.sha256(data).hexdigest()
    assert torch.equal(load_verified(path, digest)["w"], torch.ones(3))
    path.write_bytes(data[:-1] + b"\x01")  # one byte altered
    with pytest.raises(WeightsError, match=rf"^{path}: sha256 .* differs from its record's {digest[:16]}"):
        load_verified(path, digest)
    path.write_bytes(data[: len(data) // 2])  # truncated, no checksum recorded (an older record)
    with pytest.raises(WeightsError, match=rf"^{path}: not a readable safetensors file .*truncated"):
        load_verified(path, None)


def _as_before_migration(record: dict) -> dict:
    old = copy.deepcopy(record)
    old["config"]["train"]["group_by_length"] = True
    old.pop("previous_keys")
    old["key"] = run_key(old["config"])
    return old


def test_the_nlg_migration_moves_ungrouped_records_to_their_true_key(store_root):
    migrated = json.loads(MIGRATED.read_text())
    old = _as_before_migration(migrated)
    assert old["key"] == "57ebcc9a4710f28c"  # the committed record's key before the migration
    head = provenance.git("rev-parse", "HEAD")
    grouped = _as_before_migration({**migrated, "seed": 1, "config": {**migrated["config"], "seed": 1},
                                    "env": {**migrated["env"], "git_commit": head}})  # trained grouped: kept
    unknown = _as_before_migration({**migrated, "seed": 2, "config": {**migrated["config"], "seed": 2},
                                    "env": {**migrated["env"], "git_commit": "f" * 40}})
    already = {k: v for k, v in {**migrated, "seed": 3, "config": {**migrated["config"], "seed": 3}}.items()
               if k != "previous_keys"}
    already["key"] = run_key(already["config"])
    store = RunStore(store_root)
    for record in (old, grouped, unknown, already):
        store.write(record)
    assert nlg_ungrouped.migrate(store) == [("e2e_cpu", old["key"], migrated["key"])]
    assert store.read("e2e_cpu", migrated["key"]) == migrated == store.read("e2e_cpu", old["key"])
    assert not store.path("e2e_cpu", old["key"]).exists()
    for record in (grouped, unknown, already):
        assert store.read("e2e_cpu", record["key"]) == record
    assert nlg_ungrouped.migrate(store) == []  # idempotent


@pytest.mark.parametrize("experiment", ["e2e_cpu", "webnlg_cpu", "dart_cpu"])
def test_the_migrated_records_say_they_were_trained_in_shuffled_order(experiment):
    """The migrated records keep keys that say group_by_length false; a protocol that still said false
    would find its LoRA record, one that groups (today all three) trains anew."""
    store = RunStore(REPO_ROOT / "results")
    migrated = [record for record in store.records(experiment) if "previous_keys" in record]
    assert migrated and all(record["config"]["train"]["group_by_length"] is False for record in migrated)
    assert all(run_key(record["config"]) == record["key"] for record in migrated)
    cfg = resolve_overrides([f"+experiment={experiment}", "method=lora"])
    found = store.exists(experiment, run_key(cfg)) and "previous_keys" in store.read(experiment, run_key(cfg))
    assert found == (cfg["train"]["group_by_length"] is False)
