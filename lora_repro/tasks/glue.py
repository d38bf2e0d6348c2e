"""GLUE for the run loop: cached encodings, dynamic padding, eval on dev (MNLI: matched + mismatched)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lora_repro.data.glue import encode_split, get_task, make_loader, split_path
from lora_repro.methods import MethodHandle
from lora_repro.metrics.glue import compute_eval_metrics, headline
from lora_repro.tasks.base import TaskData
from lora_repro.train import move

TASK_KIND = "seq_cls"


def num_labels(task: str) -> int:
    return get_task(task).num_labels


def data_files(cfg: dict) -> list[Path]:
    """The TSVs `prepare` reads (none for hub data), for the record's data fingerprint."""
    if cfg["data_source"] != "local":
        return []
    spec = get_task(cfg["task"]["name"])
    return [split_path(spec.name, split, cfg["data_root"]) for split in (spec.train_split, *spec.eval_splits)]


def prepare(cfg: dict, tokenizer, handle: MethodHandle, device: torch.device) -> TaskData:
    task, train_cfg = cfg["task"]["name"], cfg["train"]
    spec = get_task(task)
    common = dict(max_length=int(train_cfg["max_length"]), subset_seed=int(train_cfg["subset_seed"]),
                  data_root=cfg["data_root"], source=cfg["data_source"])
    train = encode_split(tokenizer, task, spec.train_split, subset_size=train_cfg["train_subset"], **common)
    evals = {split: encode_split(tokenizer, task, split, subset_size=train_cfg["eval_subset"], **common)
             for split in spec.eval_splits}
    pad = tokenizer.pad_token_id
    loader = make_loader(train, int(train_cfg["batch_size"]), shuffle=True, seed=int(cfg["seed"]),
                         pad_token_id=pad, group_by_length=bool(train_cfg["group_by_length"]))
    eval_loaders = {s: make_loader(e, int(train_cfg["eval_batch_size"]), pad_token_id=pad,
                                   group_by_length=bool(train_cfg["group_by_length"])) for s, e in evals.items()}

    @torch.inference_mode()
    def evaluate(model: nn.Module) -> dict[str, float]:
        outputs = {}
        for split, batches in eval_loaders.items():
            preds, golds = [], []
            for batch in batches:
                labels = batch.pop("labels")
                logits = model(**move(handle.prepare_batch(batch), device)).logits
                preds.append(logits.float().cpu())
                golds.append(labels)
            outputs[split] = (torch.cat(preds), torch.cat(golds))
        return compute_eval_metrics(task, outputs)

    return TaskData(loader, len(loader), classifier_loss, evaluate, headline(task))


def classifier_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """The model's own loss: cross-entropy over the labels (MSE for STS-B's regression head)."""
    return model(**batch).loss
