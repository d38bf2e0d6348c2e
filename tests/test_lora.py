"""LoRA (paper Sec. 4): the layer, its zero start, merging, and agreement with PEFT's implementation.

h = W0 x + (alpha / r) B A x. With B = 0 at init the adapted model is the base model; merging folds
(alpha / r) B A into W0 and must not change the function; GPT-2's fused c_attn gets separate q and v
blocks (the paper's setting), which is shown to be the same function as a PEFT LoRA on the whole
c_attn whose A and B are laid out block-wise.
"""

from __future__ import annotations

import copy
import math

import peft
import pytest
import torch
from helpers import FAMILIES
from helpers import tiny as tiny_loaded
from transformers.pytorch_utils import Conv1D

from lora_repro.methods import apply_method, lora
from lora_repro.methods.lora import LoRABranch, LoRALinear
from lora_repro.schemas import ConfigError

ALL_TARGETS = ["q", "k", "v", "o", "mlp"]


def tiny_model(family: str, seed: int = 0):
    return tiny_loaded(family, seed).model.eval()


def lora_cfg(**kw) -> dict:
    return {"name": "lora", "targets": ["q", "v"], "r": 4, "alpha": 8, "dropout": 0.0, "init": "kaiming", **kw}


def randomize_b(model, seed: int = 1, std: float = 0.5) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.lora_layers(model):
            for branch in layer.branches.values():
                branch.lora_B.copy_(torch.randn(branch.lora_B.shape, generator=gen) * std)


def inputs(family: str) -> dict:
    ids = torch.tensor([[5, 17, 42, 99, 3, 60, 61], [7, 8, 9, 10, 11, 0, 0]])
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    batch = {"input_ids": ids, "attention_mask": mask}
    if FAMILIES[family] == "causal_lm":
        batch["labels"] = ids.masked_fill(mask == 0, -100)
    else:
        batch["labels"] = torch.tensor([0, 1])
    return batch


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


# --- the layer ---------------------------------------------------------------------------------


def test_branch_init_and_scaling():
    torch.manual_seed(0)
    gauss = LoRABranch(256, 128, r=8, alpha=16, init="gaussian", init_std=0.02)
    assert gauss.lora_A.shape == (8, 256) and gauss.lora_B.shape == (128, 8)
    assert gauss.scaling == 2.0
    assert torch.count_nonzero(gauss.lora_B) == 0
    assert 0.018 < gauss.lora_A.std().item() < 0.022  # 2,048 draws of N(0, 0.02^2)
    kaiming = LoRABranch(256, 128, r=8, alpha=8, init="kaiming", init_std=0.02)
    bound = 1 / math.sqrt(256)  # kaiming_uniform(a=sqrt(5)) on fan_in 256
    assert kaiming.lora_A.abs().max() <= bound and kaiming.lora_A.abs().max() > 0.9 * bound
    assert torch.count_nonzero(kaiming.lora_B) == 0
    x = torch.randn(3, 256)
    with torch.no_grad():
        kaiming.lora_B.normal_()
        torch.testing.assert_close(kaiming(x), x @ kaiming.delta_weight().t())
        torch.testing.assert_close(kaiming.delta_weight(), kaiming.lora_B @ kaiming.lora_A * 1.0)


def test_alpha_is_explicit_and_ranks_can_differ_per_target():
    model = tiny_model("roberta")
    for alpha in (None, 0):  # alpha is never derived from r: missing or 0 is refused, not replaced by r
        with pytest.raises(ConfigError, match=r"method\.alpha"):
            apply_method(model, {"name": "lora", "targets": ["q", "v"], "r": 2, "alpha": alpha})
    apply_method(model, {"name": "lora", "targets": ["q", "v"], "r": {"q": 2, "v": 4}, "alpha": 2})
    layer0 = model.roberta.encoder.layer[0].attention.self
    q, v = layer0.query.branches["all"], layer0.value.branches["all"]
    assert q.lora_A.shape == (2, 32) and v.lora_A.shape == (4, 32)
    assert q.scaling == 1.0 and v.scaling == 0.5  # scaling = alpha / r

    gpt2 = tiny_model("gpt2")
    apply_method(gpt2, {"name": "lora", "targets": ["q", "v"], "r": {"q": 2, "v": 4}, "alpha": 8})
    branches = gpt2.transformer.h[0].attn.c_attn.branches
    assert set(branches) == {"q", "v"}
    assert branches["q"].lora_B.shape == (32, 2) and branches["v"].lora_B.shape == (32, 4)


def test_gpt2_fused_qkv_adapts_only_the_q_and_v_slices():
    model = tiny_model("gpt2")
    apply_method(model, lora_cfg())
    randomize_b(model)
    layer = model.transformer.h[0].attn.c_attn
    assert isinstance(layer, LoRALinear) and isinstance(layer.base, Conv1D) and layer.conv1d
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        out, base = layer(x), layer.base(x)
        q, v = layer.branches["q"], layer.branches["v"]
        torch.testing.assert_close(out[..., :32] - base[..., :32], x @ q.delta_weight().t(), atol=1e-6, rtol=1e-5)
        assert torch.equal(out[..., 32:64], base[..., 32:64])  # W_k untouched
        torch.testing.assert_close(out[..., 64:] - base[..., 64:], x @ v.delta_weight().t(), atol=1e-6, rtol=1e-5)
        # merging writes ΔW^T into the (in, out) Conv1D weight, q and v columns only
        w0 = layer.base.weight.clone()
        layer.merge()
        dw = layer.base.weight - w0
        torch.testing.assert_close(dw[:, :32], q.delta_weight().t(), atol=1e-6, rtol=1e-5)
        assert torch.equal(dw[:, 32:64], torch.zeros(32, 32))
        torch.testing.assert_close(dw[:, 64:], v.delta_weight().t(), atol=1e-6, rtol=1e-5)


def test_branch_dropout_acts_on_the_branch_only():
    base = torch.nn.Linear(16, 16)
    layer = LoRALinear(base, {"": (0, 16)}, {"": 4}, alpha=4, dropout=0.5, init="kaiming", init_std=0.02)
    with torch.no_grad():
        layer.branches["all"].lora_B.normal_()
    x = torch.randn(8, 16)
    layer.train()
    torch.manual_seed(0)
    a = layer(x)
    torch.manual_seed(1)
    b = layer(x)
    assert not torch.allclose(a, b)  # dropout is active in training
    layer.eval()
    with torch.no_grad():
        unmerged = layer(x)
        layer.merge()
        torch.testing.assert_close(layer(x), unmerged, atol=1e-6, rtol=1e-5)  # off at eval: merge is exact


def test_fused_qkv_branches_share_one_dropout_mask():
    """loralib's MergedLinear drops the shared input once: with equal q and v weights the two updates are equal."""
    d = 32
    layer = LoRALinear(Conv1D(3 * d, d), {"q": (0, d), "v": (2 * d, 3 * d)}, {"q": 4, "v": 4}, alpha=4,
                       dropout=0.5, init="kaiming", init_std=0.02)
    q, v = layer.branches["q"], layer.branches["v"]
    with torch.no_grad():
        q.lora_B.normal_()
        v.lora_A.copy_(q.lora_A)
        v.lora_B.copy_(q.lora_B)
    x = torch.randn(2, 5, d)
    torch.manual_seed(0)
    delta = layer.train()(x) - layer.base(x)
    full = x @ q.delta_weight().t()  # the update without dropout
    assert not torch.allclose(delta[..., :d], full)  # dropout is active
    torch.testing.assert_close(delta[..., :d], delta[..., 2 * d:], atol=1e-6, rtol=0)  # ... one mask for q and v


# --- zero start ------------------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["gaussian", "kaiming"])
@pytest.mark.parametrize("targets", [["q", "v"], ALL_TARGETS], ids=["qv", "all"])
@pytest.mark.parametrize("family", ["roberta", "gpt2", "llama"])
def test_b_zero_leaves_the_model_unchanged(family, targets, init):
    base = tiny_model(family)
    adapted = copy.deepcopy(base)
    apply_method(adapted, lora_cfg(targets=targets, init=init))
    layers = lora.lora_layers(adapted)
    assert layers and all(torch.count_nonzero(b.lora_A) > 0 for m in layers for b in m.branches.values())
    batch = inputs(family)
    torch.testing.assert_close(logits(adapted, batch), logits(base, batch), atol=1e-6, rtol=0)
    # and B != 0 does change it (the comparison above is not vacuous)
    randomize_b(adapted, std=5.0)
    assert (logits(adapted, batch) - logits(base, batch)).abs().max() > 1e-4


# --- merge ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("targets", [["q", "v"], ALL_TARGETS], ids=["qv", "all"])
@pytest.mark.parametrize("family", ["roberta", "gpt2", "llama"])
def test_merge_and_unmerge(family, targets):
    model = tiny_model(family)
    apply_method(model, lora_cfg(targets=targets))
    randomize_b(model)
    batch = inputs(family)
    unmerged = logits(model, batch)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("base.weight")}

    lora.merge(model)
    assert all(layer.merged for layer in lora.lora_layers(model))
    changed = [n for n, p in model.named_parameters() if n in weights and not torch.equal(p, weights[n])]
    assert len(changed) == len(weights)  # every adapted weight now holds W0 + ΔW
    torch.testing.assert_close(logits(model, batch), unmerged, atol=1e-5, rtol=0)
    lora.merge(model)  # idempotent: ΔW is not added twice
    torch.testing.assert_close(logits(model, batch), unmerged, atol=1e-5, rtol=0)

    lora.unmerge(model)
    assert not any(layer.merged for layer in lora.lora_layers(model))
    for name, param in model.named_parameters():
        if name in weights:
            torch.testing.assert_close(param.detach(), weights[name], atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(model, batch), unmerged, atol=1e-6, rtol=0)


@pytest.mark.parametrize("targets", [["q", "v"], ALL_TARGETS], ids=["qv", "all"])
@pytest.mark.parametrize("family", ["roberta", "gpt2", "llama"])
def test_merge_and_unload_gives_the_base_architecture(family, targets):
    fresh = tiny_model(family)
    model = tiny_model(family)
    apply_method(model, lora_cfg(targets=targets))
    randomize_b(model)
    batch = inputs(family)
    unmerged = logits(model, batch)
    merged = lora.merge_and_unload(model)
    assert not lora.lora_layers(merged)
    assert {type(m) for m in merged.modules()} == {type(m) for m in fresh.modules()}
    assert [n for n, _ in merged.named_modules()] == [n for n, _ in fresh.named_modules()]
    assert list(merged.state_dict()) == list(fresh.state_dict())
    torch.testing.assert_close(logits(merged, batch), unmerged, atol=1e-5, rtol=0)
    # the merged weights really differ from the base: the update was folded in, not dropped
    assert not torch.allclose(logits(merged, batch), logits(fresh, batch), atol=1e-3)
    fresh.load_state_dict(merged.state_dict())  # loads into a plain base model
    torch.testing.assert_close(logits(fresh, batch), unmerged, atol=1e-5, rtol=0)


# --- agreement with PEFT -------------------------------------------------------------------------------


def _peft_layer(peft_model, path: str):
    return peft_model.base_model.model.get_submodule(path)


def _loss(model, batch):
    return model(**batch).loss


@pytest.mark.parametrize("family", ["roberta", "deberta-v2", "llama"])
def test_matches_peft_on_separate_projections(family):
    """RoBERTa (query, value), DeBERTa-v2 (query_proj, value_proj), Llama (q_proj, v_proj with GQA)."""
    ours = tiny_model(family, seed=0)
    ref = tiny_model(family, seed=0)
    handle = apply_method(ours, lora_cfg())
    randomize_b(ours)
    names = [handle.spec.attn[t].rsplit(".", 1)[-1] for t in ("q", "v")]
    ref = peft.get_peft_model(ref, peft.LoraConfig(r=4, lora_alpha=8, target_modules=names, lora_dropout=0.0))
    layers = {n: m for n, m in ours.named_modules() if isinstance(m, LoRALinear)}
    assert len(layers) == 2 * 2
    with torch.no_grad():
        for path, layer in layers.items():
            theirs = _peft_layer(ref, path)
            branch = layer.branches["all"]
            assert theirs.scaling["default"] == branch.scaling
            theirs.lora_A["default"].weight.copy_(branch.lora_A)
            theirs.lora_B["default"].weight.copy_(branch.lora_B)
            assert torch.equal(theirs.base_layer.weight, layer.base.weight)  # same seed, same base
    same_outputs_then_backward(ours, ref, family)
    for path, layer in layers.items():
        theirs = _peft_layer(ref, path)
        branch = layer.branches["all"]
        assert branch.lora_A.grad.abs().max() > 0 and branch.lora_B.grad.abs().max() > 0
        torch.testing.assert_close(branch.lora_A.grad, theirs.lora_A["default"].weight.grad, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(branch.lora_B.grad, theirs.lora_B["default"].weight.grad, atol=1e-6, rtol=1e-5)


def same_outputs_then_backward(ours, ref, family: str) -> None:
    """Both models in eval mode give the same logits on one batch; then both losses are backpropagated."""
    ours.eval()
    ref.eval()
    batch = inputs(family)
    out_ours, out_ref = ours(**batch), ref(**batch)
    torch.testing.assert_close(out_ours.logits, out_ref.logits, atol=1e-6, rtol=0)
    out_ours.loss.backward()
    out_ref.loss.backward()


def test_matches_peft_on_gpt2_fused_c_attn():
    """Ours: separate rank-r (A_q, B_q), (A_v, B_v) on the q and v thirds of c_attn (loralib's MergedLinear).

    PEFT adapts the whole c_attn with one A (r' x d) and one B (3d x r'). With r' = 2r,
    A' = [A_q; A_v] and B' = [[B_q, 0], [0, 0], [0, B_v]] (q rows / k rows / v rows), B' A' is ours
    exactly; with lora_alpha' = 2 alpha the scalings agree (alpha'/r' = alpha/r). Same outputs, and the
    gradients of ours are the matching blocks of PEFT's.
    """
    r, alpha, d = 4, 8, 32
    ours = tiny_model("gpt2", seed=0)
    ref = tiny_model("gpt2", seed=0)
    apply_method(ours, lora_cfg(r=r, alpha=alpha))
    randomize_b(ours)
    ref = peft.get_peft_model(ref, peft.LoraConfig(r=2 * r, lora_alpha=2 * alpha, target_modules=["c_attn"],
                                                   lora_dropout=0.0, fan_in_fan_out=True))
    layers = {n: m for n, m in ours.named_modules() if isinstance(m, LoRALinear)}
    assert len(layers) == 2
    with torch.no_grad():
        for path, layer in layers.items():
            theirs = _peft_layer(ref, path)
            q, v = layer.branches["q"], layer.branches["v"]
            assert theirs.scaling["default"] == q.scaling == v.scaling
            theirs.lora_A["default"].weight.copy_(torch.cat([q.lora_A, v.lora_A]))
            b = torch.zeros(3 * d, 2 * r)
            b[:d, :r] = q.lora_B
            b[2 * d:, r:] = v.lora_B
            theirs.lora_B["default"].weight.copy_(b)
    same_outputs_then_backward(ours, ref, "gpt2")
    for path, layer in layers.items():
        theirs = _peft_layer(ref, path)
        ga, gb = theirs.lora_A["default"].weight.grad, theirs.lora_B["default"].weight.grad
        q, v = layer.branches["q"], layer.branches["v"]
        for got, want in [(q.lora_A.grad, ga[:r]), (v.lora_A.grad, ga[r:]),
                          (q.lora_B.grad, gb[:d, :r]), (v.lora_B.grad, gb[2 * d:, r:])]:
            assert got.abs().max() > 0
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        # PEFT's k rows get a gradient: its function class adapts W_k too, ours does not
        assert gb[d:2 * d].abs().max() > 0


def test_training_a_merged_model_unmerges_and_trains_lora():
    """A merged layer returns the base output (no LoRA gradient); train() must take ΔW out first."""
    model = tiny_model("roberta")
    apply_method(model, lora_cfg(r=2))
    layers = lora.lora_layers(model)
    for layer in layers:
        for branch in layer.branches.values():
            torch.nn.init.normal_(branch.lora_B, std=0.1)  # ΔW != 0, so merging changes W0
    base_weight = layers[0].base.weight.detach().clone()
    model.eval()
    expected = model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits
    lora.merge(model)
    assert all(layer.merged for layer in layers)
    model.train()
    assert not any(layer.merged for layer in layers)
    torch.testing.assert_close(layers[0].base.weight, base_weight)  # W0 back, ΔW in the branches again
    model.eval()
    torch.testing.assert_close(model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits, expected)
    model.train()
    loss = model(input_ids=torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]]), labels=torch.tensor([0, 1])).loss
    loss.backward()
    assert all(b.lora_A.grad is not None and b.lora_A.grad.abs().sum() > 0
               for layer in layers for b in layer.branches.values())
