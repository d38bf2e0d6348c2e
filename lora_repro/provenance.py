"""What a record was made from beyond its config: the data files it read and the code that ran it.

A run's key hashes its config only (``store.run_key``), so a changed data file or a changed training
code would otherwise reuse a record that today's data and code do not reproduce. Two fingerprints
close that gap (the policy is in ``lora_repro.store``'s docstring):

- ``data_fingerprint``: every file the run reads (path under the data root, bytes, sha256) and the
  subset, in the record's ``data`` field. Hashing contents catches a file edited in place with its
  size kept; the digests are cached by (path, size, mtime), so a warm check costs a stat per file.
- ``code_fingerprint``: the sha256 of the package sources that decide a run's numbers (``CODE_PARTS``:
  the model, method, data, training and scoring code; not reports, analysis or this bookkeeping), in
  ``env.code`` beside the git commit. A git commit alone would flag every record on any commit, and
  misses uncommitted edits.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from lora_repro import paths
from lora_repro.io import atomic_write_text

PACKAGE_ROOT = Path(__file__).resolve().parent
CODE_PARTS = ("checkpoints.py", "config.py", "dropout.py", "run.py", "schemas.py", "train.py", "data",
              "evaluate_metrics", "methods", "metrics", "models", "tasks")
PACKAGES = ("torch", "transformers", "peft", "datasets", "accelerate", "scikit-learn", "numpy")
STALE_CHOICES = ("keep", "rerun")
UNKNOWN = "unknown"
_DIGESTS_FILE = "file_sha256.json"


def _short(hexdigest: str) -> str:
    return hexdigest[:16]


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """16 hex of the sha256 over (path, bytes) of every .py file in ``CODE_PARTS``, in path order."""
    digest = hashlib.sha256()
    for part in CODE_PARTS:
        root = PACKAGE_ROOT / part
        for path in sorted(root.rglob("*.py") if root.is_dir() else [root]):
            digest.update(path.relative_to(PACKAGE_ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return _short(digest.hexdigest())


def record_code(record: Mapping[str, Any]) -> str:
    """The code fingerprint a record was made by, or ``UNKNOWN`` (made before records named it)."""
    return (record.get("env") or {}).get("code") or UNKNOWN


def is_stale(record: Mapping[str, Any]) -> bool:
    """Whether a record was made by other code than this checkout's (unknown code counts as other)."""
    return record_code(record) != code_fingerprint()


def file_sha256(path: Path) -> str:
    """The file's sha256, cached under the cache dir by (absolute path, size, mtime)."""
    stat = path.stat()
    cache_file = paths.cache_dir() / _DIGESTS_FILE
    identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        known = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent or damaged: recompute (it is only a cache)
        known = {}
    if identity not in known:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        known[identity] = digest.hexdigest()
        atomic_write_text(cache_file, json.dumps(known, indent=0, sort_keys=True))
    return known[identity]


def data_fingerprint(root: Path | None, source: str, files: Iterable[Path], subset: Mapping[str, Any]) -> dict:
    """The record's ``data`` field: where the data came from, each file read and the subset, and their hash.

    ``root`` None (hub data) records the source alone; paths are relative to the root, so the same files
    under another root give the same ``sha256`` (the root is recorded, not hashed).
    """
    entries = [{"path": path.relative_to(root).as_posix(), "bytes": path.stat().st_size, "sha256": file_sha256(path)}
               for path in sorted(set(files))]
    identity = {"source": source, "files": entries, "subset": dict(subset)}
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return {"root": None if root is None else str(root), **identity,
            "sha256": _short(hashlib.sha256(canonical.encode()).hexdigest())}


def data_difference(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """A short phrase naming what differs between two data fingerprints (for the one-line error)."""
    before = {entry["path"]: entry for entry in stored.get("files", [])}
    after = {entry["path"]: entry for entry in current.get("files", [])}
    changed = sorted(p for p in before.keys() & after.keys() if before[p]["sha256"] != after[p]["sha256"])
    parts = [f"{p} ({before[p]['bytes']} -> {after[p]['bytes']} bytes)" for p in changed[:3]]
    parts += [f"{p} not read now" for p in sorted(before.keys() - after.keys())[:3]]
    parts += [f"{p} not read then" for p in sorted(after.keys() - before.keys())[:3]]
    if stored.get("subset") != current.get("subset"):
        parts.append(f"subset {stored.get('subset')} -> {current.get('subset')}")
    if stored.get("source") != current.get("source"):
        parts.append(f"source {stored.get('source')} -> {current.get('source')}")
    return "; ".join(parts) or "the fingerprints differ"


def env_info() -> dict[str, Any]:
    """Where a run ran and with what: git commit (and whether the tree had local changes), the code
    fingerprint, package versions, platform, CPU count and CUDA device."""
    # Imported here: reading records (reports, notebooks) should not need torch loaded.
    import torch

    status = git("--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
    cuda = torch.cuda.is_available()
    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "code": code_fingerprint(),
        "packages": {name: _version(name) for name in PACKAGES},
        "hardware": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "python": sys.version.split()[0],
            "cpu_count": os.cpu_count(),
            "cuda_device_count": torch.cuda.device_count() if cuda else 0,
            "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        },
    }


def git(*args: str) -> str | None:
    """Output of a read-only git command in the repository, or None without git or commits."""
    try:
        done = subprocess.run(
            ["git", "-C", str(paths.REPO_ROOT), *args],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
