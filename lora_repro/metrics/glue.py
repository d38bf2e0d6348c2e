"""GLUE scores, named and chosen as the paper's Table 2 reports them.

Scores are fractions in [0, 1] (correlations in [-1, 1]); tables multiply by 100. Names follow
the old ``datasets`` GLUE metric (``accuracy``, ``f1``, ``matthews_correlation``, ``pearson``,
``spearmanr``) so numbers from either code path line up. The paper's MNLI number is the accuracy
over matched and mismatched dev together, so ``compute_eval_metrics`` pools the eval splits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from lora_repro.data.glue import get_task

_WITH_F1 = ("mrpc", "qqp")


def headline(task: str) -> str:
    """The metric the paper reports for ``task`` in Table 2 (MNLI: accuracy pooled over m+mm)."""
    return get_task(task).headline_metric


def compute_metrics(task: str, predictions: Any, labels: Any) -> dict[str, float]:
    """Scores of one set of predictions.

    ``predictions``: logits ``(n, num_labels)`` (argmax taken) or class ids ``(n,)`` for
    classification; scores ``(n,)`` or ``(n, 1)`` for STS-B. Arrays, lists or tensors.
    """
    spec = get_task(task)
    preds = _as_array(predictions, "predictions")
    gold = _as_array(labels, "labels")
    if gold.ndim != 1 or len(gold) == 0:
        raise ValueError(
            f"labels for {task} must be a non-empty 1-D sequence, got shape {gold.shape}"
        )

    if spec.is_regression:
        if preds.ndim == 2 and preds.shape[1] == 1:
            preds = preds[:, 0]
        _check_shape(task, preds, gold, "(n,) or (n, 1) scores")
        return {
            "pearson": float(pearsonr(preds, gold)[0]),
            "spearmanr": float(spearmanr(preds, gold)[0]),
        }

    if preds.ndim == 2:
        preds = preds.argmax(axis=-1)
    _check_shape(task, preds, gold, f"(n, {spec.num_labels}) logits or (n,) class ids")
    if not np.array_equal(preds, np.round(preds)):
        raise ValueError(
            f"predictions for {task} must be class ids or 2-D logits, got non-integer values"
        )
    preds = preds.astype(np.int64)
    gold = gold.astype(np.int64)
    scores = {"accuracy": float((preds == gold).mean())}
    if task in _WITH_F1:
        scores["f1"] = float(f1_score(gold, preds))
    if task == "cola":
        scores["matthews_correlation"] = float(matthews_corrcoef(gold, preds))
    return scores


def compute_eval_metrics(
    task: str, outputs: Mapping[str, tuple[Any, Any]]
) -> dict[str, float]:
    """Scores over all eval splits pooled, plus each split's scores as ``<split>_<metric>``.

    ``outputs`` maps split name to ``(predictions, labels)``. With one split this is just
    ``compute_metrics``; for MNLI it gives the pooled accuracy the paper reports along with the
    matched and mismatched accuracies.
    """
    if not outputs:
        raise ValueError(f"no eval outputs given for {task}")
    if len(outputs) == 1:
        (predictions, labels), = outputs.values()
        return compute_metrics(task, predictions, labels)
    arrays = {
        split: (_as_array(predictions, "predictions"), _as_array(labels, "labels"))
        for split, (predictions, labels) in outputs.items()
    }
    pooled = compute_metrics(
        task,
        np.concatenate([predictions for predictions, _ in arrays.values()]),
        np.concatenate([labels for _, labels in arrays.values()]),
    )
    for split, (predictions, labels) in arrays.items():
        for name, value in compute_metrics(task, predictions, labels).items():
            pooled[f"{split}_{name}"] = value
    return pooled


def _as_array(values: Any, what: str) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor: may be on GPU, need grad, or be bfloat16
        values = values.detach().cpu()
        values = (values.float() if values.is_floating_point() else values).numpy()
    array = np.asarray(values)
    if array.dtype == object:
        raise ValueError(f"{what} must be numeric, got a ragged or non-numeric sequence")
    return array


def _check_shape(task: str, preds: np.ndarray, gold: np.ndarray, expected: str) -> None:
    if preds.ndim != 1 or len(preds) != len(gold):
        raise ValueError(
            f"predictions for {task} must be {expected} matching {len(gold)} labels, "
            f"got shape {preds.shape}"
        )
