"""Tiny random models and a tokenizer built in code, for the smoke scale and the tests.

Shapes follow the real families (BERT, RoBERTa, DeBERTa-v2, GPT-2 with its fused Conv1D c_attn,
Llama with GQA) so every method meets the same module layout it meets at paper scale. The tokenizer
is byte-level with no merges: it handles any text, needs no files, and is built in milliseconds.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoConfig, PreTrainedTokenizerFast

ENCODER_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
DECODER_SPECIALS = ["<|endoftext|>"]

# Small enough for milliseconds per step, large enough for every code path (heads, GQA, >1 layer).
TINY_SHAPES: dict[str, dict] = {
    "bert": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    "roberta": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    "deberta-v2": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16, max_relative_positions=64,
    ),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=256),
    "llama": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=256, tie_word_embeddings=True,
    ),
}

DECODER_FAMILIES = ("gpt2", "llama")


def build_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with the special tokens the family expects."""
    decoder_only = family in DECODER_FAMILIES
    specials = DECODER_SPECIALS if decoder_only else ENCODER_SPECIALS
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(specials + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None if decoder_only else "[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if decoder_only:
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
        )
    else:
        cls, sep = vocab["[CLS]"], vocab["[SEP]"]
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
            sep_token="[SEP]", mask_token="[MASK]",
        )
    fast.name_or_path = f"tiny-{family}"
    return fast


def tiny_config(family: str, tokenizer: PreTrainedTokenizerFast, **overrides):
    """A transformers config of the family's tiny shape, sized to the tokenizer."""
    if family not in TINY_SHAPES:
        raise ValueError(f"no tiny shape for family {family!r}; known: {sorted(TINY_SHAPES)}")
    shape = {**TINY_SHAPES[family], **overrides}
    ids = dict(pad_token_id=tokenizer.pad_token_id)
    if family in DECODER_FAMILIES:
        ids.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return AutoConfig.for_model(family, vocab_size=len(tokenizer), **ids, **shape)
