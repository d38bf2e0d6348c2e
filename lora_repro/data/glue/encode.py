"""Tokenising GLUE splits once (cached) and batching them, each batch padded to its own longest row.

Encodings are kept flat (one id tensor plus row offsets, see :func:`lora_repro.data.cache.flat_rows`)
and the cache key covers everything that changes the ids (tokenizer, task, split, max length,
subset, source file), so a sweep tokenises each split once. The collate pads a batch with a few
vectorised tensor ops; the order comes from the shared :mod:`lora_repro.data.batching` sampler.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lora_repro.data.batching import make_batches
from lora_repro.data.cache import flat_rows, load_or_build, source_identity, tokenizer_fingerprint
from lora_repro.data.glue.read import SOURCES, GlueExample, read_split, split_path, subset
from lora_repro.data.glue.tasks import GlueTask, check_split, get_task

log = logging.getLogger(__name__)

# Bump when the encoding layout or tokenisation call changes, so old cache files are not reused.
CACHE_FORMAT = 2
# Rows tokenised per tokenizer call: large enough for the Rust tokenizer's batching to pay off,
# small enough that the progress bar moves.
TOKENIZE_CHUNK = 2048


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
    return [values[start:end] for start, end in pairwise(offsets.tolist())]


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
    check_split(spec, split)
    if source not in SOURCES:
        raise ValueError(f"unknown GLUE data source {source!r}; use one of: {', '.join(SOURCES)}")
    examples: list[GlueExample] | None = None
    if source == "local":
        origin = source_identity(split_path(task, split, data_root))
    else:
        examples = read_split(task, split, source="hub")
        origin = {"digest": _digest(examples)}
    key = {
        "format": CACHE_FORMAT,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "task": task,
        "split": split,
        "max_length": max_length,
        "subset_size": subset_size,
        "subset_seed": subset_seed,
        "source": source,
        "origin": origin,
    }

    def build() -> dict[str, torch.Tensor | None]:
        rows = examples if examples is not None else read_split(task, split, data_root)
        return _tokenize(tokenizer, spec, split, subset(rows, subset_size, subset_seed), max_length)

    data, path, cached = load_or_build("glue", key, build)
    encoded = EncodedSplit(task=task, split=split, **data)
    verb = "loaded from" if cached else "tokenised, cached at"
    log.info("GLUE %s %s: %d rows %s %s", task, split, len(encoded), verb, path)
    return encoded


def _digest(examples: Sequence[GlueExample]) -> str:
    """Content hash of hub rows (the hub path has no file to stat)."""
    hasher = hashlib.sha256()
    for example in examples:
        hasher.update(repr((example.text_a, example.text_b, example.label)).encode())
    return hasher.hexdigest()


def _tokenize(
    tokenizer: Any, spec: GlueTask, split: str, examples: Sequence[GlueExample], max_length: int
) -> dict[str, torch.Tensor | None]:
    """The fields of an :class:`EncodedSplit` other than task and split."""
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
    flat_ids, offsets = flat_rows(ids)
    labels: torch.Tensor | None = None
    if split not in spec.test_splits:
        dtype = torch.float32 if spec.is_regression else torch.long
        labels = torch.tensor([example.label for example in examples], dtype=dtype)
    return {
        "ids": flat_ids,
        "offsets": offsets,
        "type_ids": flat_rows(type_ids)[0] if type_ids else None,
        "labels": labels,
    }


class PadRows:
    """Collate for row numbers of an :class:`EncodedSplit`: that batch, padded to its longest row."""

    def __init__(self, encoded: EncodedSplit, pad_token_id: int) -> None:
        self.encoded = encoded
        self.pad_token_id = pad_token_id
        self.lengths = encoded.lengths
        # Padded positions are clamped to the last valid index, read, then masked out.
        self.last = max(len(encoded.ids) - 1, 0)

    def __call__(self, rows: list[int]) -> dict[str, torch.Tensor]:
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


def make_loader(
    encoded: EncodedSplit,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    pad_token_id: int = 0,
    group_by_length: bool = False,
) -> DataLoader:
    """Batches of dicts ``input_ids``, ``attention_mask``, (``token_type_ids``), (``labels``).

    Each batch is padded to its own longest row; the order is
    :class:`lora_repro.data.batching.LengthGroupedBatches` with the ``torch`` stream (the one the
    committed GLUE records were trained with).
    """
    if pad_token_id is None:
        raise ValueError("pad_token_id is None: the tokenizer has no pad token; set one first")
    return make_batches(
        range(len(encoded)), encoded.lengths, PadRows(encoded, pad_token_id), batch_size,
        shuffle=shuffle, seed=seed, group_by_length=group_by_length, stream="torch",
    )
