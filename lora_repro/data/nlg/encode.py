"""Encoding NLG examples as the paper's code does, caching the encoded splits, and batching them.

``gpt2_encode.py --add_bos --add_eos`` -> :func:`encode_pair`. The layout is
``enc(context) + [bos] + enc(" " + completion) + [eos]``: the "bos" is *appended to the context*
and acts as the separator (nothing precedes the context), the completion is encoded with a leading
space, and GPT-2's bos and eos are the same id, 50256. ``data_utils.FT_Dataset`` -> loss only on
completion tokens (labels -100 on the prompt and the padding); sequences longer than
``max_length`` keep their first tokens (see :func:`encode_pair`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import torch
from torch.utils.data import DataLoader

from lora_repro.data.batching import make_batches
from lora_repro.data.cache import flat_rows, load_or_build, source_identity, tokenizer_fingerprint
from lora_repro.data.nlg.groups import InputGroup, context_of, subset_examples
from lora_repro.data.nlg.read import NLGExample, check_dataset, load_examples, normalise_split, source_path

IGNORE_INDEX = -100
CACHE_FORMAT_VERSION = 2  # bump when the encoding layout changes, so stale caches are not reused

Features = list[dict[str, list[int]]]


def separator_id(tokenizer: Any) -> int:
    """The token appended after the context (``--add_bos``): bos, or eos where bos is None.

    GPT-2 has bos = eos = ``<|endoftext|>`` (50256), which is what the LoRA code hard-codes; a
    tokenizer without a bos token gets the same behaviour through its eos.
    """
    token_id = tokenizer.bos_token_id
    if token_id is None:
        token_id = tokenizer.eos_token_id
    if token_id is None:
        raise ValueError(
            f"{type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '')!r}) has neither a "
            "bos nor an eos token. Fix: set tokenizer.eos_token (e.g. '<|endoftext|>')."
        )
    return int(token_id)


def _eos_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no eos token, needed for add_eos. Fix: set "
            "tokenizer.eos_token or pass add_eos=False."
        )
    return int(tokenizer.eos_token_id)


def pad_id_for(tokenizer: Any) -> int:
    """Pad with the tokenizer's pad token, else eos (GPT-2 has no pad; padding is masked anyway)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return _eos_id(tokenizer)


def _encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens (the LoRA encoder adds none), batched for speed."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _assemble(
    context_ids: list[int],
    completion_ids: list[int],
    max_length: int | None,
    sep: int | None,
    eos: int | None,
) -> dict[str, list[int]]:
    prompt = context_ids + ([sep] if sep is not None else [])
    target = completion_ids + ([eos] if eos is not None else [])
    input_ids = prompt + target
    labels = [IGNORE_INDEX] * len(prompt) + target
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def encode_pair(
    tokenizer: Any,
    context: str,
    completion: str,
    max_length: int | None = None,
    add_bos: bool = True,
    add_eos: bool = True,
) -> dict[str, list[int]]:
    """Training ids as gpt2_encode.py + FT_Dataset build them; loss only on the completion.

    ``input_ids = enc(context) + [bos] + enc(" " + completion) + [eos]`` and ``labels`` are -100 on
    ``enc(context) + [bos]`` (the prompt, :func:`encode_prompt`) and the ids elsewhere; the model
    shifts labels itself. Truncation keeps the first ``max_length`` tokens, as FT_Dataset does:
    the prompt then stays identical to the one used at generation (cutting the context from the
    left would drop the leading ``name : ...`` slot the model is asked about), and only the
    completion's tail is lost. An example whose prompt fills ``max_length`` has no label left.
    """
    context_ids, completion_ids = _encode_texts(tokenizer, [context, " " + completion])
    sep = separator_id(tokenizer) if add_bos else None
    eos = _eos_id(tokenizer) if add_eos else None
    return _assemble(context_ids, completion_ids, max_length, sep, eos)


def encode_prompt(
    tokenizer: Any, context: str, add_bos: bool = True, max_length: int | None = None
) -> list[int]:
    """Generation prefix: ``enc(context) + [bos]``, i.e. the training input up to the completion.

    With ``max_length`` the prompt keeps its *last* tokens, as the repo's beam query does (its
    length is seq_len - eval_len), so it still ends with the separator.
    """
    ids = _encode_texts(tokenizer, [context])[0]
    if add_bos:
        ids.append(separator_id(tokenizer))
    if max_length is not None and len(ids) > max_length:
        ids = ids[len(ids) - max_length:]
    return ids


def encode_prompts(
    tokenizer: Any,
    groups: Sequence[InputGroup] | Sequence[tuple[str, Sequence[str]]],
    add_bos: bool = True,
    max_length: int | None = None,
) -> list[list[int]]:
    """:func:`encode_prompt` for each unique input (batched)."""
    contexts = [context_of(g) for g in groups]
    sep = separator_id(tokenizer) if add_bos else None
    prompts = []
    for ids in _encode_texts(tokenizer, contexts):
        if sep is not None:
            ids.append(sep)
        if max_length is not None and len(ids) > max_length:
            ids = ids[len(ids) - max_length:]
        prompts.append(ids)
    return prompts


def _pack(features: Features) -> dict[str, torch.Tensor]:
    """Flat tensors (ids, offsets, prompt lengths) store and load much faster than nested lists."""
    ids, offsets = flat_rows([f["input_ids"] for f in features])
    prompt = [sum(1 for lab in f["labels"] if lab == IGNORE_INDEX) for f in features]
    return {"ids": ids, "offsets": offsets, "prompt_lengths": torch.tensor(prompt, dtype=torch.int64)}


def _unpack(packed: dict[str, torch.Tensor]) -> Features:
    ids, bounds = packed["ids"].tolist(), packed["offsets"].tolist()
    out = []
    for (start, end), prompt in zip(pairwise(bounds), packed["prompt_lengths"].tolist(), strict=True):
        seq = ids[start:end]
        out.append({"input_ids": seq, "labels": [IGNORE_INDEX] * prompt + seq[prompt:]})
    return out


def encode_split(
    tokenizer: Any,
    dataset: str,
    split: str,
    max_length: int | None,
    subset_size: int | None = None,
    subset_seed: int = 0,
    data_root: str | os.PathLike | None = None,
    add_bos: bool = True,
    add_eos: bool = True,
) -> Features:
    """Encoded (optionally subsetted) split, cached under ``cache_dir()/nlg/<hash>.pt``.

    The key covers the tokenizer (:func:`lora_repro.data.cache.tokenizer_fingerprint`), dataset,
    split, max_length, subset, bos/eos flags and the source file's size and mtime, so editing the
    data or changing tokenizer re-encodes. Examples left with no completion token by truncation
    carry no loss (and an all -100 batch gives a NaN mean loss), so they are dropped with a warning.
    """
    dataset, split = check_dataset(dataset), normalise_split(split)
    key = {
        "format": CACHE_FORMAT_VERSION,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "dataset": dataset,
        "split": split,
        "max_length": max_length,
        "subset": [subset_size, subset_seed] if subset_size is not None else None,
        "add_bos": add_bos,
        "add_eos": add_eos,
        "source": source_identity(source_path(dataset, split, data_root)),
    }

    def build() -> dict[str, torch.Tensor]:
        examples = subset_examples(load_examples(dataset, split, data_root), subset_size, subset_seed)
        features = encode_examples(tokenizer, examples, max_length, add_bos, add_eos)
        empty = [i for i, f in enumerate(features) if all(lab == IGNORE_INDEX for lab in f["labels"])]
        if empty:
            warnings.warn(
                f"{dataset} {split}: {len(empty)} of {len(features)} examples have no completion token "
                f"left at max_length={max_length} and were dropped. Fix: raise max_length.",
                stacklevel=4,  # the caller of encode_split (build <- load_or_build <- encode_split)
            )
            dropped = set(empty)
            features = [f for i, f in enumerate(features) if i not in dropped]
        return _pack(features)

    return _unpack(load_or_build("nlg", key, build)[0])


def encode_examples(
    tokenizer: Any,
    examples: Sequence[NLGExample],
    max_length: int | None = None,
    add_bos: bool = True,
    add_eos: bool = True,
) -> list[dict[str, list[int]]]:
    """:func:`encode_pair` over many examples, with one batched tokenizer call (no cache)."""
    sep = separator_id(tokenizer) if add_bos else None
    eos = _eos_id(tokenizer) if add_eos else None
    contexts = _encode_texts(tokenizer, [ex.context for ex in examples])
    completions = _encode_texts(tokenizer, [" " + ex.completion for ex in examples])
    return [_assemble(c, t, max_length, sep, eos) for c, t in zip(contexts, completions, strict=True)]


def collate(
    features: Sequence[dict[str, Sequence[int]]], pad_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest sequence: input_ids with ``pad_id``, labels with -100.

    Right padding for training; left padding for batched generation from prompts (features
    without ``labels`` give no labels tensor).
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if not features:
        raise ValueError("cannot collate an empty batch")
    width = max(len(f["input_ids"]) for f in features)
    has_labels = all("labels" in f for f in features)
    ids, mask, labels = [], [], []
    for f in features:
        n = len(f["input_ids"])
        ids.append(_pad(f["input_ids"], pad_id, width - n, padding_side))
        mask.append(_pad([1] * n, 0, width - n, padding_side))
        if has_labels:
            labels.append(_pad(f["labels"], IGNORE_INDEX, width - n, padding_side))
    batch = {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "attention_mask": torch.tensor(mask, dtype=torch.long),
    }
    if has_labels:
        batch["labels"] = torch.tensor(labels, dtype=torch.long)
    return batch


def _pad(seq: Sequence[int], value: int, fill: int, padding_side: str) -> list[int]:
    return list(seq) + [value] * fill if padding_side == "right" else [value] * fill + list(seq)


class Collator:
    """A DataLoader ``collate_fn`` bound to a tokenizer's pad id (pad token, else eos)."""

    def __init__(self, tokenizer: Any, padding_side: str = "right") -> None:
        self.pad_id = pad_id_for(tokenizer)
        self.padding_side = padding_side

    def __call__(self, features: Sequence[dict[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        return collate(features, self.pad_id, self.padding_side)


def make_loader(
    features: Features,
    batch_size: int,
    collate: Collator,
    shuffle: bool = False,
    seed: int = 0,
    group_by_length: bool = False,
) -> DataLoader:
    """Batches of encoded examples, each padded by ``collate``, in the shared batch order.

    The order is :class:`lora_repro.data.batching.LengthGroupedBatches` with the ``python`` stream
    (the one the committed E2E/WebNLG/DART records were trained with, when not grouped by length).
    """
    lengths = torch.tensor([len(f["input_ids"]) for f in features], dtype=torch.long)
    return make_batches(
        features, lengths, collate, batch_size,
        shuffle=shuffle, seed=seed, group_by_length=group_by_length, stream="python",
    )
