"""One seeded subset routine for every task family: which rows a ``train_subset``/``eval_subset`` keeps.

A subset is a prefix of a seeded ranking of the rows, put back in file order, so a seed picks the
same rows on every machine and a smaller subset with the same seed lies inside a larger one (the
low-data curves rely on it). Both rankings use ``random.Random``, whose seeded stream Python keeps
stable across versions.

There are two rankings because the committed records of the two task families were made with
different ones, and changing either would change which rows those runs trained on:

- ``draws`` (GLUE): rows ranked by one ``random()`` draw each;
- ``shuffle`` (NLG, and the test-input sample): the first rows of a ``Random.shuffle``d index.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

Row = TypeVar("Row")


def _ranked_by_draws(count: int, seed: int) -> list[int]:
    draws = random.Random(seed)
    keys = [draws.random() for _ in range(count)]
    return sorted(range(count), key=keys.__getitem__)


def _ranked_by_shuffle(count: int, seed: int) -> list[int]:
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return order


RANKINGS: dict[str, Callable[[int, int], list[int]]] = {
    "draws": _ranked_by_draws,
    "shuffle": _ranked_by_shuffle,
}


def seeded_subset(rows: Sequence[Row], size: int | None, seed: int, ranking: str) -> list[Row]:
    """``size`` rows picked by ``ranking`` under ``seed``, in file order (None or size >= len: all)."""
    if ranking not in RANKINGS:
        raise ValueError(f"unknown subset ranking {ranking!r}; use one of: {', '.join(RANKINGS)}")
    if size is None or size >= len(rows):
        return list(rows)
    if size < 0:
        raise ValueError(f"subset size must be >= 0 or None, got {size}")
    keep = sorted(RANKINGS[ranking](len(rows), seed)[:size])
    return [rows[i] for i in keep]
