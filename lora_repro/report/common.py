"""What every table needs from the store: one protocol's completed records, and how long they took."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd

from lora_repro.store import RunStore


def completed_records(experiment: str, store: RunStore | None = None, keys: set[str] | None = None) -> Iterator[dict]:
    """Completed records of an experiment; `keys` keeps only one protocol's runs (stale configs drop out)."""
    for record in (store or RunStore()).records(experiment):
        if record["status"] == "completed" and (keys is None or record["key"] in keys):
            yield record


def record_times(record: dict) -> dict:
    return {"wall_s": record["timing"].get("wall_s"), "finished": pd.Timestamp(record["created_at"])}


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
