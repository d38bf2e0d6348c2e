"""GLUE: what each task's files look like, reading them, subsetting, tokenising once, batching.

Two sources give the same examples. ``source="local"`` reads the original GLUE release TSVs under
``<data root>/glue/<Folder>/<split>.tsv`` (see ``lora_repro.paths.data_root``), so the suite runs
offline; ``source="hub"`` reads ``nyu-mll/glue`` through ``datasets`` for online users, and is the
only way to get the splits the shared mirror lacks (MNLI, QQP, QNLI train). Labels always follow
the hub dataset's integer convention (e.g. MNLI entailment=0, neutral=1, contradiction=2), so a
model trained from either source predicts the same ids.

Split names are the TSV file stems (``train``, ``dev``, ``test``; MNLI ``dev_matched``,
``dev_mismatched``, ``test_matched``, ``test_mismatched``). Test splits carry no labels.

Tokenised splits are cached under ``cache_dir()/glue`` keyed by everything that changes the ids
(tokenizer identity, task, split, max length, subset, source file size and mtime), so a sweep
tokenises each split once. Encodings are kept flat (one id tensor plus row offsets) because a
list of Python lists for MNLI's 393k rows costs several hundred MB and makes padding slow; the
loader pads each batch to its own longest row with a few vectorised tensor ops.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import random
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from lora_repro import paths

log = logging.getLogger(__name__)

HUB_DATASET = "nyu-mll/glue"
SOURCES = ("local", "hub")
# Bump when the encoding layout or tokenisation call changes, so old cache files are not reused.
CACHE_FORMAT = 1
# Rows tokenised per tokenizer call: large enough for the Rust tokenizer's batching to pay off,
# small enough that the progress bar moves.
TOKENIZE_CHUNK = 2048
# Length-grouped batching sorts windows of this many batches by length before shuffling batches.
GROUP_WINDOW_BATCHES = 50


class GlueFormatError(ValueError):
    """A GLUE file does not have the layout its task expects; the message names file and line."""


class GlueDataMissingError(FileNotFoundError):
    """A GLUE split file is not under the data root; the message says how to get it."""


class GlueHubError(ConnectionError):
    """``nyu-mll/glue`` could not be loaded from the hub (typically: offline)."""


@dataclass(frozen=True)
class GlueTask:
    """How one GLUE task is laid out on disk and on the hub, and how it is scored.

    ``text_columns`` and ``label_column`` are TSV header names; ``file_labels`` spells each label
    as the TSV does, in id order (``None`` for the STS-B float score). Files listed in
    ``headerless_splits`` have no header row and take ``headerless_columns`` as their header.
    """

    name: str
    folder: str
    text_columns: tuple[str, ...]
    label_column: str
    label_names: tuple[str, ...] | None
    file_labels: tuple[str, ...] | None
    hub_text_columns: tuple[str, ...]
    headline_metric: str
    train_split: str = "train"
    eval_splits: tuple[str, ...] = ("dev",)
    test_splits: tuple[str, ...] = ("test",)
    headerless_splits: tuple[str, ...] = ()
    headerless_columns: tuple[str, ...] = ()

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        """Output size of the classification head (1 for regression)."""
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def splits(self) -> tuple[str, ...]:
        return (self.train_split, *self.eval_splits, *self.test_splits)

    def file_name(self, split: str) -> str:
        return f"{split}.tsv"


_BINARY = ("0", "1")
_ENTAIL = ("entailment", "not_entailment")

TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask(
            name="mnli", folder="MNLI", text_columns=("sentence1", "sentence2"),
            label_column="gold_label", label_names=("entailment", "neutral", "contradiction"),
            file_labels=("entailment", "neutral", "contradiction"),
            hub_text_columns=("premise", "hypothesis"), headline_metric="accuracy",
            eval_splits=("dev_matched", "dev_mismatched"),
            test_splits=("test_matched", "test_mismatched"),
        ),
        GlueTask(
            name="sst2", folder="SST-2", text_columns=("sentence",), label_column="label",
            label_names=("negative", "positive"), file_labels=_BINARY,
            hub_text_columns=("sentence",), headline_metric="accuracy",
        ),
        GlueTask(
            name="mrpc", folder="MRPC", text_columns=("#1 String", "#2 String"),
            label_column="Quality", label_names=("not_equivalent", "equivalent"),
            file_labels=_BINARY, hub_text_columns=("sentence1", "sentence2"),
            headline_metric="accuracy",
        ),
        GlueTask(
            name="cola", folder="CoLA", text_columns=("sentence",), label_column="label",
            label_names=("unacceptable", "acceptable"), file_labels=_BINARY,
            hub_text_columns=("sentence",), headline_metric="matthews_correlation",
            headerless_splits=("train", "dev"),
            headerless_columns=("source", "label", "original_label", "sentence"),
        ),
        GlueTask(
            name="qnli", folder="QNLI", text_columns=("question", "sentence"),
            label_column="label", label_names=_ENTAIL, file_labels=_ENTAIL,
            hub_text_columns=("question", "sentence"), headline_metric="accuracy",
        ),
        GlueTask(
            name="qqp", folder="QQP", text_columns=("question1", "question2"),
            label_column="is_duplicate", label_names=("not_duplicate", "duplicate"),
            file_labels=_BINARY, hub_text_columns=("question1", "question2"),
            headline_metric="accuracy",
        ),
        GlueTask(
            name="rte", folder="RTE", text_columns=("sentence1", "sentence2"),
            label_column="label", label_names=_ENTAIL, file_labels=_ENTAIL,
            hub_text_columns=("sentence1", "sentence2"), headline_metric="accuracy",
        ),
        GlueTask(
            name="stsb", folder="STS-B", text_columns=("sentence1", "sentence2"),
            label_column="score", label_names=None, file_labels=None,
            hub_text_columns=("sentence1", "sentence2"), headline_metric="pearson",
        ),
        GlueTask(
            name="wnli", folder="WNLI", text_columns=("sentence1", "sentence2"),
            label_column="label", label_names=("not_entailment", "entailment"),
            file_labels=_BINARY, hub_text_columns=("sentence1", "sentence2"),
            headline_metric="accuracy",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class GlueExample:
    """One row: one or two texts and a label id (float score for STS-B, None on test splits)."""

    text_a: str
    text_b: str | None
    label: int | float | None


def get_task(task: str) -> GlueTask:
    """The task spec, or an error listing the known task names."""
    try:
        return TASKS[task]
    except KeyError:
        raise ValueError(
            f"unknown GLUE task {task!r}; known tasks: {', '.join(TASKS)}"
        ) from None


def _check_split(spec: GlueTask, split: str) -> None:
    if split not in spec.splits:
        raise ValueError(
            f"unknown split {split!r} for GLUE task {spec.name!r}; "
            f"its splits are: {', '.join(spec.splits)}"
        )


def split_path(task: str, split: str, data_root: str | os.PathLike | None = None) -> Path:
    """The TSV of one split under the data root; raises if the root or the file is missing."""
    spec = get_task(task)
    _check_split(spec, split)
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
    _check_split(spec, split)
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
    return [GlueExample(a, b, y) for a, b, y in zip(texts[0], texts_b, labels)]


def subset(examples: Sequence[GlueExample], size: int | None, seed: int) -> list[GlueExample]:
    """A fixed random subset of ``size`` rows, kept in file order (None or size >= len: all).

    Rows are ranked by ``random.Random(seed).random()`` draws, the one stream Python promises
    not to change across versions, so a seed picks the same rows everywhere; smaller subsets with
    the same seed are nested inside larger ones (useful for low-data curves).
    """
    if size is None or size >= len(examples):
        return list(examples)
    if size < 0:
        raise ValueError(f"subset size must be >= 0 or None, got {size}")
    draws = random.Random(seed)
    keys = [draws.random() for _ in range(len(examples))]
    chosen = sorted(sorted(range(len(examples)), key=keys.__getitem__)[:size])
    return [examples[i] for i in chosen]


@dataclass(frozen=True)
class EncodedSplit:
    """Token ids of one split, unpadded, stored flat: row i is ``ids[offsets[i]:offsets[i+1]]``.

    ``labels`` is long for classification, float for STS-B, None for test splits.
    """

    task: str
    split: str
    ids: torch.Tensor
    offsets: torch.Tensor
    type_ids: torch.Tensor | None
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def input_ids(self) -> list[list[int]]:
        """Per-row token ids as lists (a copy; for inspection, not the training path)."""
        return _rows(self.ids, self.offsets)

    @property
    def token_type_ids(self) -> list[list[int]] | None:
        return None if self.type_ids is None else _rows(self.type_ids, self.offsets)


def _rows(flat: torch.Tensor, offsets: torch.Tensor) -> list[list[int]]:
    values = flat.tolist()
    bounds = offsets.tolist()
    return [values[start:end] for start, end in zip(bounds[:-1], bounds[1:])]


def encode_split(
    tokenizer: Any,
    task: str,
    split: str,
    max_length: int,
    subset_size: int | None = None,
    subset_seed: int = 0,
    data_root: str | os.PathLike | None = None,
    source: str = "local",
) -> EncodedSplit:
    """Tokenise one split (truncated to ``max_length``, no padding), from cache when possible."""
    spec = get_task(task)
    _check_split(spec, split)
    if source not in SOURCES:
        raise ValueError(f"unknown GLUE data source {source!r}; use one of: {', '.join(SOURCES)}")
    examples: list[GlueExample] | None = None
    if source == "local":
        stat = split_path(task, split, data_root).stat()
        origin = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    else:
        examples = read_split(task, split, source="hub")
        origin = {"digest": _digest(examples)}
    key = {
        "format": CACHE_FORMAT,
        "tokenizer": _tokenizer_identity(tokenizer),
        "task": task,
        "split": split,
        "max_length": max_length,
        "subset_size": subset_size,
        "subset_seed": subset_seed,
        "source": source,
        "origin": origin,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = paths.cache_dir() / "glue" / f"{digest}.pt"
    cached = _load_cached(path, key)
    if cached is not None:
        log.info("GLUE %s %s: tokenised split loaded from %s", task, split, path)
        return cached

    if examples is None:
        examples = read_split(task, split, data_root)
    examples = subset(examples, subset_size, subset_seed)
    encoded = _tokenize(tokenizer, spec, split, examples, max_length)
    _save_atomic(path, key, encoded)
    log.info("GLUE %s %s: %d rows tokenised, cached at %s", task, split, len(encoded), path)
    return encoded


def _tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    """What distinguishes one tokenizer's output from another's.

    Name, size and class catch the common cases; for fast tokenizers the full serialised
    pipeline (vocab, normaliser, special-token template) is hashed too, so two tokenizers built
    in code with the same size but different vocabularies never share a cache entry.
    """
    identity = {
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "size": len(tokenizer),
        "class": type(tokenizer).__name__,
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        # Truncation and padding are call-time settings the tokenizer remembers between calls;
        # they would make the key depend on what the tokenizer was last used for.
        state.pop("truncation", None)
        state.pop("padding", None)
        canonical = json.dumps(state, sort_keys=True).encode()
        identity["backend_sha256"] = hashlib.sha256(canonical).hexdigest()
    return identity


def _digest(examples: Sequence[GlueExample]) -> str:
    """Content hash of hub rows (the hub path has no file to stat)."""
    hasher = hashlib.sha256()
    for example in examples:
        hasher.update(repr((example.text_a, example.text_b, example.label)).encode())
    return hasher.hexdigest()


def _tokenize(
    tokenizer: Any, spec: GlueTask, split: str, examples: Sequence[GlueExample], max_length: int
) -> EncodedSplit:
    ids: list[list[int]] = []
    type_ids: list[list[int]] = []
    starts = range(0, len(examples), TOKENIZE_CHUNK)
    for start in tqdm(starts, desc=f"tokenise {spec.name} {split}", disable=len(starts) < 2):
        chunk = examples[start : start + TOKENIZE_CHUNK]
        texts_a = [example.text_a for example in chunk]
        texts_b = [example.text_b for example in chunk] if spec.is_pair else None
        batch = tokenizer(
            texts_a, texts_b, truncation=True, max_length=max_length, return_attention_mask=False
        )
        ids.extend(batch["input_ids"])
        if "token_type_ids" in batch:
            type_ids.extend(batch["token_type_ids"])
    offsets = torch.zeros(len(ids) + 1, dtype=torch.long)
    offsets[1:] = torch.tensor([len(row) for row in ids], dtype=torch.long).cumsum(0)
    labels: torch.Tensor | None = None
    if split not in spec.test_splits:
        dtype = torch.float32 if spec.is_regression else torch.long
        labels = torch.tensor([example.label for example in examples], dtype=dtype)
    return EncodedSplit(
        task=spec.name,
        split=split,
        ids=torch.tensor(list(chain.from_iterable(ids)), dtype=torch.int32),
        offsets=offsets,
        type_ids=torch.tensor(list(chain.from_iterable(type_ids)), dtype=torch.int32)
        if type_ids
        else None,
        labels=labels,
    )


def _load_cached(path: Path, key: dict[str, Any]) -> EncodedSplit | None:
    """The cached encoding, or None if absent, unreadable or written for another key."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as err:  # a cache miss, whatever broke: it is rebuilt below
        log.warning("ignoring unreadable GLUE cache file %s (%s); re-tokenising", path, err)
        return None
    if payload.get("key") != key:
        return None
    return EncodedSplit(**payload["encoded"])


def _save_atomic(path: Path, key: dict[str, Any], encoded: EncodedSplit) -> None:
    """Write to a temporary file beside the target, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"key": key, "encoded": {f.name: getattr(encoded, f.name) for f in fields(encoded)}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _PaddedBatches(Dataset):
    """Indexed by a list of row numbers; returns that batch padded to its own longest row."""

    def __init__(self, encoded: EncodedSplit, pad_token_id: int) -> None:
        self.encoded = encoded
        self.pad_token_id = pad_token_id
        self.lengths = encoded.lengths
        # Padded positions are clamped to the last valid index, read, then masked out.
        self.last = max(len(encoded.ids) - 1, 0)

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(rows, dtype=torch.long)
        starts = self.encoded.offsets[index]
        lengths = self.lengths[index]
        width = int(lengths.max())
        steps = torch.arange(width)
        mask = steps < lengths[:, None]
        positions = (starts[:, None] + steps).clamp_(max=self.last)
        batch = {
            "input_ids": self.encoded.ids[positions].long().masked_fill_(~mask, self.pad_token_id),
            "attention_mask": mask.long(),
        }
        if self.encoded.type_ids is not None:
            batch["token_type_ids"] = self.encoded.type_ids[positions].long().masked_fill_(~mask, 0)
        if self.encoded.labels is not None:
            batch["labels"] = self.encoded.labels[index]
        return batch


class _BatchOrder(Sampler[list[int]]):
    """Yields lists of row numbers; the n-th pass uses epoch n for its shuffle (``set_epoch``
    overrides it, e.g. when resuming), so every epoch's order is reproducible from the seed."""

    def __init__(
        self,
        lengths: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int,
        group_by_length: bool,
    ) -> None:
        self.lengths = lengths
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.group_by_length = group_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        count = len(self.lengths)
        if not self.shuffle:
            order = self.lengths.argsort(descending=True, stable=True) if self.group_by_length else torch.arange(count)
            batches = list(order.split(self.batch_size))
        else:
            mixed = hashlib.sha256(f"{self.seed}:{self.epoch}".encode()).digest()[:8]
            generator = torch.Generator().manual_seed(int.from_bytes(mixed, "little"))
            self.epoch += 1
            order = torch.randperm(count, generator=generator)
            if self.group_by_length:
                window = self.batch_size * GROUP_WINDOW_BATCHES
                batches = []
                for block in order.split(window):
                    by_length = block[self.lengths[block].argsort(descending=True, stable=True)]
                    batches.extend(by_length.split(self.batch_size))
                batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
            else:
                batches = list(order.split(self.batch_size))
        for batch in batches:
            yield batch.tolist()


def make_loader(
    encoded: EncodedSplit,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    pad_token_id: int = 0,
    group_by_length: bool = False,
) -> DataLoader:
    """Batches of dicts ``input_ids``, ``attention_mask``, (``token_type_ids``), (``labels``).

    Each batch is padded to its own longest row. ``group_by_length`` with ``shuffle`` (training)
    batches rows of similar length together, within windows of shuffled rows, then shuffles the
    batches: less padding, still random. Without ``shuffle`` (evaluation) it sorts all rows by
    length: the same predictions, paired with their labels, for a fraction of the padding.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if pad_token_id is None:
        raise ValueError("pad_token_id is None: the tokenizer has no pad token; set one first")
    order = _BatchOrder(encoded.lengths, batch_size, shuffle, seed, group_by_length)
    # batch_size=None: the sampler already yields whole batches and the dataset pads them.
    return DataLoader(_PaddedBatches(encoded, pad_token_id), sampler=order, batch_size=None)
