"""Where data, caches and results live.

Data is never copied into the repository: it is found through ``LORA_REPRO_DATA`` or, for a
checkout with ``../shared/data`` beside it (as CI and the developers have), found there.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "LORA_REPRO_DATA"
CACHE_ENV = "LORA_REPRO_CACHE"


class DataRootError(FileNotFoundError):
    """The data root could not be found; the message says how to point to it."""


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The folder holding glue/, e2e/, webnlg/, dart/.

    Precedence: an explicit path (config), then $LORA_REPRO_DATA, then ../shared/data beside the
    checkout. Raises DataRootError naming what was tried and the fix.
    """
    tried: list[str] = []
    candidates: list[tuple[str, Path]] = []
    if explicit:
        candidates.append(("config data_root", Path(explicit).expanduser()))
    elif os.environ.get(DATA_ENV):
        candidates.append((f"${DATA_ENV}", Path(os.environ[DATA_ENV]).expanduser()))
    else:
        candidates.append(("../shared/data beside the checkout", REPO_ROOT.parent / "shared" / "data"))
    for origin, path in candidates:
        if path.is_dir():
            return path.resolve()
        tried.append(f"{origin} = {path}")
    raise DataRootError(
        "data root not found (tried " + "; ".join(tried) + "). "
        f"Fix: set {DATA_ENV}=/path/to/data (the folder holding glue/, e2e/, webnlg/, dart/) "
        "or pass data_root=/path/to/data as a Hydra override."
    )


def cache_root() -> Path:
    """Where the cache lives ($LORA_REPRO_CACHE, default <repo>/.cache), without creating it."""
    return Path(os.environ.get(CACHE_ENV, REPO_ROOT / ".cache"))


def cache_dir() -> Path:
    """Tokenised-data and converted-model cache, outside git (default: <repo>/.cache), created."""
    path = cache_root()
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir() -> Path:
    """The results store root (override with $LORA_REPRO_RESULTS, e.g. in tests)."""
    return Path(os.environ.get("LORA_REPRO_RESULTS", REPO_ROOT / "results"))
