"""One batch order for every task family: seeded per epoch, optionally grouped by length.

Written here rather than taken from ``transformers`` (``LengthGroupedSampler``) because the order
must be a pure function of (seed, epoch) independent of the global RNG state, must also give the
evaluation order (all rows sorted by length), and must keep the committed runs' batch orders.

Two seeded streams produce the row permutation, because the committed records of the two task
families were trained with different ones (changing either changes their batch orders):

- ``torch`` (GLUE): ``torch.randperm`` with a generator seeded by SHA-256 of ``"seed:epoch"``;
- ``python`` (NLG): ``random.Random("seed:epoch").shuffle``.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

# Length-grouped batching sorts windows of this many batches by length before shuffling batches.
GROUP_WINDOW_BATCHES = 50

Permutation = Callable[[int], torch.Tensor]


def _torch_stream(seed: int, epoch: int) -> Permutation:
    mixed = hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:8]
    generator = torch.Generator().manual_seed(int.from_bytes(mixed, "little"))
    return lambda count: torch.randperm(count, generator=generator)


def _python_stream(seed: int, epoch: int) -> Permutation:
    draws = random.Random(f"{seed}:{epoch}")

    def permutation(count: int) -> torch.Tensor:
        order = list(range(count))
        draws.shuffle(order)
        return torch.tensor(order, dtype=torch.long)

    return permutation


STREAMS: dict[str, Callable[[int, int], Permutation]] = {"torch": _torch_stream, "python": _python_stream}


class LengthGroupedBatches(Sampler[list[int]]):
    """Yields lists of row numbers; the n-th pass uses epoch n for its shuffle (``set_epoch``
    overrides it, e.g. when resuming), so every epoch's order is reproducible from the seed.

    With ``shuffle`` and ``group_by_length`` (training), rows are shuffled, windows of
    ``GROUP_WINDOW_BATCHES`` batches are sorted by length and cut into batches, and the batches are
    shuffled: less padding, still random. Without ``shuffle`` (evaluation) grouping sorts all rows
    by length, longest first; otherwise rows keep their order.
    """

    def __init__(
        self,
        lengths: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int,
        group_by_length: bool,
        stream: str = "torch",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if stream not in STREAMS:
            raise ValueError(f"unknown shuffle stream {stream!r}; use one of: {', '.join(STREAMS)}")
        self.lengths = lengths
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.group_by_length = group_by_length
        self.stream = stream
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._shuffled() if self.shuffle else self._in_order():
            yield batch.tolist()

    def _in_order(self) -> list[torch.Tensor]:
        if self.group_by_length:
            order = self.lengths.argsort(descending=True, stable=True)
        else:
            order = torch.arange(len(self.lengths))
        return list(order.split(self.batch_size))

    def _shuffled(self) -> list[torch.Tensor]:
        permutation = STREAMS[self.stream](self.seed, self.epoch)
        self.epoch += 1
        order = permutation(len(self.lengths))
        if not self.group_by_length:
            return list(order.split(self.batch_size))
        batches: list[torch.Tensor] = []
        for block in order.split(self.batch_size * GROUP_WINDOW_BATCHES):
            by_length = block[self.lengths[block].argsort(descending=True, stable=True)]
            batches.extend(by_length.split(self.batch_size))
        return [batches[i] for i in permutation(len(batches))]


def make_batches(
    rows: Sequence[Any],
    lengths: torch.Tensor,
    collate: Callable[[list[Any]], dict[str, torch.Tensor]],
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    group_by_length: bool = False,
    stream: str = "torch",
) -> DataLoader:
    """A DataLoader over ``rows`` in :class:`LengthGroupedBatches` order, each batch ``collate``d.

    ``loader.batch_sampler`` is the :class:`LengthGroupedBatches` (for ``set_epoch``).
    """
    order = LengthGroupedBatches(lengths, batch_size, shuffle, seed, group_by_length, stream)
    return DataLoader(rows, batch_sampler=order, collate_fn=collate)
