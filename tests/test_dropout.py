"""`train.fast_dropout`: dropout's law kept (rate, scale, gradient), the switch scoped to the block."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional

from lora_repro.dropout import DRAW_VALUES, drawable, dropout, fast_dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_the_keep_rate_is_one_minus_p_within_the_sampling_error(p):
    count = 1_000_000
    kept = keep_mask(torch.Size([count]), p, torch.Generator().manual_seed(0)).float().mean().item()
    assert abs(kept - (1 - p)) < 5 * math.sqrt(p * (1 - p) / count) + 0.5 / DRAW_VALUES  # 5 standard errors


@pytest.mark.parametrize("p", [1e-6, 1 - 1e-6])
def test_rates_that_16_bits_cannot_hold_go_to_torchs_dropout(p, monkeypatch):
    assert not drawable(p) and drawable(1 / DRAW_VALUES) and drawable(1 - 1 / DRAW_VALUES)
    monkeypatch.setattr("lora_repro.dropout.keep_mask", lambda *args: pytest.fail("drew a 16-bit mask"))
    torch.manual_seed(0)
    out = dropout(torch.ones(10_000), p)
    torch.manual_seed(0)
    assert torch.equal(out, functional.dropout(torch.ones(10_000), p))


def test_draws_are_independent_across_the_four_slices_of_a_word():
    """Each of the four 16-bit slices of a word keeps at the same rate, and neighbours do not agree more
    often than independent draws would (a shared or stuck bit would show in either)."""
    keep = keep_mask(torch.Size([400_000]), 0.5, torch.Generator().manual_seed(1)).view(-1, 4).float()
    assert torch.allclose(keep.mean(0), torch.full((4,), 0.5), atol=0.005)
    agree = (keep[:, :-1] == keep[:, 1:]).float().mean().item()
    assert abs(agree - 0.5) < 0.005


def test_kept_values_are_scaled_and_the_gradient_follows_the_mask():
    torch.manual_seed(0)
    x = torch.randn(64, 128, requires_grad=True)
    out = dropout(x, 0.25)
    kept = out != 0
    assert torch.allclose(out[kept], x.detach()[kept] / 0.75)
    out.sum().backward()
    assert torch.equal(x.grad, kept.float() / 0.75)


def test_the_same_seed_gives_the_same_mask_and_bf16_stays_bf16():
    x = torch.ones(8, 1000, dtype=torch.bfloat16)
    torch.manual_seed(3)
    first = dropout(x, 0.1)
    torch.manual_seed(3)
    assert torch.equal(first, dropout(x, 0.1)) and first.dtype == torch.bfloat16


def test_inplace_and_eval_and_edge_rates_behave_as_torchs():
    x = torch.ones(4, 100)
    same = x.clone()
    assert dropout(same, 0.2, inplace=True) is same and set(same.unique().tolist()) <= {0.0, 1.25}
    assert torch.equal(dropout(x, 0.5, training=False), x)
    assert torch.equal(dropout(x, 0.0), x) and torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match="dropout probability"):
        dropout(x, 1.5)


def test_the_switch_reaches_nn_dropout_inside_the_block_only():
    layer = nn.Dropout(0.1).train()
    before = functional.dropout
    with fast_dropout(True):
        assert functional.dropout is dropout
        torch.manual_seed(5)
        inside = layer(torch.ones(10_000))
    assert functional.dropout is before
    torch.manual_seed(5)
    assert torch.equal(inside, dropout(torch.ones(10_000), 0.1))  # nn.Dropout drew the fast mask
    with fast_dropout(False):
        assert functional.dropout is before
    with pytest.raises(RuntimeError), fast_dropout(True):
        raise RuntimeError("a failing step")
    assert functional.dropout is before  # restored on the way out of an exception


def test_the_switch_restores_what_it_replaced(monkeypatch):
    def other(*args, **kwargs):
        return None

    monkeypatch.setattr(functional, "dropout", other)
    with fast_dropout(True), fast_dropout(True):
        assert functional.dropout is dropout
    assert functional.dropout is other


def test_the_switch_reaches_transformers_eager_attention(monkeypatch):
    """A tiny BERT in training, eager attention: the attention probabilities (4-D) and the hidden states
    (3-D) both get their masks from here."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, attn_implementation="eager")
    model = BertModel(config).train()
    shapes: list[int] = []

    def counting(shape, p, generator=None):
        shapes.append(len(shape))
        return real(shape, p, generator)

    real = keep_mask
    monkeypatch.setattr("lora_repro.dropout.keep_mask", counting)
    with fast_dropout(True):
        model(input_ids=torch.randint(0, 50, (2, 7)))
    assert shapes.count(4) == 2 and shapes.count(3) == 1 + 2 * 2  # per layer: attention; embeddings + 2 per layer
