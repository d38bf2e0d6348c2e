"""The contract between the run and a task family: `TaskFamily` (what a family module provides) and
`TaskData` (what its `prepare` hands the training loop)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from lora_repro.methods import MethodHandle


@dataclass
class TaskData:
    """What a task family hands the run loop.

    train_batches: re-iterable, one pass per epoch (pre-tokenised, padded per batch); when shuffled,
        it (or its batch sampler or sampler) has `set_epoch(n)` so a resumed run replays epoch n's order.
    loss: (model, batch on the device) -> the training loss of that batch.
    evaluate: model -> metrics after an epoch; `headline` names the one that picks the best epoch,
        the higher the better unless `maximize` is False (a loss).
    finish: model (best epoch's weights loaded) -> final metrics merged into the record's `best`
        (NLG decodes and scores the test set here); None for tasks scored on the eval split alone.
    """

    train_batches: Iterable[dict]
    steps_per_epoch: int
    loss: Callable[[nn.Module, dict], torch.Tensor]
    evaluate: Callable[[nn.Module], dict[str, float]]
    headline: str
    maximize: bool = True
    finish: Callable[[nn.Module], dict[str, Any]] | None = None


class TaskFamily(Protocol):
    """A task family (a module in lora_repro/tasks/): GLUE, NLG.

    TASK_KIND: the model head it needs (models.load: seq_cls | causal_lm).
    num_labels: the classifier's output size for a task (None without a classifier).
    data_files: the files `prepare` reads for a run (for the record's data fingerprint).
    prepare: the task's data, loss, evaluation and finish for one run.
    """

    TASK_KIND: str

    def num_labels(self, task: str) -> int | None: ...

    def data_files(self, cfg: dict) -> list[Path]: ...

    def prepare(self, cfg: dict, tokenizer: Any, handle: MethodHandle, device: torch.device) -> TaskData: ...
