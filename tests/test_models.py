"""Model sources and the architecture map: every ArchSpec path must exist in the real transformers model.

The methods never hard-code module names; they ask the ArchSpec. These tests resolve every path of
every family's spec on the tiny model (and on paper shapes), and check the errors a user meets:
unknown architecture, impossible rank, unknown method, a hub model while offline.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch
from helpers import FAMILIES, tiny
from safetensors import safe_open
from torch import nn
from transformers.pytorch_utils import Conv1D

from lora_repro.config import group_option, resolve_overrides
from lora_repro.methods import UnknownMethodError, apply_method
from lora_repro.models import load_model, spec_for
from lora_repro.models.arch import (
    SPECS,
    UnknownArchitectureError,
    block_linears,
    blocks,
    hidden_size,
    is_head_param,
)
from lora_repro.models.load import ModelSourceError, package_dir
from lora_repro.models.tiny import TINY_SHAPES, build_tokenizer, tiny_config
from lora_repro.schemas import ConfigError


def _projection_shape(module: nn.Module) -> tuple[int, int]:
    """(out, in) of a Linear or a transformers Conv1D."""
    assert isinstance(module, (nn.Linear, Conv1D)), type(module)
    return tuple(module.weight.shape[::-1]) if isinstance(module, Conv1D) else tuple(module.weight.shape)


def check_spec_resolves(model: nn.Module, family: str, layers: int, d: int) -> None:
    spec = spec_for(model)
    assert spec is SPECS[family] and spec.family == family
    assert hidden_size(model) == d
    stack = blocks(model, spec)
    assert isinstance(stack, nn.ModuleList) and len(stack) == layers
    block = stack[0]
    for weight_type in ("q", "k", "v", "o", "mlp"):
        for path in block_linears(block, spec, weight_type):
            out_f, in_f = _projection_shape(block.get_submodule(path))
            assert d in (out_f, in_f)
    if spec.fused_qkv:  # GPT-2's c_attn holds q, k, v side by side
        assert spec.attn["q"] == spec.attn["k"] == spec.attn["v"]
        assert _projection_shape(block.get_submodule(spec.attn["q"])) == (3 * d, d)
    else:
        assert len({spec.attn[t] for t in ("q", "k", "v", "o")}) == 4
        assert _projection_shape(block.get_submodule(spec.attn["q"])) == (d, d)
    assert _projection_shape(block.get_submodule(spec.attn_out))[0] == d
    assert _projection_shape(block.get_submodule(spec.ffn_out))[0] == d
    for norm in spec.norms:
        assert block.get_submodule(norm).weight.shape == (d,)
    assert isinstance(model.get_submodule(spec.embeddings), nn.Embedding)
    assert model.get_submodule(spec.embeddings).weight.shape[1] == d
    for head in spec.head:
        model.get_submodule(head)
    # the head (trained by every method, left out of the paper's counts) never reaches into the blocks
    for name, _ in model.named_parameters():
        if is_head_param(name, spec):
            assert not name.startswith(spec.blocks + ".")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_spec_paths_resolve_on_tiny_models(family):
    model = tiny(family).model
    shape = TINY_SHAPES[family]
    check_spec_resolves(model, family, shape.get("num_hidden_layers", shape.get("n_layer")),
                        shape.get("hidden_size", shape.get("n_embd")))


@pytest.mark.parametrize("name, kind, layers, d", [
    ("roberta_base", "seq_cls", 12, 768),
    ("deberta_v2_xxlarge", "seq_cls", 48, 1536),
    ("gpt2_medium", "causal_lm", 24, 1024),
    ("smollm2_135m", "causal_lm", 30, 576),
])
def test_spec_paths_resolve_on_paper_shapes(name, kind, layers, d):
    cfg = {**group_option("model", name), "source": "shape"}
    model = load_model(cfg, kind, num_labels=2).model
    assert all(p.device.type == "meta" for p in model.parameters())  # no memory, no download
    check_spec_resolves(model, cfg["family"], layers, d)


def test_head_membership():
    assert is_head_param("classifier.dense.weight", SPECS["roberta"])
    assert is_head_param("classifier", SPECS["roberta"])
    assert not is_head_param("classifier_extra.weight", SPECS["roberta"])  # prefix match is by path segment
    assert not is_head_param("roberta.encoder.layer.0.attention.self.query.weight", SPECS["roberta"])
    assert is_head_param("bert.pooler.dense.weight", SPECS["bert"])  # BERT's pooler trains with the head
    assert is_head_param("pooler.dense.bias", SPECS["deberta-v2"])
    assert SPECS["gpt2"].head == () and SPECS["llama"].head == ()  # tied LM heads: nothing separate


def test_tiny_llama_has_grouped_query_attention():
    model = tiny("llama").model
    block = model.model.layers[0]
    assert block.self_attn.k_proj.weight.shape == block.self_attn.v_proj.weight.shape == (16, 32)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_block_linears_rejects_unknown_weight_type():
    spec = SPECS["roberta"]
    assert block_linears(None, spec, "mlp") == ["intermediate.dense", "output.dense"]
    assert block_linears(None, SPECS["llama"], "mlp") == ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    with pytest.raises(ValueError, match=r"unknown weight type 'ffn'.*'q', 'k', 'v', 'o', 'mlp'"):
        block_linears(None, spec, "ffn")


# --- errors a user meets --------------------------------------------------------------------------


class _T5Like(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(model_type="t5")
        self.layer = nn.Linear(4, 4)


def test_unknown_architecture():
    with pytest.raises(UnknownArchitectureError,
                       match=r"model_type='t5'.*known: \[.*'bert'.*'llama'.*Fix: add an ArchSpec"):
        spec_for(_T5Like())
    with pytest.raises(UnknownArchitectureError, match="model_type=None"):
        spec_for(nn.Linear(2, 2))
    assert issubclass(UnknownArchitectureError, ValueError)
    with pytest.raises(UnknownArchitectureError):
        apply_method(_T5Like(), {"name": "lora", "targets": ["q"], "r": 1})


@pytest.mark.parametrize("family, r, shape", [
    ("roberta", 64, "32x32"),
    ("gpt2", 33, "32x32"),  # a third of c_attn
    ("llama", 20, "16x32"),  # q (32x32) takes r=20, the GQA v_proj (16x32) cannot
])
def test_impossible_lora_rank(family, r, shape):
    with pytest.raises(ValueError, match=rf"LoRA rank r={r} is impossible for a {shape} weight"):
        apply_method(tiny(family).model, {"name": "lora", "targets": ["q", "v"], "r": r})


def test_unknown_method_lists_the_known_ones():
    model = tiny("roberta").model
    with pytest.raises(UnknownMethodError, match=r"unknown method 'qlora'.*'adapter_h'.*'lora'.*'prefix_layer'") as err:
        apply_method(model, {"name": "qlora"})
    assert isinstance(err.value, ValueError)
    assert all(p.requires_grad for p in model.parameters())  # rejected before anything was frozen


# --- sources ----------------------------------------------------------------------------------------


def test_hub_source_offline_fails_fast_and_names_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelSourceError) as err:
        load_model({"name": "nope", "source": "hub", "hub_id": "lora-repro-tests/no-such-model-xyz"}, "seq_cls")
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "'lora-repro-tests/no-such-model-xyz'" in message
    assert "HF_HUB_OFFLINE=1" in message
    assert "Fix:" in message and "minilm_l6" in message


def test_unknown_source_and_task_kind():
    with pytest.raises(ModelSourceError, match="unknown model source 'ftp'"):
        load_model({"name": "m", "source": "ftp", "family": "bert"}, "seq_cls")
    with pytest.raises(ValueError, match="unknown task kind 'seq2seq'"):
        load_model({"name": "m", "source": "tiny", "family": "bert"}, "seq2seq")
    with pytest.raises(ValueError, match="no tiny shape for family 't5'"):
        tiny_config("t5", build_tokenizer("bert"))
    with pytest.raises(ModelSourceError, match=r"'lora_repro_no_such_pkg' is not installed.*Fix"):
        package_dir("lora_repro_no_such_pkg")


def test_tiny_models_are_seeded_and_sized_to_the_tokenizer():
    a, b, c = tiny("roberta", seed=0), tiny("roberta", seed=0), tiny("roberta", seed=1)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    embeddings = "roberta.embeddings.word_embeddings.weight"
    assert not torch.equal(sa[embeddings], sc[embeddings])
    assert a.model.config.vocab_size == len(a.tokenizer)
    assert a.model.config.pad_token_id == a.tokenizer.pad_token_id


def test_task_kinds_and_heads():
    reg = load_model({"name": "t", "source": "tiny", "family": "bert"}, "seq_cls", num_labels=1).model
    assert reg.config.problem_type == "regression" and reg.classifier.out_features == 1
    three = load_model({"name": "t", "source": "tiny", "family": "deberta-v2"}, "seq_cls", num_labels=3).model
    assert three.classifier.out_features == 3
    lm = tiny("gpt2").model
    assert type(lm).__name__ == "GPT2LMHeadModel"
    no_drop = load_model({"name": "t", "source": "tiny", "family": "roberta"}, "seq_cls", num_labels=2,
                         head_dropout=0.0).model
    assert no_drop.config.classifier_dropout == 0.0 and no_drop.classifier.dropout.p == 0.0


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tiny_tokenizer_round_trips_any_text(family):
    tok = build_tokenizer(family)
    text = "Café — naïve 数据 🙂 <b>x</b>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.pad_token is not None
    if family in ("gpt2", "llama"):
        assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    else:
        pair = tok("a", "b")["input_ids"]
        assert pair[0] == tok.cls_token_id and pair.count(tok.sep_token_id) == 2


def test_offline_minilm_package_loads_as_bert_classifier():
    cfg = group_option("model", "minilm_l6")
    assert cfg["source"] == "package" and cfg["family"] == "bert"
    loaded = load_model(cfg, "seq_cls", num_labels=2)
    model = loaded.model.eval()
    assert type(model).__name__ == "BertForSequenceClassification"
    check_spec_resolves(model, "bert", 6, 384)
    assert sum(p.numel() for n, p in model.named_parameters() if not n.startswith("classifier")) == 22_713_216
    enc = loaded.tokenizer(["a sentence", "another, longer sentence"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc).logits
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    # pretrained, not random: the weights are the packaged checkpoint's
    with safe_open(str(package_dir(cfg["package"]) / cfg["subdir"] / "model.safetensors"), "pt") as f:
        for key in ("embeddings.word_embeddings.weight", "encoder.layer.5.attention.self.value.weight"):
            assert torch.equal(model.bert.get_parameter(key), f.get_tensor(key))
    apply_method(model, group_option("method", "lora"))
    assert sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and ".lora_" in n) == 2 * 12 * 384 * 8


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_attn_implementation_picks_the_kernel_and_keeps_the_function(family):
    """`model.attn_implementation: eager` swaps only the kernel: same weights, same outputs (fp32)."""
    kind = "seq_cls" if family == "bert" else "causal_lm"
    default = load_model({"name": "t", "source": "tiny", "family": family}, kind, num_labels=2).model.eval()
    eager = load_model({"name": "t", "source": "tiny", "family": family, "attn_implementation": "eager"}, kind,
                       num_labels=2).model.eval()
    assert default.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    ids = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        torch.testing.assert_close(eager(input_ids=ids, attention_mask=mask).logits,
                                   default(input_ids=ids, attention_mask=mask).logits, rtol=1e-5, atol=1e-5)


def test_unknown_attn_implementation_names_the_key():
    with pytest.raises(ConfigError, match=r"model.attn_implementation='flash' is not one of \(None, 'sdpa', 'eager'\)"):
        resolve_overrides(["model=tiny_bert", "model.attn_implementation=flash"])
