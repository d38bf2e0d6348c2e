"""Reading GLUE examples: the original release TSVs (offline) or ``nyu-mll/glue`` on the hub.

Two sources give the same examples. ``source="local"`` reads the original GLUE release TSVs under
``<data root>/glue/<Folder>/<split>.tsv`` (see ``lora_repro.paths.data_root``), so the suite runs
offline; ``source="hub"`` reads ``nyu-mll/glue`` through ``datasets`` for online users, and is the
only way to get the splits the shared mirror lacks (MNLI, QQP, QNLI train). Labels always follow
the hub dataset's integer convention, so a model trained from either source predicts the same ids.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lora_repro import paths
from lora_repro.data.glue.tasks import GlueTask, check_split, get_task
from lora_repro.data.subset import seeded_subset

HUB_DATASET = "nyu-mll/glue"
SOURCES = ("local", "hub")


class GlueFormatError(ValueError):
    """A GLUE file does not have the layout its task expects; the message names file and line."""


class GlueDataMissingError(FileNotFoundError):
    """A GLUE split file is not under the data root; the message says how to get it."""


class GlueHubError(ConnectionError):
    """``nyu-mll/glue`` could not be loaded from the hub (typically: offline)."""


@dataclass(frozen=True, slots=True)
class GlueExample:
    """One row: one or two texts and a label id (float score for STS-B, None on test splits)."""

    text_a: str
    text_b: str | None
    label: int | float | None


def split_path(task: str, split: str, data_root: str | os.PathLike | None = None) -> Path:
    """The TSV of one split under the data root; raises if the root or the file is missing."""
    spec = get_task(task)
    check_split(spec, split)
    path = paths.data_root(data_root) / "glue" / spec.folder / spec.file_name(split)
    if not path.is_file():
        raise GlueDataMissingError(
            f"GLUE {task} {split} file not found: {path}. Fix: point the data root at the folder "
            f"holding glue/{spec.folder}/ (set {paths.DATA_ENV}=/path/to/data or pass "
            "data_root=/path/to/data). The shared mirror does not stage MNLI, QQP or QNLI train; "
            "for those use data_source=hub with internet access."
        )
    return path


def read_split(
    task: str,
    split: str,
    data_root: str | os.PathLike | None = None,
    source: str = "local",
) -> list[GlueExample]:
    """All examples of one split, in file order, from the local TSVs or the hub."""
    spec = get_task(task)
    check_split(spec, split)
    if source == "local":
        return _read_tsv(split_path(task, split, data_root), spec, split)
    if source == "hub":
        return _read_hub(spec, split)
    raise ValueError(f"unknown GLUE data source {source!r}; use one of: {', '.join(SOURCES)}")


def _read_tsv(path: Path, spec: GlueTask, split: str) -> list[GlueExample]:
    """Parse a GLUE TSV strictly: every row must have the header's field count and a valid label.

    QUOTE_NONE because GLUE text contains unbalanced double quotes that a quoting reader would
    merge across lines; utf-8-sig because MRPC's header starts with a byte-order mark.
    """
    labelled = split not in spec.test_splits

    def fail(line: int, expected: str) -> GlueFormatError:
        return GlueFormatError(f"{path}, line {line}: expected {expected}")

    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        if split in spec.headerless_splits:
            columns = list(spec.headerless_columns)
        else:
            header = next(reader, None)
            if header is None:
                raise fail(1, "a header row, found an empty file")
            columns = header
        needed = [*spec.text_columns, *([spec.label_column] if labelled else [])]
        missing = [name for name in needed if name not in columns]
        if missing:
            raise fail(1, f"a header with columns {needed}, found {columns} (missing {missing})")
        text_at = [columns.index(name) for name in spec.text_columns]
        label_at = columns.index(spec.label_column) if labelled else None
        label_ids = None
        if spec.file_labels is not None:
            label_ids = {spelling: i for i, spelling in enumerate(spec.file_labels)}
        width = len(columns)

        examples: list[GlueExample] = []
        for row in reader:
            if len(row) != width:
                raise fail(
                    reader.line_num,
                    f"{width} tab-separated fields ({', '.join(columns)}), found {len(row)}",
                )
            label: int | float | None = None
            if label_at is not None:
                raw = row[label_at]
                if label_ids is None:
                    label = _finite_float(raw)
                    if label is None:
                        raise fail(reader.line_num, f"a numeric {spec.label_column}, found {raw!r}")
                elif raw in label_ids:
                    label = label_ids[raw]
                else:
                    raise fail(
                        reader.line_num,
                        f"{spec.label_column} to be one of {list(spec.file_labels)}, found {raw!r}",
                    )
            text_b = row[text_at[1]] if spec.is_pair else None
            examples.append(GlueExample(row[text_at[0]], text_b, label))
    return examples


def _finite_float(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _read_hub(spec: GlueTask, split: str) -> list[GlueExample]:
    # Imported here: `datasets` is slow to import and only the online path needs it.
    import datasets

    hub_split = split.replace("dev", "validation", 1)
    try:
        table = datasets.load_dataset(HUB_DATASET, spec.name, split=hub_split)
    except Exception as err:  # the library raises many types; all mean "could not get it"
        raise GlueHubError(
            f"could not load {HUB_DATASET} config {spec.name!r} split {hub_split!r} from the "
            f"Hugging Face hub ({type(err).__name__}: {err}). Offline the hub is unreachable: use "
            f"data_source=local with a data root ({paths.DATA_ENV}=/path/to/data or data_root=...)."
        ) from err
    texts = [table[column] for column in spec.hub_text_columns]
    texts_b = texts[1] if spec.is_pair else [None] * len(table)
    # The hub marks unlabelled (test) rows with -1.
    labels = [None if label == -1 else label for label in table["label"]]
    return [GlueExample(a, b, y) for a, b, y in zip(texts[0], texts_b, labels, strict=True)]


def subset(examples: Sequence[GlueExample], size: int | None, seed: int) -> list[GlueExample]:
    """A fixed random subset of ``size`` rows, kept in file order (None or size >= len: all).

    The GLUE ranking of :func:`lora_repro.data.subset.seeded_subset` (one draw per row), the one
    the committed GLUE records were made with.
    """
    return seeded_subset(examples, size, seed, ranking="draws")
