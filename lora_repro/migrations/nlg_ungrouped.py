"""Make the NLG records say they were trained without length grouping (``train.group_by_length: false``).

Until commit ``GROUPING_COMMIT`` the NLG loaders ignored ``train.group_by_length`` and always drew
batches in plain shuffled order, while the configs (default true) said otherwise. Since then the flag
is honoured, so a record whose config says true and that was made before that commit describes a run
the config no longer reproduces. This migration rewrites such a record's ``config.train.group_by_length``
to false, which gives it a new key (the file is renamed to it) and keeps the old key in
``previous_keys``; its metrics, weights path and everything else are unchanged.

Which records: NLG (``config.task.kind == "nlg"``), group_by_length true, made by a commit that does not
contain ``GROUPING_COMMIT`` (``git merge-base --is-ancestor``). A record whose commit git does not know
is left alone and reported: nothing here can say how it was trained. Records that already say false
(e.g. the rank sweeps, made after the fix with false) are untouched.

    python -m lora_repro.migrations.nlg_ungrouped [--root results] [--dry-run]
"""

from __future__ import annotations

import argparse
import copy
import logging
from pathlib import Path

from lora_repro.provenance import git
from lora_repro.store import RunStore, run_key, validate_record

log = logging.getLogger(__name__)

GROUPING_COMMIT = "2fdf5b43485557ced2f118442a8ad812f96debd2"  # "data: ... (honours train.group_by_length)"


def trained_ungrouped(record: dict) -> bool | None:
    """Whether the record's code ignored group_by_length for NLG (True), honoured it (False), or unknown (None)."""
    commit = (record.get("env") or {}).get("git_commit")
    if not commit or any(git("cat-file", "-e", f"{c}^{{commit}}") is None for c in (commit, GROUPING_COMMIT)):
        return None
    return git("merge-base", "--is-ancestor", GROUPING_COMMIT, commit) is None


def needs_migration(record: dict) -> bool:
    config = record["config"]
    return (config.get("task") or {}).get("kind") == "nlg" and config["train"].get("group_by_length") is True


def migrated(record: dict) -> dict:
    """The record with group_by_length false, its new key, and the old key in ``previous_keys``."""
    new = copy.deepcopy(record)
    new["config"]["train"]["group_by_length"] = False
    new["key"] = run_key(new["config"])
    new["previous_keys"] = [*record.get("previous_keys", []), record["key"]]
    validate_record(new, f"migrated record {record['key']}")
    return new


def migrate(store: RunStore, dry_run: bool = False) -> list[tuple[str, str, str]]:
    """Migrate every record that needs it; return (experiment, old key, new key) for each one moved."""
    moved = []
    for record in store.records():
        if not needs_migration(record):
            continue
        how = trained_ungrouped(record)
        if not how:
            log.warning("left %s/%s: %s", record["experiment"], record["key"],
                        "its commit is unknown to git" if how is None else "it was trained grouped")
            continue
        new = migrated(record)
        moved.append((record["experiment"], record["key"], new["key"]))
        if dry_run:
            continue
        store.write(new)  # os.link: refuses to overwrite a record already at the new key
        store.path(record["experiment"], record["key"]).unlink()
    return moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=None, help="the results folder (default: the store's)")
    parser.add_argument("--dry-run", action="store_true", help="list what would move, write nothing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    for experiment, old, new in migrate(RunStore(args.root), args.dry_run):
        print(f"{experiment}: {old} -> {new}{' (dry run)' if args.dry_run else ''}")


if __name__ == "__main__":
    main()
