"""The training loop's causal-LM loss: the head runs only where a label is supervised."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lora_repro.config import group_option
from lora_repro.methods import apply_method
from lora_repro.train import causal_lm_loss
from helpers import tiny


def _reference_loss(model: nn.Module, batch: dict, smoothing: float) -> torch.Tensor:
    """The plain way: logits at every position, -100 ignored."""
    batch = dict(batch)
    labels = batch.pop("labels")
    logits = model(**batch).logits[:, :-1].float()
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                       ignore_index=-100, label_smoothing=smoothing)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["lora", "prefix_layer"])
def test_supervised_positions_loss_equals_the_full_logits_loss(family, method):
    model = tiny(family).model.eval()  # no dropout: the two passes must see the same function
    handle = apply_method(model, group_option("method", method))
    torch.manual_seed(0)
    ids = torch.randint(3, 200, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    labels = ids.clone()
    labels[:, :5] = -100  # the prompt
    labels[mask == 0] = -100
    batch = handle.prepare_batch({"input_ids": ids, "attention_mask": mask, "labels": labels})
    expected = _reference_loss(model, batch, 0.1)
    expected_grads = torch.autograd.grad(expected, [p for p in model.parameters() if p.requires_grad])
    loss = causal_lm_loss(model, dict(batch), 0.1)
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
