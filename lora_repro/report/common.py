"""What every table needs from the store: one protocol's completed runs as a frame, how long they took,
where they ran, and one way to write a table or figure.

Reports read `store.load_dataframe` (one row per record, nested fields as dotted columns) instead of
walking records by hand, so a new field is one column name away. Captions describe the hardware the
records say they ran on (`env.hardware`), never the machine that renders the table. A table says how
many of its runs were made by other code than the checkout rendering it (`stale_text`), because a record
is reused, not retrained, when the code changes (`stale=keep`, see lora_repro.store).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO

import pandas as pd

from lora_repro.io import atomic_write, atomic_write_text
from lora_repro.provenance import code_fingerprint
from lora_repro.store import RunStore, load_dataframe


def completed_runs(experiment: str, store: RunStore | None = None, keys: set[str] | None = None) -> pd.DataFrame:
    """Completed records of an experiment, one row each; `keys` keeps only one protocol's runs."""
    frame = load_dataframe((store or RunStore()).root, experiment)
    if frame.empty:
        return frame
    frame = frame[frame.status == "completed"]
    if keys is not None:
        frame = frame[frame.key.isin(keys)]
    frame = frame.reset_index(drop=True)
    frame["wall_s"] = column(frame, "timing.wall_s")
    frame["finished"] = pd.to_datetime(frame["created_at"])
    return frame


def column(frame: pd.DataFrame, name: str) -> pd.Series:
    """A dotted column, or all-missing when no record has that field."""
    return frame[name] if name in frame else pd.Series([None] * len(frame), index=frame.index, dtype=object)


def wall_span_s(runs: pd.DataFrame) -> float:
    """Seconds from the first run's start to the last run's end (runs may overlap: JOBS=2)."""
    started = runs.finished - pd.to_timedelta(runs.wall_s, unit="s")
    return (runs.finished.max() - started.min()).total_seconds()


def wall_text(runs: pd.DataFrame) -> str:
    """The caption's timing: span and summed run time, and a warning when runs came in separate calls."""
    span, total = wall_span_s(runs), float(runs.wall_s.sum())
    text = (f"Wall time from the first run's start to the last run's end: {span / 60:.1f} min "
            f"(sum of run wall times {total / 60:.1f} min)")
    if span > total + 60:  # more than a minute of the span had no run going: not one uninterrupted call
        text += "; the runs were made in separate calls, so the span includes the time between them"
    return text


def hardware_text(runs: pd.DataFrame) -> str:
    """Where the runs ran, from their records' `env.hardware`: "x86_64, 2 cores" (several: joined by " / ")."""
    pairs = runs[["env.hardware.machine", "env.hardware.cpu_count"]].drop_duplicates()
    return " / ".join(f"{machine}, {int(cores)} cores" for machine, cores in pairs.itertuples(index=False))


def stale_text(runs: pd.DataFrame, target: str) -> str:
    """The caption line counting runs made by other code than this checkout's (unknown counts); "" if none."""
    codes = column(runs, "env.code")
    other = int((codes != code_fingerprint()).sum())
    if not other:
        return ""
    unknown = int(codes.isna().sum())
    return (f"{other} of {len(runs)} runs were made by other code than this checkout's"
            + (f" ({unknown} code unknown: made before records named their code)" if unknown else "")
            + f"; `make {target} ARGS=stale=rerun` retrains them (the default, stale=keep, reuses them).")


def write_table(stem: Path, frame: pd.DataFrame, markdown: str, index: bool = False) -> None:
    """<stem>.csv and <stem>.md, each written atomically."""
    atomic_write(stem.with_suffix(".csv"), lambda handle: frame.to_csv(handle, index=index))
    atomic_write_text(stem.with_suffix(".md"), markdown)


def write_figure(path: Path, save: Callable[[IO], None]) -> Path:
    """A binary figure written atomically (`save(handle)`, e.g. `lambda h: fig.savefig(h, format="png")`)."""
    return atomic_write(path, save, binary=True)
