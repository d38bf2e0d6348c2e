"""Typed run configs: one dataclass per config group, the schema of the YAML files under conf/.

Each schema is registered in Hydra's ConfigStore (`register()`, group `schema`) and named at the
top of the YAML files it types (`defaults: [/schema/lora@_here_, _self_]`), so a wrong type or an
unknown key fails at compose time with Hydra's message naming the key. The dataclass field
defaults are the only defaults: library code reads typed fields, never `cfg.get(key, default)`.
A method variant (adapter_h/l/p/d, prefix_embed/layer) is a preset: a YAML file of values for its
family's schema.

Range checks live in `__post_init__`; they run when a config is turned into these objects
(`config.validate`, `typed`), after the protocol's values are merged, and raise `ConfigError`
with one line naming the key and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

# attn_out / ffn_out: on the attention / FFN output projection, before the residual add (Houlsby);
# ffn_add_norm: on the FFN sublayer's add & norm (Pfeiffer); block_out: on the block's output (Lin).
# lora_repro/methods/adapters.py states each one's equations and sources.
ADAPTER_SITES = ("attn_out", "ffn_out", "ffn_add_norm", "block_out")
BLOCK_OUTPUT_SITES = ("ffn_add_norm", "block_out")  # both adapt the block output of a pre-LN block
LORA_TARGETS = ("q", "k", "v", "o", "mlp")
LORA_INITS = ("gaussian", "kaiming")
ADAPTER_ACTIVATIONS = ("relu", "gelu", "swish", "tanh")
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
ATTENTION_KERNELS = (None, "sdpa", "eager")


class ConfigError(ValueError):
    """A run config that cannot run; the message names the key and the fix."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class TrainConfig:
    """The optimisation and data-loading knobs of one run (defaults: the suite's, not a protocol's)."""

    lr: float = 5e-4
    epochs: int = 3
    batch_size: int = 16  # global batch size (the paper's tables); the LoRA repo's scripts: per device x 8 GPUs
    eval_batch_size: int = 64
    max_length: int = 128
    warmup_ratio: float = 0.06  # used when warmup_steps is 0
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-6
    grad_clip: float = 0.0  # 0: no clipping (the LoRA repo's setting)
    label_smoothing: float = 0.0  # causal LM loss only (Table 11)
    cls_dropout: float | None = None  # null: the model's own classifier dropout
    train_subset: int | None = None  # null: all training rows; an int: a seeded random subset
    eval_subset: int | None = None
    subset_seed: int = 0
    max_steps: int | None = None  # cap on optimizer steps (null: epochs x batches)
    group_by_length: bool = True  # batch similar lengths together (less padding; still shuffled)
    num_threads: int | None = None  # torch threads (null: torch's default)
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 (autocast; CPU with AVX512-BF16 or CUDA) | fp16 (CUDA, grad scaler)
    compile: bool = False  # torch.compile the training forward (evaluation and decoding stay eager)
    fast_dropout: bool = False  # CPU dropout masks from 16-bit slices of 64-bit draws (lora_repro/dropout.py)
    save_weights: bool = True  # save the method-only state dict next to the record's key
    init_from_task: str | None = None  # e.g. mnli: start the method weights from that task's run
    checkpoint_every: int | None = None  # resume state every N optimizer steps (null/0: off); not in the run key

    def __post_init__(self) -> None:
        _require(self.lr > 0, f"train.lr must be > 0, got {self.lr}; e.g. train.lr=5e-4")
        for key in ("batch_size", "eval_batch_size", "max_length"):
            value = getattr(self, key)
            _require(_is_int(value) and value >= 1, f"train.{key} must be an integer >= 1, got {value!r}")
        _require(_is_int(self.epochs) and self.epochs >= 0,
                 f"train.epochs must be an integer >= 0 (0: evaluate the untrained model), got {self.epochs!r}")
        _require(self.max_steps is None or self.max_steps >= 1,
                 f"train.max_steps must be null (epochs x batches) or >= 1, got {self.max_steps}")
        for key in ("train_subset", "eval_subset", "num_threads"):
            value = getattr(self, key)
            _require(value is None or value >= 1, f"train.{key} must be null or >= 1, got {value}")
        _require(0 <= self.warmup_ratio <= 1, f"train.warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        _require(self.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        _require(self.checkpoint_every is None or (_is_int(self.checkpoint_every) and self.checkpoint_every >= 0),
                 f"train.checkpoint_every must be null/0 (off) or a step count >= 1, got {self.checkpoint_every!r}")
        _require(self.grad_clip >= 0, f"train.grad_clip must be >= 0 (0: no clipping), got {self.grad_clip}")
        _require(len(self.adam_betas) == 2, f"train.adam_betas must hold two numbers, got {self.adam_betas}")
        _require(self.device in DEVICES, f"train.device must be one of {DEVICES}, got {self.device!r}")
        _require(self.precision in PRECISIONS, f"train.precision={self.precision!r} is not one of {PRECISIONS}")


@dataclass
class MethodConfig:
    """What every method config holds: its registry name and an optional table label."""

    name: str = MISSING
    label: str | None = None  # a preset's name in tables (e.g. adapter_h_6m); null: `name`

    @property
    def display_name(self) -> str:
        return self.label or self.name


@dataclass
class FineTuneConfig(MethodConfig):
    """none, full, ft_top2, bitfit: which of the model's own weights train."""

    top_k: int | None = None  # ft_top2: the last top_k blocks train

    def __post_init__(self) -> None:
        _require(self.top_k is None or self.top_k >= 1, f"method.top_k must be >= 1, got {self.top_k}")


@dataclass
class LoRAConfig(MethodConfig):
    """LoRA: ΔW = (alpha / r) B A on each target weight. alpha is always given (never derived from r)."""

    targets: list[str] = field(default_factory=lambda: ["q", "v"])
    r: Any = 8  # an int, or one per target: {q: 8, v: 4}
    alpha: float = 8.0
    dropout: float = 0.0
    init: str = "gaussian"  # gaussian (paper text) | kaiming (loralib, PEFT)
    init_std: float = 0.02

    def __post_init__(self) -> None:
        _require(len(self.targets) > 0, f"method.targets is empty; choose some of {LORA_TARGETS}, e.g. [q,v]")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        _require(not unknown, f"method.targets has unknown {unknown}; choose from {LORA_TARGETS}")
        ranks = self.r if isinstance(self.r, Mapping) else {t: self.r for t in self.targets}
        missing = [t for t in self.targets if t not in ranks]
        _require(not missing, f"method.r has no rank for target(s) {missing}; give r as an int or one per target")
        bad = {t: v for t, v in ranks.items() if not (_is_int(v) and v >= 1)}
        _require(not bad, f"method.r must be an integer >= 1 (or one per target), got {bad or self.r}")
        _require(self.alpha > 0, f"method.alpha must be > 0 (the scaling is alpha / r), got {self.alpha}")
        _require(0 <= self.dropout < 1, f"method.dropout must be in [0, 1), got {self.dropout}")
        _require(self.init in LORA_INITS, f"method.init={self.init!r} is not one of {LORA_INITS}")
        _require(self.init_std > 0, f"method.init_std must be > 0, got {self.init_std}")

    def ranks(self) -> dict[str, int]:
        """The rank of each target."""
        return {t: int(self.r[t] if isinstance(self.r, Mapping) else self.r) for t in self.targets}


@dataclass
class AdapterConfig(MethodConfig):
    """Bottleneck adapters; the Houlsby/Lin/Pfeiffer/AdapterDrop variants are presets of these values."""

    bottleneck: int = MISSING
    placement: list[str] = field(default_factory=lambda: ["attn_out", "ffn_out"])  # any of ADAPTER_SITES
    layer_norm: bool = False  # a LayerNorm of its own on the adapter input (Lin et al.)
    activation: str = "relu"
    drop_layers: int = 0  # AdapterDrop, static: no adapters in the lowest drop_layers blocks
    random_drop_max: int = 0  # Robust AdapterDrop: each training batch skips the lowest k blocks' adapters, k~U{0..max}
    eval_drop_layers: int = 0  # AdapterDrop at inference: evaluation skips the lowest eval_drop_layers blocks' adapters
    init_std: float = 0.01  # std of the down-projection init

    def __post_init__(self) -> None:
        _require(_is_int(self.bottleneck) and self.bottleneck >= 1,
                 f"method.bottleneck must be an integer >= 1, got {self.bottleneck!r}")
        bad = [p for p in self.placement if p not in ADAPTER_SITES]
        _require(bool(self.placement) and not bad,
                 f"method.placement must be a non-empty list of {ADAPTER_SITES}, got {self.placement}")
        _require(len([p for p in self.placement if p in BLOCK_OUTPUT_SITES]) <= 1,
                 f"method.placement={self.placement} holds more than one of {BLOCK_OUTPUT_SITES}, which both adapt "
                 "the block output of GPT-2/Llama blocks; keep one")
        _require(self.activation in ADAPTER_ACTIVATIONS,
                 f"method.activation={self.activation!r} is not one of {ADAPTER_ACTIVATIONS}")
        for key in ("drop_layers", "random_drop_max", "eval_drop_layers"):
            value = getattr(self, key)
            _require(_is_int(value) and value >= 0, f"method.{key} must be an integer >= 0, got {value!r}")
        _require(not (self.random_drop_max and self.drop_layers),
                 f"method.random_drop_max={self.random_drop_max} trains adapters in every block, but drop_layers="
                 f"{self.drop_layers} removes the lowest ones; set method.drop_layers=0 (eval_drop_layers drops "
                 "adapters at inference)")
        _require(self.init_std > 0, f"method.init_std must be > 0, got {self.init_std}")


@dataclass
class PrefixConfig(MethodConfig):
    """PreEmbed (per_layer false) and PreLayer (per_layer true): l_p prefix + l_i infix virtual tokens."""

    prefix_length: int = MISSING  # l_p
    infix_length: int = 0  # l_i
    per_layer: bool = False  # true: trainable activations at every block (PreLayer); false: embeddings only
    init_std: float = 0.02

    def __post_init__(self) -> None:
        lengths = (self.prefix_length, self.infix_length)
        _require(min(lengths) >= 0 and sum(lengths) >= 1,
                 f"method.prefix_length and method.infix_length must be >= 0 and not both 0, got {lengths}")
        _require(self.init_std > 0, f"method.init_std must be > 0, got {self.init_std}")


@dataclass
class PeftAdapterConfig(MethodConfig):
    """An existing PEFT LoRA adapter (folder or hub id), applied as the suite's LoRA layers."""

    path: str = MISSING
    dropout: float | None = None  # null: the adapter's own lora_dropout

    def __post_init__(self) -> None:
        _require(bool(self.path), "method.path is empty; give method.path=<PEFT adapter folder or hub id>")
        _require(self.dropout is None or 0 <= self.dropout < 1, f"method.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class GlueTaskConfig:
    name: str = MISSING
    kind: str = "glue"


@dataclass
class DecodeConfig:
    """Beam search at test time (Table 11) and which test inputs to decode."""

    num_beams: int = 10
    length_penalty: float = 0.9
    no_repeat_ngram_size: int = 4
    max_new_tokens: int = 64
    batch_size: int = 8
    test_inputs: int | None = None  # null: every unique test input; an int: the first N
    test_seed: int | None = None  # null: the first N in file order; an int: a seeded sample of N


@dataclass
class NLGTaskConfig:
    name: str = MISSING
    kind: str = "nlg"
    dataset: str = MISSING
    train_split: str = "train"
    eval_split: str = "valid"
    test_split: str = "test"
    metric: str = MISSING  # e2e (the E2E scorer) | generation (the WebNLG/DART scorers)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


@dataclass
class ModelConfig:
    """A model: built in code (tiny), from an installed package, from the hub, or random from its shape."""

    name: str = MISSING
    family: str = MISSING  # the transformers model_type (bert, roberta, deberta-v2, gpt2, llama)
    source: str = MISSING  # tiny | package | hub | shape
    hub_id: str | None = None
    package: str | None = None
    subdir: str | None = None  # the model's folder inside the package
    format: str | None = None  # gguf: the package ships a GGUF file, converted once
    gguf_file: str | None = None
    shape: dict[str, Any] | None = None  # config values for random weights (params, latency)
    # transformers' attention kernel: null keeps its default (sdpa where the model has it; DeBERTa-v2: eager);
    # eager: matmul + softmax, 0.82-0.92x sdpa's training step here (make bench-step; CHANGELOG): on MiniLM
    # under dropout sdpa runs its math path, on SmolLM2 (no dropout) its flash backward was the cost
    attn_implementation: str | None = None

    def __post_init__(self) -> None:
        _require(self.attn_implementation in ATTENTION_KERNELS,
                 f"model.attn_implementation={self.attn_implementation!r} is not one of {ATTENTION_KERNELS}")


@dataclass
class NoLoggerConfig:
    name: str = "none"


@dataclass
class WandbConfig:
    name: str = "wandb"
    project: str = "lora-repro"
    entity: str | None = None
    mode: str | None = None  # null: online with a key, offline without; or online | offline | disabled
    dir: str | None = None  # null: wandb's default (./wandb)


SCHEMAS: dict[str, type] = {
    "train": TrainConfig, "finetune": FineTuneConfig, "lora": LoRAConfig, "adapter": AdapterConfig,
    "prefix": PrefixConfig, "peft_adapter": PeftAdapterConfig, "glue_task": GlueTaskConfig,
    "nlg_task": NLGTaskConfig, "model": ModelConfig,
    "no_logger": NoLoggerConfig, "wandb": WandbConfig,
}


def register() -> None:
    """Store every schema in Hydra's ConfigStore as `schema/<name>` (idempotent)."""
    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(group="schema", name=name, node=node)


def typed(schema: type, values: Mapping[str, Any], where: str) -> Any:
    """`values` as a `schema` object: types checked by OmegaConf, ranges by `__post_init__`.

    Unknown keys and wrong types become one-line `ConfigError`s naming `where.<key>`.
    """
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), dict(values)))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"{where}.{key}: {getattr(err, 'msg', err)}".splitlines()[0]) from None
