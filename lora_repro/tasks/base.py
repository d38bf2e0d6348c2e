"""The contract between the run loop and a task family."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass
class TaskData:
    """What a task family hands the run loop.

    train_batches: re-iterable, one pass per epoch (pre-tokenised, padded per batch).
    evaluate: model -> metrics after an epoch; `headline` names the one that picks the best epoch.
    finish: model (best epoch's weights loaded) -> final metrics merged into the record's `best`
        (NLG decodes and scores the test set here); None for tasks scored on the eval split alone.
    """

    train_batches: Iterable[dict]
    steps_per_epoch: int
    evaluate: Callable[[nn.Module], dict[str, float]]
    headline: str
    num_labels: int | None
    causal: bool
    finish: Callable[[nn.Module], dict[str, Any]] | None = None
    maximize: bool = True  # False when the headline is a loss
    info: dict[str, Any] = field(default_factory=dict)
