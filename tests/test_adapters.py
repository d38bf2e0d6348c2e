"""Adapter placements against their published equations, AdapterDrop, and the keys of old adapter records.

Each placement's forward pass is compared with a few-line reference written from the sources' equations
(lora_repro/methods/adapters.py states them): hooks on the *base* model that compute the adapter's update with
torch.nn.functional from the adapted model's weights, never the Adapter modules' own forward.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import FAMILIES, adapter_path, tiny

from lora_repro.config import group_option
from lora_repro.methods import apply_method
from lora_repro.methods.adapters import Adapter
from lora_repro.models import load_model
from lora_repro.models.arch import spec_for
from lora_repro.schemas import ConfigError
from lora_repro.store import run_key

IDS = torch.tensor([[5, 17, 42, 99, 3, 60], [7, 8, 9, 10, 11, 12]])
ACT = {"relu": F.relu, "swish": F.silu}


def randomize_adapters(model: torch.nn.Module, seed: int = 1) -> None:
    """Give every adapter weight a value (up starts at zero, LayerNorm at the identity), so f(u) != 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".adapter." in name:
                gain = 1.0 if name.endswith("norm.weight") else 0.0  # LayerNorm gains near 1
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3 + gain)


def update(adapter: Adapter, u: torch.Tensor, activation: str) -> torch.Tensor:
    """f(u) = W_up act(W_down LN_a(u)) from the adapter's tensors (LN_a: Lin's own norm, when it has one)."""
    if isinstance(adapter.norm, torch.nn.LayerNorm):
        u = F.layer_norm(u, u.shape[-1:], adapter.norm.weight, adapter.norm.bias, adapter.norm.eps)
    hidden = ACT[activation](F.linear(u, adapter.down.weight, adapter.down.bias))
    return F.linear(hidden, adapter.up.weight, adapter.up.bias)


def on_output(fn):
    """A forward hook applying fn to a module's output (the first element of a tuple output)."""
    def hook(_module, _args, output):
        if isinstance(output, tuple):
            return (fn(output[0]), *output[1:])
        return fn(output)
    return hook


def pfeiffer_post_ln(output_module, adapter, activation):
    """The fork's RobertaOutput with adapter_type pfeiffer (= AdapterHub SeqBnConfig), in eval mode:
    h = dense(hidden); LN(f(LN(h + x)) + h + x)."""
    def hook(module, args, _output):
        hidden, x = args
        h = module.dense(hidden)
        return module.LayerNorm(update(adapter, module.LayerNorm(h + x), activation) + h + x)
    return output_module.register_forward_hook(hook)


def reference_hook(block, spec, site: str, adapter: Adapter, activation: str):
    """A hook on a base block making it compute the published equation of `site` with `adapter`'s weights."""
    f = lambda u: u + update(adapter, u, activation)  # noqa: E731
    if site in ("attn_out", "ffn_out"):  # Houlsby: y + f(y) on the projection output, before the add
        return block.get_submodule(getattr(spec, site)).register_forward_hook(on_output(f))
    if site == "ffn_add_norm" and spec.out_norm:
        return pfeiffer_post_ln(block.get_submodule(spec.out_norm.rpartition(".")[0]), adapter, activation)
    return block.register_forward_hook(on_output(f))  # Lin; Pfeiffer pre-LN (AdapterHub: no norm): H + f(H)


def reference_hooks(base, adapted, spec, cfg: dict) -> list:
    """Hooks that make `base` compute `cfg`'s published equations with `adapted`'s adapter weights."""
    return [reference_hook(block, spec, site, adapted.get_submodule(adapter_path(spec, site, i)), cfg["activation"])
            for i, block in enumerate(base.get_submodule(spec.blocks)) for site in cfg["placement"]]


# The published variants as typed configs (the presets in conf/method/ hold these values).
PUBLISHED = {
    "houlsby": {"placement": ["attn_out", "ffn_out"], "activation": "swish"},
    "pfeiffer": {"placement": ["ffn_add_norm"], "activation": "relu"},
    "lin": {"placement": ["block_out"], "activation": "relu", "layer_norm": True},
}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("variant", list(PUBLISHED))
def test_placement_matches_the_published_equations(family, variant):
    base = tiny(family).model.eval()
    adapted = copy.deepcopy(base)
    cfg = {"name": "adapter_h", "bottleneck": 4, **PUBLISHED[variant]}
    apply_method(adapted, cfg)
    randomize_adapters(adapted)
    spec = spec_for(base)
    with torch.no_grad():
        before = base(input_ids=IDS).logits
        handles = reference_hooks(base, adapted, spec, cfg)
        want = base(input_ids=IDS).logits
        got = adapted(input_ids=IDS).logits
    for handle in handles:
        handle.remove()
    assert (want - before).abs().max() > 1e-3  # the adapters change the function
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset, variant", [("adapter_h", "houlsby"), ("adapter_p", "pfeiffer"), ("adapter_l", "lin")])
def test_presets_are_the_published_variants(preset, variant):
    values = group_option("method", preset)
    assert {key: values[key] for key in PUBLISHED[variant]} == PUBLISHED[variant]


def test_pfeiffer_differs_from_an_adapter_on_the_raw_ffn_output():
    """The published placement is a different function from the suite's first Pfeiffer (placement ffn_out)."""
    base = tiny("roberta").model.eval()
    outputs = []
    for placement in (["ffn_add_norm"], ["ffn_out"]):
        model = copy.deepcopy(base)
        apply_method(model, {"name": "adapter_p", "bottleneck": 4, "placement": placement})
        randomize_adapters(model)
        with torch.no_grad():
            outputs.append(model(input_ids=IDS).logits)
    assert (outputs[0] - outputs[1]).abs().max() > 1e-3


# --- AdapterDrop --------------------------------------------------------------------------------


def four_block_gpt2():
    loaded = load_model({"name": "t", "source": "tiny", "family": "gpt2", "overrides": {"n_layer": 4}}, "causal_lm")
    for module in loaded.model.modules():  # the model's own dropout off: outputs depend on the drop alone
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return loaded.model


def adapted_copy(base, **method) -> torch.nn.Module:
    model = copy.deepcopy(base)
    apply_method(model, {"name": "adapter_d", "bottleneck": 4, "drop_layers": 0, **method})
    randomize_adapters(model)
    return model


def schedule_of(model):
    return next(m.schedule for m in model.modules() if isinstance(m, Adapter))


def test_random_drop_is_seeded_skips_the_lowest_blocks_and_evaluates_with_every_adapter():
    base = four_block_gpt2()
    model = adapted_copy(base, random_drop_max=3)
    # reference: the same weights dropping the lowest k blocks at evaluation, for each k
    reference = {k: adapted_copy(base, eval_drop_layers=k).eval() if k else adapted_copy(base).eval() for k in range(4)}
    draws = []
    for seed in (0, 0):
        torch.manual_seed(seed)
        model.train()
        drawn = []
        for _ in range(12):
            logits = model(input_ids=IDS).logits
            k = schedule_of(model).skipped
            with torch.no_grad():
                torch.testing.assert_close(logits, reference[k](input_ids=IDS).logits, atol=1e-5, rtol=1e-5)
            drawn.append(k)
        draws.append(drawn)
    assert draws[0] == draws[1]  # the global generator, seeded: the same k's
    assert len(set(draws[0])) > 1 and set(draws[0]) <= {0, 1, 2, 3}
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS).logits, reference[0](input_ids=IDS).logits)
    assert schedule_of(model).skipped == 0


def test_eval_drop_equals_the_static_drop_at_inference():
    base = four_block_gpt2()
    dynamic = adapted_copy(base, random_drop_max=3, eval_drop_layers=2).eval()
    static = copy.deepcopy(base)
    apply_method(static, {"name": "adapter_d", "bottleneck": 4, "drop_layers": 2})
    adapters = {k: v for k, v in dynamic.state_dict().items() if ".adapter." in k and k in static.state_dict()}
    assert len(adapters) == 2 * 2 * 4  # blocks 2 and 3, two sites, down/up weight and bias
    static.load_state_dict(adapters, strict=False)
    with torch.no_grad():
        torch.testing.assert_close(dynamic(input_ids=IDS).logits, static.eval()(input_ids=IDS).logits)


@pytest.mark.parametrize("method, error, match", [
    ({"random_drop_max": 1, "drop_layers": 1}, ConfigError, "set method.drop_layers=0"),
    ({"random_drop_max": 2}, ValueError, r"random_drop_max=2 must be < 2"),
    ({"eval_drop_layers": 2}, ValueError, r"eval_drop_layers=2 must be < 2"),
    ({"eval_drop_layers": -1}, ConfigError, "eval_drop_layers must be an integer >= 0"),
    ({"placement": ["block_out", "ffn_add_norm"]}, ConfigError, "holds more than one of"),
    ({"placement": ["ffn_norm"]}, ConfigError, "placement must be a non-empty list"),
])
def test_bad_adapter_configs_raise(method, error, match):
    with pytest.raises(error, match=match):
        apply_method(tiny("gpt2").model, {"name": "adapter_d", "bottleneck": 4, "drop_layers": 0, **method})


# --- keys: old records keep theirs, the published presets get new ones ----------------------------


def config_with(method: dict) -> dict:
    return {"task": {"name": "rte"}, "model": {"name": "minilm_l6"}, "seed": 0, "method": method}


# method blocks as the committed records hold them (written before the typed configs: no placement, no drop fields)
@pytest.mark.parametrize("old, as_before, published", [
    ({"name": "adapter_p", "bottleneck": 16, "activation": "relu"}, {"placement": ["ffn_out"]}, PUBLISHED["pfeiffer"]),
    ({"name": "adapter_l", "bottleneck": 6, "activation": "relu", "layer_norm": True}, {"placement": ["ffn_out"]},
     PUBLISHED["lin"]),
    ({"name": "adapter_h", "bottleneck": 8, "activation": "relu"}, {"activation": "relu"}, PUBLISHED["houlsby"]),
    ({"name": "adapter_d", "bottleneck": 8, "activation": "relu", "drop_layers": 2}, {}, {}),
], ids=["p", "l", "h", "d"])
def test_old_adapter_records_keep_their_keys_and_published_variants_get_new_ones(old, as_before, published):
    typed = {**group_option("method", old["name"]), "bottleneck": old["bottleneck"]}  # every typed field
    assert run_key(config_with({**typed, **as_before})) == run_key(config_with(old))
    if published:  # the published variant is not what the record ran
        assert run_key(config_with({**typed, **published})) != run_key(config_with(old))
