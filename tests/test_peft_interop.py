"""PEFT adapters out of and into the suite, per architecture, on tiny models.

Out: a suite LoRA (random non-zero B, perturbed head) exported and loaded by PEFT's own
`PeftModel.from_pretrained` gives the suite model's outputs. In: an adapter that PEFT itself saved,
applied by the suite, gives PEFT's outputs. Each comparison also checks that the adapter moves the
outputs away from the base model's, so equality is not the trivial B = 0 case.
"""

from __future__ import annotations

import json
import os

import peft
import pytest
import torch
from helpers import FAMILIES, tiny
from safetensors.torch import save_file

from experiments import export_peft
from lora_repro.interop.peft import AdapterError, export_adapter, load_adapter
from lora_repro.methods import apply_method, lora, method_state_dict
from lora_repro.methods.lora import LoRALinear
from lora_repro.models import load_model
from lora_repro.paths import REPO_ROOT
from lora_repro.schemas import ConfigError
from lora_repro.store import RunStore, new_record

ATOL = 1e-5
# Suite configs exercising per-target ranks (rank_pattern), all weight types (W_o vs MLP out share the
# suffix output.dense in BERT-type models) and GPT-2's sliced q/v with different scalings.
EXPORT_CFGS = {
    "bert": {"targets": ["q", "v"], "r": 4, "alpha": 8},
    "roberta": {"targets": ["q", "k", "v", "o", "mlp"], "r": {"q": 2, "k": 4, "v": 4, "o": 2, "mlp": 3}, "alpha": 8},
    "deberta-v2": {"targets": ["q", "v", "o"], "r": 4, "alpha": 16},
    "gpt2": {"targets": ["q", "v"], "r": {"q": 2, "v": 4}, "alpha": 8},
    "llama": {"targets": ["q", "v", "mlp"], "r": 4, "alpha": 8},
}
# PEFT configs exercising its own options: rank/alpha patterns, rsLoRA, modules_to_save, fused c_attn.
IMPORT_CFGS = {
    "bert": dict(target_modules=["query", "value"], r=4, lora_alpha=8, modules_to_save=["bert.pooler"]),
    "roberta": dict(target_modules=["query", "value", "dense"], r=4, lora_alpha=8, rank_pattern={"value": 2},
                    alpha_pattern={"value": 6}),
    "deberta-v2": dict(target_modules=["query_proj", "value_proj"], r=4, lora_alpha=8, use_rslora=True),
    "gpt2": dict(target_modules=["c_attn", "c_fc"], r=4, lora_alpha=8, fan_in_fan_out=True),
    "llama": dict(target_modules=["q_proj", "v_proj", "up_proj"], r=4, lora_alpha=16, use_rslora=True,
                  layers_to_transform=[1]),
}
TASK_TYPES = {"seq_cls": "SEQ_CLS", "causal_lm": "CAUSAL_LM"}


def batch() -> dict:
    ids = torch.tensor([[5, 17, 42, 99, 3, 60, 61], [7, 8, 9, 10, 11, 0, 0]])
    return {"input_ids": ids, "attention_mask": torch.tensor([[1] * 7, [1] * 5 + [0] * 2])}


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**batch()).logits


def randomize(tensors, seed: int = 1, std: float = 0.5) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in tensors:
            tensor.add_(torch.randn(tensor.shape, generator=gen) * std)


def suite_lora(family: str):
    """A tiny model with the suite's LoRA, random B and a perturbed head (what a trained run holds)."""
    model = tiny(family).model
    apply_method(model, {"name": "lora", "dropout": 0.0, "init": "kaiming", **EXPORT_CFGS[family]})
    randomize(p for n, p in model.named_parameters() if p.requires_grad)  # B, A and the head
    return model.eval()


def assert_same_and_adapted(got: torch.Tensor, want: torch.Tensor, base: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert (want - base).abs().max() > 1e-3  # the adapter really changes the outputs


# --- out -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_export_loads_in_peft_with_the_suite_outputs(family, tmp_path):
    model = suite_lora(family)
    folder = export_adapter(model, tmp_path / "adapter")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    base = tiny(family).model
    base_logits = logits(base)
    loaded = peft.PeftModel.from_pretrained(base, str(folder))
    assert_same_and_adapted(logits(loaded), logits(model), base_logits)


def test_gpt2_fused_export_is_block_structured(tmp_path):
    """c_attn: r' = r_q + r_v, A stacked, B block-diagonal in the q and v thirds, alpha'/r' = alpha/r_q."""
    model = suite_lora("gpt2")
    config = json.loads((export_adapter(model, tmp_path / "a") / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["fan_in_fan_out"]) == (6, 24.0, True)
    layer = peft.PeftModel.from_pretrained(tiny("gpt2").model, str(tmp_path / "a")).base_model.model.transformer.h[0]
    lora_b = layer.attn.c_attn.lora_B["default"].weight
    assert lora_b.shape == (96, 6) and torch.count_nonzero(lora_b[32:64]) == 0  # W_k rows stay zero
    assert torch.count_nonzero(lora_b[:32, 2:]) == 0 and torch.count_nonzero(lora_b[64:, :2]) == 0


def test_export_refuses_a_model_without_lora_and_a_used_folder(tmp_path):
    with pytest.raises(AdapterError, match="no suite LoRA layers"):
        export_adapter(tiny("bert").model, tmp_path / "a")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "old.txt").write_text("x")
    with pytest.raises(AdapterError, match="not empty"):
        export_adapter(suite_lora("bert"), tmp_path / "used")


# --- the command -----------------------------------------------------------------------------------


def stored_run(family: str, tmp_path, method: str = "lora", save: bool = True) -> dict:
    """A record in the test store whose saved weights are a suite LoRA (random B, perturbed head)."""
    task = {"name": "sst2", "kind": "glue"} if FAMILIES[family] == "seq_cls" else {"name": "e2e", "kind": "nlg"}
    config = {"experiment_name": "peft_test", "seed": 0, "task": task, "scale": "smoke", "train": {"cls_dropout": None},
              "model": {"name": f"tiny_{family}", "source": "tiny", "family": family},
              "method": {"name": method, "dropout": 0.0, "init": "kaiming", **EXPORT_CFGS[family]}}
    weights = tmp_path / "weights.safetensors"
    if save:
        save_file(method_state_dict(suite_lora(family)), str(weights))
    record = new_record(config, experiment="peft_test", task=task["name"], model=f"tiny_{family}", method=method,
                        seed=0, scale="smoke", epochs=[], best={}, best_epoch=None,
                        params={"trainable": 0, "trainable_with_head": 0, "total": 0}, timing={}, memory={},
                        checkpoint={"path": os.path.relpath(weights, REPO_ROOT)}, status="completed", env={})
    RunStore().write(record)
    return record


@pytest.mark.parametrize("family", ["roberta", "gpt2"])
def test_export_command_by_key_and_by_path(family, tmp_path, store_root):
    record = stored_run(family, tmp_path)
    assert export_peft.main([record["key"], str(tmp_path / "by_key")]) == 0
    path = store_root / "runs" / "peft_test" / f"{record['key']}.json"
    assert export_peft.main([str(path), str(tmp_path / "by_path")]) == 0
    kind = FAMILIES[family]
    base = load_model(record["config"]["model"], kind, num_labels=2 if kind == "seq_cls" else None).model
    base_logits = logits(base)
    loaded = peft.PeftModel.from_pretrained(base, str(tmp_path / "by_key"))
    assert_same_and_adapted(logits(loaded), logits(suite_lora(family)), base_logits)
    assert (tmp_path / "by_path" / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "by_key" / "adapter_model.safetensors").read_bytes()


@pytest.mark.parametrize("case, message", [
    ("unknown_key", "no run with key"), ("not_a_key", "neither a record .json path"),
    ("no_weights", "saved its weights to"), ("bitfit", "is a bitfit run"),
])
def test_export_command_refuses_bad_input_in_one_line(case, message, tmp_path, store_root, capsys):
    ref = {"unknown_key": "0123456789abcdef", "not_a_key": "nonsense"}.get(case)
    if ref is None:
        ref = stored_run("bert", tmp_path, method="bitfit" if case == "bitfit" else "lora", save=False)["key"]
    assert export_peft.main([ref, str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Fix" in err.replace("fix", "Fix")
    assert not (tmp_path / "out").exists()


# --- in --------------------------------------------------------------------------------------------


def peft_saved(family: str, folder, **overrides) -> torch.Tensor:
    """Save a PEFT adapter (random B, perturbed head) from a tiny model; return PEFT's logits."""
    config = peft.LoraConfig(task_type=TASK_TYPES[FAMILIES[family]], **{**IMPORT_CFGS[family], **overrides})
    model = peft.get_peft_model(tiny(family).model, config)
    randomize(p for n, p in model.named_parameters() if "lora_B" in n or "modules_to_save" in n)
    model.save_pretrained(str(folder))
    return logits(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_import_of_a_peft_saved_adapter_gives_peft_outputs(family, tmp_path):
    want = peft_saved(family, tmp_path / "adapter")
    model = tiny(family).model
    base_logits = logits(model)
    adapted = load_adapter(model, str(tmp_path / "adapter"))
    assert adapted and all(isinstance(model.get_submodule(name), LoRALinear) for name in adapted)
    assert not [n for n, m in model.named_modules() if type(m).__module__.startswith("peft")]
    assert_same_and_adapted(logits(model), want, base_logits)
    lora.merge(model)  # the suite's own operations work on imported layers
    torch.testing.assert_close(logits(model), want, atol=ATOL, rtol=0)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n, _ in model.named_parameters() if ".lora_" in n}


def test_import_then_export_round_trips_through_the_suite(tmp_path):
    want = peft_saved("gpt2", tmp_path / "a")
    model = tiny("gpt2").model
    load_adapter(model, str(tmp_path / "a"))
    loaded = peft.PeftModel.from_pretrained(tiny("gpt2").model, str(export_adapter(model, tmp_path / "b")))
    torch.testing.assert_close(logits(loaded), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("overrides, message", [
    ({"use_dora": True}, "use_dora"), ({"lora_bias": True}, "lora_bias"),
])
def test_import_refuses_what_the_suite_layer_cannot_compute(overrides, message, tmp_path):
    peft_saved("llama", tmp_path / "a", **overrides)
    model = tiny("llama").model
    with pytest.raises(AdapterError, match=message):
        load_adapter(model, str(tmp_path / "a"))
    assert not lora.lora_layers(model)  # refused before any change


def test_import_refuses_a_missing_folder_offline(tmp_path):
    with pytest.raises(AdapterError, match="hub is offline"):
        load_adapter(tiny("gpt2").model, str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match=r"no adapter_config\.json"):
        load_adapter(tiny("gpt2").model, str(tmp_path / "empty"))


def test_method_peft_adapter_gives_a_trainable_suite_run(tmp_path):
    """method=peft_adapter (conf/method/peft_adapter.yaml) applies the adapter; the head and LoRA train on."""
    from lora_repro import methods
    from lora_repro.config import group_option

    want = peft_saved("roberta", tmp_path / "a")
    model = tiny("roberta").model
    handle = methods.apply_method(model, {"name": "peft_adapter", "path": str(tmp_path / "a"), "dropout": None})
    torch.testing.assert_close(logits(model), want, atol=ATOL, rtol=0)
    counts = methods.count_params(model, handle.spec)
    lora_count = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    assert counts["trainable_params"] == lora_count > 0
    assert counts["trainable_params_with_head"] > lora_count  # the classifier trains on, as with method=lora
    model.train()(**batch(), labels=torch.tensor([0, 1])).loss.backward()  # and training on from it works
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in model.parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match=r"method\.path"):  # the preset's `path: ???` must be given
        methods.apply_method(tiny("roberta").model, group_option("method", "peft_adapter"))
