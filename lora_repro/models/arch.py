"""Where each architecture keeps the weights the paper talks about.

Methods never hard-code an architecture: they ask an `ArchSpec` for the transformer blocks and,
inside a block, for W_q, W_k, W_v, W_o, the MLP projections and the layer norms. GPT-2 is the odd
one out: q, k and v live in one fused Conv1D (`c_attn`, weight stored as (in, out)), so the spec
names the fused module and the slice each projection occupies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

# Weight-type names used in configs (paper Sec. 7.1 / Table 5).
ATTENTION_TYPES = ("q", "k", "v", "o")
WEIGHT_TYPES = (*ATTENTION_TYPES, "mlp")


@dataclass(frozen=True)
class ArchSpec:
    """Module paths for one architecture family, relative to the task model's root.

    blocks: dotted path to the ModuleList of transformer blocks.
    attn: relative path (inside a block) of each of q, k, v, o; for a fused qkv projection the three
        share one path and `fused_qkv` is True.
    mlp_in: the MLP's input projections (several for Llama: gate and up).
    attn_out / ffn_out: the attention and MLP output projections (LoRA's o and mlp targets; adapters
        adapt their outputs).
    norms: the layer norms inside a block.
    out_norm: post-LN blocks (BERT family) only: the LayerNorm that closes the FFN sublayer, LN(x + FFN(x)),
        whose output is the block's output; None for pre-LN blocks (GPT-2, Llama), whose FFN sublayer ends
        in the residual add (Pfeiffer's adapter reads that add & norm).
    embeddings: the token embedding module.
    head: top-level modules that make the task head (trained by every method, excluded from the
        paper's trainable-parameter count).
    """

    family: str
    blocks: str
    attn: dict[str, str]
    mlp_in: tuple[str, ...]
    attn_out: str
    ffn_out: str
    norms: tuple[str, ...]
    embeddings: str
    head: tuple[str, ...] = field(default=())
    fused_qkv: bool = False
    conv1d: bool = False  # weights stored (in, out), transformers' Conv1D (GPT-2): the analysis and PEFT export read it
    out_norm: str | None = None


_BERT_BLOCK = dict(
    attn={
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "o": "attention.output.dense",
    },
    mlp_in=("intermediate.dense",),
    attn_out="attention.output.dense",
    ffn_out="output.dense",
    norms=("attention.output.LayerNorm", "output.LayerNorm"),
    out_norm="output.LayerNorm",
)

SPECS: dict[str, ArchSpec] = {
    # BERT-type (MiniLM): the pooler belongs to the trained head, as RoBERTa's head includes its dense layer.
    "bert": ArchSpec(
        family="bert",
        blocks="bert.encoder.layer",
        embeddings="bert.embeddings.word_embeddings",
        head=("bert.pooler", "classifier"),
        **_BERT_BLOCK,
    ),
    "roberta": ArchSpec(
        family="roberta",
        blocks="roberta.encoder.layer",
        embeddings="roberta.embeddings.word_embeddings",
        head=("classifier",),
        **_BERT_BLOCK,
    ),
    "deberta-v2": ArchSpec(
        family="deberta-v2",
        blocks="deberta.encoder.layer",
        embeddings="deberta.embeddings.word_embeddings",
        head=("pooler", "classifier"),
        **{**_BERT_BLOCK, "attn": {
            "q": "attention.self.query_proj",
            "k": "attention.self.key_proj",
            "v": "attention.self.value_proj",
            "o": "attention.output.dense",
        }},
    ),
    # GPT-2: lm_head is tied to the token embedding, so there is no separate head to train.
    "gpt2": ArchSpec(
        family="gpt2",
        blocks="transformer.h",
        embeddings="transformer.wte",
        attn={"q": "attn.c_attn", "k": "attn.c_attn", "v": "attn.c_attn", "o": "attn.c_proj"},
        mlp_in=("mlp.c_fc",),
        attn_out="attn.c_proj",
        ffn_out="mlp.c_proj",
        norms=("ln_1", "ln_2"),
        fused_qkv=True,
        conv1d=True,
    ),
    "llama": ArchSpec(
        family="llama",
        blocks="model.layers",
        embeddings="model.embed_tokens",
        attn={"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj"},
        mlp_in=("mlp.gate_proj", "mlp.up_proj"),
        attn_out="self_attn.o_proj",
        ffn_out="mlp.down_proj",
        norms=("input_layernorm", "post_attention_layernorm"),
    ),
}

QKV_SLICE = {"q": 0, "k": 1, "v": 2}  # position of each projection inside a fused qkv output


class UnknownArchitectureError(ValueError):
    """The model's architecture has no ArchSpec."""


def spec_for(model: nn.Module) -> ArchSpec:
    """The ArchSpec for a transformers model (by config.model_type)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SPECS:
        raise UnknownArchitectureError(
            f"no architecture map for model_type={model_type!r}; known: {sorted(SPECS)}. "
            "Fix: add an ArchSpec for it in lora_repro/models/arch.py."
        )
    return SPECS[model_type]


def blocks(model: nn.Module, spec: ArchSpec) -> nn.ModuleList:
    return model.get_submodule(spec.blocks)


def block_linears(block: nn.Module, spec: ArchSpec, weight_type: str) -> list[str]:
    """Relative module paths inside a block for one weight type ('q', 'k', 'v', 'o' or 'mlp')."""
    if weight_type in ATTENTION_TYPES:
        return [spec.attn[weight_type]]
    if weight_type == "mlp":
        return [*spec.mlp_in, spec.ffn_out]
    raise ValueError(f"unknown weight type {weight_type!r}; use one of {WEIGHT_TYPES}")


def is_head_param(name: str, spec: ArchSpec) -> bool:
    """True for parameters of the task head (trained always, not counted by the paper)."""
    return any(name == h or name.startswith(h + ".") for h in spec.head)


def hidden_size(model: nn.Module) -> int:
    config = model.config
    return getattr(config, "hidden_size", None) or config.n_embd


def replace_module(root: nn.Module, path: str, wrap) -> nn.Module:
    """Put ``wrap(current)`` in place of the submodule at dotted ``path`` under ``root``; return it.

    The one way methods insert modules (LoRA layers, adapters), so every method wraps the same way.
    """
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    new = wrap(getattr(parent, child))
    setattr(parent, child, new)
    return new
