"""The results store: one immutable JSON record per run, found again through its config's key.

Layout: ``<results_dir()>/runs/<experiment>/<key>.json``. A record is written once, atomically,
and never edited, so tables and plots regenerated from the store always see whole runs, and a
killed-and-rerun sweep neither duplicates nor tears a record: a rerun of an identical config
finds its key (``RunStore.exists``) and is skipped unless forced.

Record schema, ``SCHEMA_VERSION = 1`` (all fields required; ``new_record`` fills the first
three and ``env``):

==================  ===========  ==========================================================
field               type         meaning
==================  ===========  ==========================================================
schema_version      int          ``SCHEMA_VERSION`` at write time
key                 str          ``run_key(config)``: 16 hex chars; also the file name
created_at          str          ISO 8601 UTC time of writing
experiment          str          experiment (sweep / protocol) name; the folder name
task                str          e.g. ``sst2``, ``mnli``, ``e2e``
model               str          model id as configured
method              str          e.g. ``full``, ``bitfit``, ``lora``, ``adapter_h``
seed                int          training seed
scale               str          ``smoke`` | ``cpu`` | ``paper``
config              dict         the resolved run config (plain JSON), source of ``key``
epochs              list[dict]   per-epoch metrics, e.g. ``{"epoch": 1, "accuracy": 0.91}``
best                dict         metrics of the selected epoch
best_epoch          int | null   the selected epoch (null if the run failed before one)
params              dict         ``trainable`` (excluding the task head: the paper's count),
                                 ``trainable_with_head``, ``total``; ints or null
timing              dict         seconds and rates, e.g. ``train_s``, ``samples_per_s``
memory              dict         peak memory in bytes, e.g. ``peak_gpu_bytes``
checkpoint          dict         where the method-only weights are, their size and (since
                                 the checksum) sha256, e.g. ``{"path": ..., "bytes": ...}``
env                 dict         ``env_info()``: ``git_commit``, ``git_dirty``, ``code``
                                 (since the fingerprint), ``packages``, ``hardware``
status              str          ``completed`` | ``failed``
==================  ===========  ==========================================================

Optional fields (records written before they existed stay valid without them):

==================  ===========  ==========================================================
data                dict         ``provenance.data_fingerprint``: the data root, source, each
                                 file read (path under the root, bytes, sha256), the subset,
                                 and ``sha256`` over them all (16 hex)
previous_keys       list[str]    keys this record was stored under before a migration
                                 (``lora_repro/migrations``); ``RunStore.exists``/``read``
                                 find the record by them too
reason              str          why a ``failed`` run stopped (e.g. a NaN loss at step 12);
                                 tables read completed records only, and the next run of a
                                 failed record's config trains it again
==================  ===========  ==========================================================

``env.code`` (``provenance.code_fingerprint``) names the code that made a record; ``checkpoint.sha256``
the saved weights' bytes, which ``checkpoints.load_verified`` checks on every load. Records are written
0644, and the temporary files of interrupted writes are removed when a store opens
(``io.clean_stale_temps``).

What a key does not cover, and how the store stays honest about it (``lora_repro.provenance``):

- *Data.* The key is the config's alone, so the committed records keep their keys; the record's
  ``data`` fingerprint is compared when a run would be skipped. A mismatch (a file cut short, another
  or an empty data root) never returns the stored metrics: the run stops with one line naming both
  fingerprints and the fix, or, with ``force=true``, retrains and replaces the record. A missing data
  root fails before the store is consulted. Records written before data fingerprints (every committed
  one) have ``data`` *unknown*: they are still reused, with a warning that says so. They were not
  back-filled from today's files: nothing here can prove today's files are the bytes those runs read
  (the shared data root was staged again after every committed run, so file times cannot tell either).
- *Code.* A record whose ``env.code`` differs from this checkout's, or that has none ("code unknown":
  every record made before the field), is *stale*: ``stale=keep`` (the default) reuses it and the
  tables add a caption line counting such runs; ``stale=rerun`` retrains and replaces them.

Metric values are fractions as ``lora_repro.metrics`` returns them; NaN (e.g. a Pearson
correlation of constant predictions) is written as JSON ``NaN``, which Python and pandas read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from lora_repro.io import clean_stale_temps, make_temp_beside
from lora_repro.paths import results_dir
from lora_repro.provenance import env_info

SCHEMA_VERSION = 1
# Config keys that do not change what a run computes (where it logs, whether to overwrite, whether
# to rerun stale records, Hydra's own bookkeeping, where outputs go), so they must not change its key.
IGNORED_CONFIG_KEYS = ("logger", "force", "stale", "hydra", "output_dir")
STATUSES = ("completed", "failed")

_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "key": str,
    "created_at": str,
    "experiment": str,
    "task": str,
    "model": str,
    "method": str,
    "seed": int,
    "scale": str,
    "config": dict,
    "epochs": list,
    "best": dict,
    "best_epoch": (int, type(None)),
    "params": dict,
    "timing": dict,
    "memory": dict,
    "checkpoint": dict,
    "env": dict,
    "status": str,
}
_OPTIONAL_FIELD_TYPES: dict[str, type] = {"data": dict, "previous_keys": list, "reason": str}
_PARAM_FIELDS = ("trainable", "trainable_with_head", "total")
# What each adapter preset ran before `placement` existed (the suite's first Lin and Pfeiffer wrapped the FFN output
# projection). The published sites came later (ffn_add_norm, block_out): configs holding them hash their placement.
_OLD_ADAPTER_PLACEMENT = {"adapter_h": ["attn_out", "ffn_out"], "adapter_d": ["attn_out", "ffn_out"],
                          "adapter_l": ["ffn_out"], "adapter_p": ["ffn_out"]}
# (group, key) -> the value that reproduces the behaviour from before the key existed; a callable
# takes the group's dict and returns it, when it depended on the preset (None: the preset always had
# the key, so it is hashed); `_ANY` when every value of a key that did not exist was implied.
_ANY = object()
KEYS_ADDED_LATER: dict[tuple[str, str], Any] = {
    ("train", "precision"): "fp32",
    ("train", "checkpoint_every"): _ANY,  # how often resume state is saved; the result does not depend on it
    ("train", "compile"): False,
    ("train", "fast_dropout"): False,
    # typed configs (lora_repro/schemas.py) made every preset's implicit choices explicit fields
    ("method", "label"): None,
    ("method", "top_k"): None,
    ("method", "placement"): lambda m: _OLD_ADAPTER_PLACEMENT.get(m["name"]),
    ("method", "layer_norm"): lambda m: None if m["name"] == "adapter_l" else False,
    ("method", "drop_layers"): lambda m: None if m["name"] == "adapter_d" else 0,
    ("method", "init_std"): lambda m: 0.01 if m["name"].startswith("adapter_") else None,
    # AdapterDrop's training-time random drop and inference drop: absent before, i.e. never dropped
    ("method", "random_drop_max"): 0,
    ("method", "eval_drop_layers"): 0,
    ("method", "per_layer"): lambda m: m["name"] == "prefix_layer",
    **{("model", name): None for name in ("hub_id", "package", "subdir", "format", "gguf_file", "shape",
                                          "attn_implementation")},
}
# Typed fields whose older configs held ints: a float schema field turns alpha: 8 into 8.0, which JSON
# spells differently, so an integral value is hashed as the int it was before.
INTEGRAL_AS_INT = (("method", "alpha"),)
_KEY_PATTERN = re.compile(r"[0-9a-f]{16}")
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _as_before(node: Any, group: str | None = None) -> Any:
    """``node`` with every group section (``method``, ``model``, ``train``, at any depth: a latency
    variant nests its method) spelled as before its later keys existed (``KEYS_ADDED_LATER``,
    ``INTEGRAL_AS_INT``)."""
    if isinstance(node, list):
        return [_as_before(item) for item in node]
    if not isinstance(node, Mapping):
        return node
    section = {key: _as_before(value, key) for key, value in node.items()}
    for (rule_group, name), old_behaviour in KEYS_ADDED_LATER.items():
        if rule_group != group or name not in section:
            continue
        old = old_behaviour(section) if callable(old_behaviour) else old_behaviour
        always_hashed = callable(old_behaviour) and old is None  # the preset had the key before
        if old is _ANY or (not always_hashed and section[name] == old):
            del section[name]
    for rule_group, name in INTEGRAL_AS_INT:
        value = section.get(name)
        if rule_group == group and isinstance(value, float) and value.is_integer():
            section[name] = int(value)
    return section


class RecordExistsError(FileExistsError):
    """A record with this key is already stored; pass force=True to replace it."""


def run_key(config: Mapping[str, Any]) -> str:
    """16 hex chars of the SHA-256 of the canonical JSON of ``config``'s identity keys.

    Top-level keys in ``IGNORED_CONFIG_KEYS`` are left out, and so are keys added after records
    existed while they hold the value that reproduces the old behaviour (``KEYS_ADDED_LATER``), so
    adding an option does not orphan the store. ``config`` must be plain JSON data (for Hydra:
    ``OmegaConf.to_container(cfg, resolve=True)``).
    """
    identity = _as_before({name: value for name, value in config.items() if name not in IGNORED_CONFIG_KEYS})
    try:
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    except TypeError as err:
        raise ValueError(
            f"run config is not plain JSON data ({err}); resolve it to dicts, lists, strings and "
            "numbers first, e.g. OmegaConf.to_container(cfg, resolve=True)"
        ) from err
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def new_record(
    config: Mapping[str, Any],
    *,
    experiment: str,
    task: str,
    model: str,
    method: str,
    seed: int,
    scale: str,
    epochs: list[dict[str, Any]],
    best: dict[str, Any],
    best_epoch: int | None,
    params: dict[str, int | None],
    timing: dict[str, Any],
    memory: dict[str, Any],
    checkpoint: dict[str, Any],
    status: str,
    env: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """A validated record with ``schema_version``, ``key``, ``created_at`` and ``env`` filled in
    (``data``: the run's data fingerprint, ``reason``: why a failed run stopped; each left out when None)."""
    record = {
        "schema_version": SCHEMA_VERSION,
        "key": run_key(config),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "experiment": experiment,
        "task": task,
        "model": model,
        "method": method,
        "seed": seed,
        "scale": scale,
        "config": dict(config),
        "epochs": epochs,
        "best": best,
        "best_epoch": best_epoch,
        "params": params,
        "timing": timing,
        "memory": memory,
        "checkpoint": checkpoint,
        "env": env_info() if env is None else env,
        "status": status,
        **({} if data is None else {"data": data}),
        **({"reason": reason} if reason is not None else {}),
    }
    validate_record(record)
    return record


def validate_record(record: Any, origin: str = "record") -> None:
    """Raise ValueError listing every way ``record`` breaks the schema (``origin`` names it)."""
    if not isinstance(record, dict):
        raise ValueError(f"{origin}: a record must be a JSON object, got {type(record).__name__}")
    problems = []
    missing = [name for name in _FIELD_TYPES if name not in record]
    if missing:
        problems.append(f"missing fields {missing}")
    for name, expected in {**_FIELD_TYPES, **_OPTIONAL_FIELD_TYPES}.items():
        if name in record and not isinstance(record[name], expected):
            problems.append(f"{name} has type {type(record[name]).__name__}")
    if record.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        problems.append(
            f"schema_version {record['schema_version']} (this code reads {SCHEMA_VERSION})"
        )
    if isinstance(record.get("key"), str) and not _KEY_PATTERN.fullmatch(record["key"]):
        problems.append(f"key {record['key']!r} is not 16 lowercase hex chars")
    if isinstance(record.get("previous_keys"), list) and not all(
        isinstance(key, str) and _KEY_PATTERN.fullmatch(key) for key in record["previous_keys"]
    ):
        problems.append("previous_keys holds a value that is not a 16-hex key")
    if isinstance(record.get("experiment"), str) and not _NAME_PATTERN.fullmatch(
        record["experiment"]
    ):
        problems.append(
            f"experiment {record['experiment']!r} is not a plain folder name "
            "(letters, digits, '.', '_', '-')"
        )
    if isinstance(record.get("status"), str) and record["status"] not in STATUSES:
        problems.append(f"status {record['status']!r} is not one of {list(STATUSES)}")
    if isinstance(record.get("params"), dict):
        absent = [name for name in _PARAM_FIELDS if name not in record["params"]]
        if absent:
            problems.append(f"params lacks {absent}")
    if isinstance(record.get("config"), dict) and isinstance(record.get("key"), str):
        expected_key = run_key(record["config"])
        if record["key"] != expected_key:
            problems.append(f"key {record['key']} != run_key(config) {expected_key}")
    if problems:
        raise ValueError(
            f"{origin} does not match results-store schema v{SCHEMA_VERSION}: "
            + "; ".join(problems)
            + ". Build records with lora_repro.store.new_record."
        )


class RunStore:
    """Records under ``<root>/runs/<experiment>/<key>.json`` (root default: ``results_dir()``).

    Opening a store removes the temporary files that interrupted writes left in its folders
    (``io.clean_stale_temps``: only those no live writer owns).
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else results_dir()
        for folder in (self.root / "runs").glob("*/"):
            clean_stale_temps(folder)

    def path(self, experiment: str, key: str) -> Path:
        if not _KEY_PATTERN.fullmatch(key):
            raise ValueError(f"run key {key!r} is not 16 lowercase hex chars (see run_key)")
        return self._folder(experiment) / f"{key}.json"

    def _folder(self, experiment: str) -> Path:
        if not _NAME_PATTERN.fullmatch(experiment):
            raise ValueError(
                f"experiment {experiment!r} is not a plain folder name (letters, digits, '.', "
                "'_', '-')"
            )
        return self.root / "runs" / experiment

    def stored_path(self, experiment: str, key: str) -> Path | None:
        """The file holding the record for ``key``: ``<key>.json``, else the record that lists ``key``
        in its ``previous_keys`` (a migrated record), else None."""
        path = self.path(experiment, key)
        if path.is_file():
            return path
        for candidate in sorted(self._folder(experiment).glob("*.json")):
            text = candidate.read_text(encoding="utf-8")
            if '"previous_keys"' in text and key in text and key in json.loads(text).get("previous_keys", []):
                return candidate
        return None

    def exists(self, experiment: str, key: str) -> bool:
        """Whether the run of the config keyed ``key`` is stored: ``<key>.json`` only. A migrated record's
        previous key does not count: the config once stored under it said something the run did not do,
        so a config that now means it must train (``read`` still follows the old key, for references)."""
        return self.path(experiment, key).is_file()

    def write(self, record: dict[str, Any], force: bool = False) -> Path:
        """Store ``record`` atomically; raise RecordExistsError if its key is taken, unless force.

        The JSON is written whole to a world-readable temporary file beside the target
        (``io.make_temp_beside``) and fsynced; it then becomes the record with ``os.link`` (fails if
        the name exists, so of two concurrent writers exactly one wins) or, when forced,
        ``os.replace``. Readers never see part of a record.
        """
        validate_record(record, "record to write")
        path = self.path(record["experiment"], record["key"])
        text = json.dumps(record, indent=2) + "\n"
        fd, tmp = make_temp_beside(path)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            if force:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise RecordExistsError(
                        f"run record {path} already exists (same config key); records are "
                        "immutable: skip this run, or pass force=True to replace it"
                    ) from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        _fsync_dir(path.parent)
        return path

    def read(self, experiment: str, key: str) -> dict[str, Any]:
        path = self.stored_path(experiment, key)
        if path is None:
            raise FileNotFoundError(
                f"no run record {self.path(experiment, key)} (experiment {experiment!r}, key {key})")
        return _load(path)

    def records(self, experiment: str | None = None) -> list[dict[str, Any]]:
        """All records (of one experiment, if given), in path order."""
        every = experiment is None
        paths = (self.root / "runs").glob("*/*.json") if every else self._folder(experiment).glob("*.json")
        return [_load(path) for path in sorted(paths)]


def load_dataframe(
    root: str | os.PathLike | None = None, experiment: str | None = None
) -> pd.DataFrame:
    """One row per record, nested dicts flattened to dotted columns (``best.accuracy``,
    ``config.method.r``, ``params.trainable``); ``epochs`` stays a list per row."""
    return pd.json_normalize(RunStore(root).records(experiment), sep=".")


def _load(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}, line {err.lineno}: not valid JSON ({err.msg}); the record is damaged: "
            "delete it and rerun that config"
        ) from err
    validate_record(record, str(path))
    if path.stem != record["key"] or path.parent.name != record["experiment"]:
        raise ValueError(
            f"{path}: holds experiment {record['experiment']!r} key {record['key']}, "
            "which does not match its location; move it to runs/<experiment>/<key>.json"
        )
    return record


def _fsync_dir(folder: Path) -> None:
    """Make the new directory entry durable too (a crash after write keeps the record)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
