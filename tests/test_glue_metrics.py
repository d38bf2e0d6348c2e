"""GLUE metrics against values worked out by hand."""

import math

import numpy as np
import pytest
import torch

from lora_repro.metrics.glue import compute_eval_metrics, compute_metrics, headline

# preds 1 0 1 1 vs labels 1 0 0 1: TP=2 TN=1 FP=1 FN=0.
PREDS, LABELS = [1, 0, 1, 1], [1, 0, 0, 1]


def test_accuracy_f1_from_class_ids():
    # accuracy 3/4; precision 2/3, recall 1 -> F1 = 2PR/(P+R) = (4/3)/(5/3) = 0.8
    assert compute_metrics("mrpc", PREDS, LABELS) == pytest.approx({"accuracy": 0.75, "f1": 0.8})
    assert compute_metrics("qqp", PREDS, LABELS) == pytest.approx({"accuracy": 0.75, "f1": 0.8})
    assert compute_metrics("rte", PREDS, LABELS) == {"accuracy": 0.75}


def test_matthews_correlation():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 2 / sqrt(3*2*2*1) = 0.57735
    scores = compute_metrics("cola", PREDS, LABELS)
    assert scores["matthews_correlation"] == pytest.approx(2 / math.sqrt(12))
    assert scores["accuracy"] == 0.75


def test_logits_are_argmaxed_whatever_their_container():
    logits = [[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0], [0.0, 1.0, 0.5]]  # -> 1 0 2 1
    labels = [1, 0, 1, 1]
    assert compute_metrics("mnli", logits, labels) == {"accuracy": 0.75}
    as_tensor = torch.tensor(logits, dtype=torch.bfloat16, requires_grad=True)
    assert compute_metrics("mnli", as_tensor, torch.tensor(labels)) == {"accuracy": 0.75}


def test_pearson_and_spearman():
    # x = 1 2 3, y = 1 2 4: deviations (-1 0 1), (-4/3 -1/3 5/3); cov sum 3;
    # r = 3 / sqrt(2 * 42/9) = 9 / sqrt(84) = 0.98198; ranks agree -> spearman 1.
    scores = compute_metrics("stsb", np.array([[1.0], [2.0], [3.0]]), [1.0, 2.0, 4.0])
    assert scores == pytest.approx({"pearson": 9 / math.sqrt(84), "spearmanr": 1.0})


def test_mnli_headline_pools_matched_and_mismatched():
    # matched 2/2 right, mismatched 1/4 right: pooled 3/6 = 0.5 (not the 0.625 mean of the two)
    scores = compute_eval_metrics(
        "mnli",
        {"dev_matched": ([0, 1], [0, 1]), "dev_mismatched": ([2, 2, 2, 2], [2, 0, 1, 0])},
    )
    assert scores == {
        "accuracy": 0.5,
        "dev_matched_accuracy": 1.0,
        "dev_mismatched_accuracy": 0.25,
    }
    assert compute_eval_metrics("rte", {"dev": (PREDS, LABELS)}) == {"accuracy": 0.75}


def test_headline_follows_table_2():
    assert headline("mnli") == "accuracy"
    assert headline("cola") == "matthews_correlation"
    assert headline("stsb") == "pearson"
    assert {headline(task) for task in ("sst2", "mrpc", "qnli", "qqp", "rte")} == {"accuracy"}


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="matching 4 labels, got shape"):
        compute_metrics("rte", [1, 0], LABELS)
    with pytest.raises(ValueError, match="non-integer"):
        compute_metrics("rte", [0.2, 0.9, 0.1, 0.7], LABELS)
    with pytest.raises(ValueError, match="known tasks"):
        compute_metrics("glue", PREDS, LABELS)
