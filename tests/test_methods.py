"""Every method on every tiny architecture: what trains, what gets gradients, and the method checkpoint.

Smoke scale: tiny random models of the five families (lora_repro.models.tiny). The grid checks that
`apply_method` marks exactly the parameters a method is meant to train (and the task head), that a
forward/backward pass reaches all of them and none of the frozen ones, and that the method modules
sit where the paper puts them. Prefix methods get their own checks (virtual-token placement, hooks,
beam search); the method-only state dict is checked for round trip, size and mismatch errors.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import FAMILIES, adapter_path, tiny

from lora_repro.config import group_option
from lora_repro.methods import (
    METHODS,
    apply_method,
    count_params,
    load_method_state_dict,
    method_state_dict,
)
from lora_repro.methods.adapters import Adapter
from lora_repro.methods.lora import LoRALinear
from lora_repro.methods.prefix import IGNORE_INDEX, insert_virtual_tokens
from lora_repro.models import load_model
from lora_repro.models.arch import blocks, hidden_size, is_head_param

METHOD_NAMES = ("full", "ft_top2", "bitfit", "prefix_embed", "prefix_layer",
                "adapter_h", "adapter_l", "adapter_p", "adapter_d", "lora")
# "none" (head only: the untuned baseline) joined the registry after the paper's ten.
GRID = METHOD_NAMES + tuple(m for m in ("none",) if m in METHODS)
TINY_LAYERS = 2


def method_cfg(name: str, **overrides) -> dict:
    """The shipped conf/method option, adjusted to a 2-block model where the default would not fit."""
    cfg = group_option("method", name)
    if name == "adapter_d":
        cfg["drop_layers"] = 1  # the shipped 2 would drop every adapter of a 2-block model
    if name == "ft_top2":
        cfg["top_k"] = 1  # top 2 of 2 blocks is every block: k=1 shows that lower blocks stay frozen
    if name.startswith("prefix"):
        cfg.update(prefix_length=3, infix_length=2)
    cfg.update(overrides)
    return cfg


def make_batch(loaded, texts=("the cat sat on the mat", "a dog")) -> dict:
    enc = loaded.tokenizer(list(texts), padding=True, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if loaded.model.config.model_type in ("gpt2", "llama"):
        batch["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE_INDEX)
    else:
        batch["labels"] = torch.arange(len(texts)) % 2
    return batch


def expected_trainable(method: str, name: str, spec) -> bool:
    """The paper's definition of what each method trains (the task head always trains)."""
    if is_head_param(name, spec):
        return True
    if method == "full":
        return True
    if method == "none":
        return False
    if method == "ft_top2":
        return name.startswith(f"{spec.blocks}.{TINY_LAYERS - 1}.")
    if method == "bitfit":
        return name.endswith(".bias")
    if method in ("prefix_embed", "prefix_layer"):
        return name == "prefix_tokens.vectors"
    if method.startswith("adapter_"):
        return ".adapter." in name
    if method == "lora":
        return ".lora_A" in name or ".lora_B" in name
    raise AssertionError(method)


def may_have_zero_grad(name: str) -> bool:
    """Trainable parameters whose gradient is (mathematically) zero on the first step.

    LoRA A: B = 0 at init, so dL/dA = B^T (...) = 0. Adapter down-projection and Lin's adapter
    LayerNorm: the up-projection is zero at init, so nothing upstream of it gets a gradient.
    Attention key biases: softmax is invariant to the per-query constant q.b_k they add.
    """
    return (".lora_A" in name or ".adapter.down." in name or ".adapter.norm." in name
            or name.endswith(("self.key.bias", "self.key_proj.bias", "pos_key_proj.bias")))


def test_registry_holds_the_paper_methods():
    assert set(METHOD_NAMES) <= set(METHODS)
    for name in METHODS:  # every registered method has its conf/method option
        assert group_option("method", name)["name"] == name


@pytest.mark.parametrize("method", GRID)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_exactly_the_intended_parameters_get_gradients(family, method):
    loaded = tiny(family)
    model = loaded.model
    if method == "bitfit" and family == "llama":
        with pytest.raises(ValueError, match="no bias parameters"):
            apply_method(model, method_cfg(method))
        return
    handle = apply_method(model, method_cfg(method))
    spec = handle.spec
    params = dict(model.named_parameters())
    expected = {n for n in params if expected_trainable(method, n, spec)}
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable == expected, (sorted(trainable - expected)[:5], sorted(expected - trainable)[:5])
    if method != "full":
        assert len(trainable) < len(params)
    if spec.head:  # seq_cls models: the head always trains
        assert any(is_head_param(n, spec) for n in trainable)
    if not trainable:  # "none" on a causal LM (no separate head): nothing to differentiate
        assert method == "none"
        return
    assert method == "none" or any(not is_head_param(n, spec) for n in trainable)

    model.eval()  # no dropout: deterministic
    batch = handle.prepare_batch(make_batch(loaded))
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, param in params.items():
        if name in trainable:
            assert param.grad is not None, f"{name} trains but got no gradient"
            if not may_have_zero_grad(name):
                assert param.grad.abs().max() > 0, f"{name} trains but its gradient is zero"
        else:
            assert param.grad is None, f"{name} is frozen but got a gradient"
    # The output side of each zero-initialised method gets a gradient (the method can learn at all).
    if method == "lora":
        b_grads = [p.grad for n, p in params.items() if ".lora_B" in n]
        assert b_grads and all(g.abs().max() > 0 for g in b_grads)
    if method.startswith("adapter_"):
        up = [p.grad for n, p in params.items() if ".adapter.up.weight" in n]
        assert up and all(g.abs().max() > 0 for g in up)


ADAPTER_PLACES = {
    "adapter_h": (("attn_out", "ffn_out"), 0),
    "adapter_l": (("block_out",), 0),
    "adapter_p": (("ffn_add_norm",), 0),
    "adapter_d": (("attn_out", "ffn_out"), 1),
}


@pytest.mark.parametrize("method", list(ADAPTER_PLACES))
@pytest.mark.parametrize("family", ["roberta", "gpt2", "llama"])
def test_adapters_sit_where_the_paper_puts_them(family, method):
    loaded = tiny(family)
    handle = apply_method(loaded.model, method_cfg(method))
    spec = handle.spec
    places, dropped = ADAPTER_PLACES[method]
    want = {adapter_path(spec, p, i) for i in range(dropped, TINY_LAYERS) for p in places}
    found = {n: m for n, m in loaded.model.named_modules() if isinstance(m, Adapter)}
    assert set(found) == want
    assert {isinstance(m.norm, torch.nn.LayerNorm) for m in found.values()} == {method == "adapter_l"}


@pytest.mark.parametrize("family", ["roberta", "gpt2", "llama"])
def test_lora_wraps_only_the_targeted_weights(family):
    loaded = tiny(family)
    handle = apply_method(loaded.model, method_cfg("lora", targets=["q", "v"], r=4))
    spec = handle.spec
    layers = {n: m for n, m in loaded.model.named_modules() if isinstance(m, LoRALinear)}
    want = {f"{spec.blocks}.{i}.{spec.attn[t]}" for i in range(TINY_LAYERS) for t in ("q", "v")}
    assert set(layers) == want
    for layer in layers.values():
        if spec.fused_qkv:  # GPT-2: one fused c_attn, only its q and v thirds adapted
            d = loaded.model.config.n_embd
            assert layer.slices == {"q": (0, d), "v": (2 * d, 3 * d)}
        else:
            assert list(layer.slices) == [""]


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_prefix_layer_overwrites_every_block_input_at_the_virtual_positions(family):
    """The embedding hook and every block's pre-hook put the learned vectors at the virtual tokens, nowhere else."""
    loaded = tiny(family)
    model = loaded.model.eval()
    handle = apply_method(model, method_cfg("prefix_layer"))
    with torch.no_grad():
        model.prefix_tokens.vectors.normal_()  # distinct from anything the model computes
    vectors = model.prefix_tokens.vectors
    seen: dict[int, torch.Tensor] = {}

    def capture(index):
        def hook(_m, args, kwargs):
            seen[index] = (args[0] if args else kwargs["hidden_states"]).detach()
        return hook

    embed_out = {}
    embeddings = model.get_submodule(handle.spec.embeddings)
    hooks = [embeddings.register_forward_hook(lambda _m, _a, out: embed_out.setdefault("out", out.detach()))]
    hooks += [b.register_forward_pre_hook(capture(i), with_kwargs=True)
              for i, b in enumerate(blocks(model, handle.spec))]
    raw = make_batch(loaded)
    batch = handle.prepare_batch(raw)
    index = handle.batch_hook.state.index
    with torch.no_grad():
        model(**batch)
    for h in hooks:
        h.remove()
    assert vectors.shape == (TINY_LAYERS, 5, hidden_size(model))
    rows = torch.arange(index.shape[0]).unsqueeze(1)
    assert torch.equal(embed_out["out"][rows, index], vectors[0].expand(index.shape[0], -1, -1))
    for i in range(1, TINY_LAYERS):
        assert torch.equal(seen[i][rows, index], vectors[i].expand(index.shape[0], -1, -1))
    # Real tokens keep their own embeddings.
    real = torch.ones_like(batch["input_ids"], dtype=torch.bool)
    real[rows, index] = False
    with torch.no_grad():
        plain = embeddings(batch["input_ids"])
    assert torch.equal(embed_out["out"][real], plain[real])


@pytest.mark.parametrize("method", ["prefix_embed", "prefix_layer"])
def test_prefix_gradients_reach_every_vector_set(method):
    loaded = tiny("llama")
    handle = apply_method(loaded.model, method_cfg(method))
    loaded.model(**handle.prepare_batch(make_batch(loaded))).loss.backward()
    grad = loaded.model.prefix_tokens.vectors.grad
    assert grad.shape[0] == (TINY_LAYERS if method == "prefix_layer" else 1)
    per_token = grad.abs().sum(-1)  # (sets, n_virtual)
    assert (per_token > 0).all(), "every virtual token of every set should get a gradient"


@pytest.mark.parametrize("family", ["roberta", "gpt2", "llama"])
@pytest.mark.parametrize("method", ["adapter_h", "adapter_l", "adapter_p"])
def test_adapters_start_as_the_base_model(family, method):
    base = tiny(family).model.eval()
    adapted = copy.deepcopy(base)
    apply_method(adapted, method_cfg(method))
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        torch.testing.assert_close(adapted(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-6, rtol=0)


# --- errors ------------------------------------------------------------------------------------


def test_bitfit_on_llama_raises_a_clear_error():
    with pytest.raises(ValueError, match=r"bitfit.*llama.*no bias.*Fix"):
        apply_method(tiny("llama").model, {"name": "bitfit"})


@pytest.mark.parametrize("cfg, match", [
    ({"name": "adapter_d", "bottleneck": 4, "drop_layers": 2}, r"drop_layers=2 must be < 2"),
    ({"name": "ft_top2", "top_k": 3}, r"top_k=3 must be in \[1, 2\]"),
    ({"name": "ft_top2", "top_k": 0}, r"top_k must be >= 1, got 0"),
    ({"name": "prefix_embed", "prefix_length": 0, "infix_length": 0}, "prefix_length"),
    ({"name": "adapter_h", "bottleneck": 0}, "bottleneck must be an integer >= 1"),
    ({"name": "adapter_h", "bottleneck": 4, "activation": "softsign"}, "activation='softsign' is not one of"),
    ({"name": "lora", "targets": ["q", "v"], "r": {"q": 4}}, r"no rank for target\(s\) \['v'\]"),
    ({"name": "lora", "targets": ["q"], "r": 4, "init": "xavier"}, "init='xavier' is not one of"),
    ({"name": "lora", "targets": ["ffn"], "r": 4}, r"targets has unknown \['ffn'\]"),
        ({"name": "lora", "targets": [], "r": 4}, "targets is empty"),
        ({"name": "lora", "targets": ["q"], "r": 2.5}, "r must be an integer >= 1"),
        ({"name": "lora", "targets": ["q"], "r": 0}, "r must be an integer >= 1"),
        ({"name": "lora", "targets": ["q"], "r": 4, "alpha": 0}, "alpha must be > 0"),
        ({"name": "lora", "targets": ["q"], "r": 4, "rank": 4}, "method.rank"),
        ({"name": "lora", "targets": ["q"], "r": 4, "dropout": "high"}, "method.dropout"),
        ({"name": "prefix_layer", "prefix_length": -1, "infix_length": 4}, "prefix_length"),
])
def test_bad_method_configs_raise(cfg, match):
    with pytest.raises(ValueError, match=match):
        apply_method(tiny("roberta").model, cfg)


def test_ft_top2_default_trains_the_last_two_blocks_only():
    loaded = load_model({"name": "t", "source": "tiny", "family": "gpt2", "overrides": {"n_layer": 4}}, "causal_lm")
    apply_method(loaded.model, group_option("method", "ft_top2"))
    trainable = {n.split(".")[2] for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert trainable == {"2", "3"}


# --- prefix: virtual-token placement ----------------------------------------------------------

P = 99  # placeholder id


def test_insert_virtual_tokens_right_padding():
    batch = {"input_ids": torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
             "labels": torch.tensor([1, 0])}
    out, pos = insert_virtual_tokens(batch, n_prefix=2, n_infix=1, placeholder_id=P)
    # No prompt boundary given and sequence-level labels: the infix follows the real tokens.
    assert out["input_ids"].tolist() == [[P, P, 5, 6, 7, P, 0], [P, P, 8, 9, P, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]]
    assert pos.tolist() == [[0, 1, 5], [0, 1, 4]]
    assert torch.equal(out["labels"], batch["labels"])  # sequence labels untouched


def test_insert_virtual_tokens_left_padding_with_prompt_lengths():
    batch = {"input_ids": torch.tensor([[0, 5, 6, 7], [0, 0, 8, 9]]),
             "attention_mask": torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]]),
             "prompt_lengths": torch.tensor([1, 2])}
    out, pos = insert_virtual_tokens(batch, n_prefix=2, n_infix=2, placeholder_id=P)
    assert out["input_ids"].tolist() == [[0, P, P, 5, P, P, 6, 7], [0, 0, P, P, 8, 9, P, P]]
    assert out["attention_mask"].tolist() == [[0, 1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1]]
    assert pos.tolist() == [[1, 2, 4, 5], [2, 3, 6, 7]]
    assert "prompt_lengths" not in out


@pytest.mark.parametrize("side", ["left", "right"])
def test_insert_virtual_tokens_with_token_labels(side):
    """The prompt ends at the first supervised label; virtual positions are never supervised."""
    ids = [[5, 6, 7, 8, 0], [9, 10, 11, 0, 0]]
    labels = [[-100, -100, 7, 8, -100], [-100, 10, 11, -100, -100]]
    mask = [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]
    if side == "left":  # move the padding to the front
        shift = [1, 2]
        ids = [r[-s:] + r[:-s] for r, s in zip(ids, shift, strict=True)]
        labels = [r[-s:] + r[:-s] for r, s in zip(labels, shift, strict=True)]
        mask = [r[-s:] + r[:-s] for r, s in zip(mask, shift, strict=True)]
    batch = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}
    out, pos = insert_virtual_tokens(batch, n_prefix=2, n_infix=1, placeholder_id=P)
    rows = torch.arange(2).unsqueeze(1)
    assert (out["input_ids"][rows, pos] == P).all()
    assert (out["labels"][rows, pos] == IGNORE_INDEX).all()
    assert (out["attention_mask"][rows, pos] == 1).all()
    for r in range(2):
        real = [t for t, m in zip(ids[r], mask[r], strict=True) if m]
        new_real = [int(t) for i, (t, m) in enumerate(zip(out["input_ids"][r], out["attention_mask"][r], strict=True))
                    if m and i not in pos[r].tolist()]
        assert new_real == real  # real tokens keep their order
        # prefix right before the first real token; infix right before the first supervised token
        first_real = mask[r].index(1)
        assert pos[r, :2].tolist() == [first_real, first_real + 1]
        supervised = [i for i, v in enumerate(out["labels"][r].tolist()) if v != IGNORE_INDEX]
        assert int(pos[r, 2]) == supervised[0] - 1
        assert [int(out["labels"][r, i]) for i in supervised] == [v for v in labels[r] if v != IGNORE_INDEX]
    # padding stays on its side
    pad_cols = (out["attention_mask"] == 0).nonzero()[:, 1]
    assert (pad_cols >= 5).all() if side == "right" else (pad_cols <= 1).all()


def test_insert_virtual_tokens_token_type_ids():
    batch = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.tensor([[1, 1, 1]]),
             "token_type_ids": torch.tensor([[0, 1, 1]]), "prompt_lengths": torch.tensor([2])}
    out, _ = insert_virtual_tokens(batch, n_prefix=1, n_infix=1, placeholder_id=P)
    assert out["input_ids"].tolist() == [[P, 5, 6, P, 7]]
    assert out["token_type_ids"].tolist() == [[0, 0, 1, 1, 1]]  # infix takes the segment it follows


def test_prefix_layer_generate_with_beam_search():
    """generate() expands the batch num_beams times; the hooks still write each row's own positions."""
    loaded = tiny("gpt2")
    model = loaded.model.eval()
    handle = apply_method(model, method_cfg("prefix_layer"))
    with torch.no_grad():
        model.prefix_tokens.vectors.normal_()
    loaded.tokenizer.padding_side = "left"
    enc = loaded.tokenizer(["the cat sat on", "hi"], padding=True, return_tensors="pt")
    batch = handle.prepare_batch({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    index = handle.batch_hook.state.index
    assert not torch.equal(index[0], index[1])  # different paddings: rows must not be mixed up
    calls = []
    block1 = blocks(model, handle.spec)[1]
    hook = block1.register_forward_pre_hook(
        lambda _m, args, kwargs: calls.append((args[0] if args else kwargs["hidden_states"]).detach()),
        with_kwargs=True)
    beams, new = 2, 3
    with torch.no_grad():
        out = model.generate(**batch, num_beams=beams, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                             pad_token_id=loaded.tokenizer.pad_token_id)
    hook.remove()
    assert out.shape == (2, batch["input_ids"].shape[1] + new)
    first = calls[0]
    assert first.shape[0] == 2 * beams and first.shape[1] == batch["input_ids"].shape[1]
    for row in range(2 * beams):
        assert torch.equal(first[row, index[row // beams]], model.prefix_tokens.vectors[1])
    assert all(c.shape[1] == 1 for c in calls[1:])  # cached steps: one new position each


# --- method-only state dict ------------------------------------------------------------------


def _lora(family="roberta", seed=0, **kw):
    loaded = tiny(family, seed=seed)
    apply_method(loaded.model, {"name": "lora", "targets": ["q", "v"], "r": 4, "alpha": 8, "init": "kaiming", **kw})
    return loaded


def test_method_state_dict_round_trip():
    src = _lora(seed=0)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in src.model.parameters():
            if param.requires_grad:  # B away from zero, head away from its init: a "trained" state
                param.add_(torch.randn_like(param) * 0.1)
    state = method_state_dict(src.model)
    expected = {n for n, p in src.model.named_parameters() if p.requires_grad}
    assert set(state) == expected
    assert all(".lora_" in n or n.startswith("classifier.") for n in state)

    torch.manual_seed(123)  # different LoRA A init in the fresh model; same base (seed 0)
    dst = _lora(seed=0)
    ids = torch.tensor([[5, 17, 42, 99, 3], [7, 8, 9, 10, 0]])
    src.model.eval()
    dst.model.eval()
    with torch.no_grad():
        want = src.model(input_ids=ids).logits
        assert not torch.allclose(dst.model(input_ids=ids).logits, want, atol=1e-4)
        load_method_state_dict(dst.model, state)
        torch.testing.assert_close(dst.model(input_ids=ids).logits, want, atol=0, rtol=0)
    state["classifier.out_proj.bias"].fill_(7.0)  # the state is a copy, not a view of the model
    assert not torch.equal(dst.model.classifier.out_proj.bias, state["classifier.out_proj.bias"])


def test_method_state_dict_is_a_small_fraction():
    loaded = _lora()
    state = method_state_dict(loaded.model)
    method_numel = sum(t.numel() for t in state.values())
    counts = count_params(loaded.model)
    assert method_numel == counts["trainable_params_with_head"]
    full_numel = sum(t.numel() for t in loaded.model.state_dict().values())
    # tiny: 1,024 LoRA + 1,122 head of ~43k, most of it the byte-level embeddings
    assert method_numel < 0.10 * full_numel
    lora_numel = sum(t.numel() for n, t in state.items() if ".lora_" in n)
    assert lora_numel == counts["trainable_params"] == 2 * (2 * TINY_LAYERS) * 32 * 4


def test_method_state_dict_fraction_at_paper_shape():
    """RoBERTa-base, LoRA r=8 on q, v (meta device): the checkpoint is < 1% of the model."""
    cfg = {**group_option("model", "roberta_base"), "source": "shape"}
    with torch.device("meta"):
        loaded = load_model(cfg, "seq_cls", num_labels=2)
        apply_method(loaded.model, {**group_option("method", "lora"), "r": 8, "targets": ["q", "v"]})
    state = method_state_dict(loaded.model)
    method_numel = sum(t.numel() for t in state.values())
    full_numel = sum(p.numel() for p in loaded.model.parameters())
    assert sum(t.numel() for n, t in state.items() if ".lora_" in n) == 294_912
    assert method_numel / full_numel < 0.01


def test_mismatched_method_state_dict_raises():
    state = method_state_dict(_lora().model)
    adapter_model = tiny("roberta").model
    apply_method(adapter_model, {"name": "adapter_h", "bottleneck": 4})
    with pytest.raises(ValueError, match=r"does not fit.*missing.*adapter.*unexpected.*lora_.*Fix"):
        load_method_state_dict(adapter_model, state)
    more_targets = _lora(targets=["q", "k", "v"]).model
    with pytest.raises(ValueError, match=r"missing \[.*key"):
        load_method_state_dict(more_targets, state)
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_method_state_dict(_lora(r=2).model, state)
