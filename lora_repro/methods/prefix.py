"""Prefix-embedding (PreEmbed) and prefix-layer (PreLayer) tuning, as the LoRA paper defines them (Sec. 5.1).

Both insert l_p "prefix" tokens before the input and l_i "infix" tokens after the prompt (for a
classifier: after the input; for generation: between context and completion). PreEmbed learns the
word embeddings of those tokens: |Θ| = d (l_p + l_i). PreLayer learns their activations at the
input of every block instead of letting them be computed: |Θ| = L d (l_p + l_i). Written here
because PEFT's prompt tuning has no infix and its prefix tuning learns key/value pairs (2x the
count); this is the paper's own parametrisation.

The tokens are real positions in the sequence: `prepare_batch` inserts placeholder ids and records
where they are; hooks overwrite the placeholders' embeddings (and, for PreLayer, block inputs).
With a KV cache only the first forward holds the virtual positions; later steps are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lora_repro.models.arch import ArchSpec, blocks, hidden_size
from lora_repro.schemas import PrefixConfig

IGNORE_INDEX = -100


@dataclass
class VirtualPositions:
    """Where the virtual tokens sit in the current batch: index (B, n_virtual), seq_len T."""

    index: torch.Tensor | None = None
    seq_len: int = -1

    def overwrite(self, hidden: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """hidden (B', T, d) with rows of `vectors` (n_virtual, d) written at the virtual positions."""
        if self.index is None or hidden.shape[1] != self.seq_len:
            return hidden
        index = self.index.to(hidden.device)
        if hidden.shape[0] != index.shape[0]:  # beam search expands each row num_beams times
            index = index.repeat_interleave(hidden.shape[0] // index.shape[0], dim=0)
        index = index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        values = vectors.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
        return hidden.scatter(1, index, values)


class PrefixEmbedding(nn.Module):
    """Trainable vectors for the virtual tokens: one set (PreEmbed) or one per block input (PreLayer)."""

    def __init__(self, n_sets: int, n_virtual: int, d_model: int, init_std: float):
        super().__init__()
        self.vectors = nn.Parameter(torch.randn(n_sets, n_virtual, d_model) * init_std)


def _first_real(mask: torch.Tensor) -> torch.Tensor:
    return torch.argmax(mask.to(torch.int64), dim=1)


def insert_virtual_tokens(batch: dict, n_prefix: int, n_infix: int, placeholder_id: int) -> tuple[dict, torch.Tensor]:
    """Insert n_prefix tokens before each row's real tokens and n_infix after its prompt.

    The prompt ends at `prompt_lengths` (real-token offset) when the batch gives it, else at the first
    supervised label of a token-level `labels`, else at the end of the real tokens. Works for left and
    right padding. Returns the new batch and the virtual positions (B, n_prefix + n_infix).
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]
    rows, width = ids.shape
    lengths = mask.sum(1)
    starts = _first_real(mask)
    labels = batch.get("labels")
    token_labels = labels is not None and labels.dim() == 2
    if "prompt_lengths" in batch:
        prompt = batch["prompt_lengths"]
    elif token_labels:
        supervised = (labels != IGNORE_INDEX).to(torch.int64)
        prompt = torch.where(supervised.any(1), torch.argmax(supervised, 1) - starts, lengths)
    else:
        prompt = lengths
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids", "labels")
            if k in batch and batch[k].dim() == 2]
    fill = {"input_ids": placeholder_id, "attention_mask": 1, "token_type_ids": 0, "labels": IGNORE_INDEX}
    out = {k: v for k, v in batch.items() if k not in keys and k != "prompt_lengths"}
    new = {k: [] for k in keys}
    positions = []
    n_virtual = n_prefix + n_infix
    for row in range(rows):
        s, n, k = int(starts[row]), int(lengths[row]), int(prompt[row])
        for key in keys:
            seq = batch[key][row]
            pad = seq[:s] if s > 0 else seq[s + n:]
            real = seq[s:s + n]
            v = seq.new_full((1,), fill[key])
            infix_fill = v.expand(n_infix) if key != "token_type_ids" or k == 0 else real[k - 1:k].expand(n_infix)
            parts = [v.expand(n_prefix), real[:k], infix_fill, real[k:]]
            parts = [pad, *parts] if s > 0 else [*parts, pad]
            new[key].append(torch.cat(parts))
        base = s
        positions.append(torch.cat([torch.arange(base, base + n_prefix),
                                    torch.arange(base + n_prefix + k, base + n_prefix + k + n_infix)]))
    for key in keys:
        out[key] = torch.stack(new[key])
    assert out["input_ids"].shape == (rows, width + n_virtual)
    return out, torch.stack(positions)


class VirtualTokenHandle:
    """What a prefix method hands the run loop: a batch transform that places the virtual tokens.

    `hooks` are the forward hooks that write the vectors; `remove()` takes them off the model.
    """

    def __init__(self, state: VirtualPositions, n_prefix: int, n_infix: int, placeholder_id: int):
        self.state, self.n_prefix, self.n_infix, self.placeholder_id = state, n_prefix, n_infix, placeholder_id
        self.hooks: list[torch.utils.hooks.RemovableHandle] = []

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()

    def prepare_batch(self, batch: dict) -> dict:
        batch, index = insert_virtual_tokens(batch, self.n_prefix, self.n_infix, self.placeholder_id)
        self.state.index = index
        self.state.seq_len = batch["input_ids"].shape[1]
        return batch


def apply(model: nn.Module, spec: ArchSpec, cfg: PrefixConfig) -> VirtualTokenHandle:
    """Register the trainable vectors on the model and the hooks that write them at the virtual positions."""
    n_prefix, n_infix = cfg.prefix_length, cfg.infix_length
    layers = blocks(model, spec)
    prefix = PrefixEmbedding(len(layers) if cfg.per_layer else 1, n_prefix + n_infix, hidden_size(model), cfg.init_std)
    model.add_module("prefix_tokens", prefix)  # registered on the model: saved, moved, counted with it
    state = VirtualPositions()
    placeholder = getattr(model.config, "pad_token_id", None)
    handle = VirtualTokenHandle(state, n_prefix, n_infix, 0 if placeholder is None else int(placeholder))
    embeddings = model.get_submodule(spec.embeddings)
    handle.hooks.append(embeddings.register_forward_hook(
        lambda _m, _args, out: state.overwrite(out, prefix.vectors[0])))
    if cfg.per_layer:
        for index, block in enumerate(layers):
            if index == 0:
                continue  # block 0's input is the embedding output, already overwritten

            def pre_hook(_m, args, kwargs, index=index):
                if args:
                    return (state.overwrite(args[0], prefix.vectors[index]), *args[1:]), kwargs
                kwargs["hidden_states"] = state.overwrite(kwargs["hidden_states"], prefix.vectors[index])
                return args, kwargs

            handle.hooks.append(block.register_forward_pre_hook(pre_hook, with_kwargs=True))
    prefix.vectors.requires_grad_(True)
    return handle
