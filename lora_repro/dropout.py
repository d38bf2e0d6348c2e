"""Dropout with a cheaper random draw on CPU (`train.fast_dropout`): the same mask law, another stream.

Why: on CPU, torch's dropout draws one Bernoulli number per element from its Mersenne Twister; that
draw (`bernoulli_`) was 12-15 % of the profiler's op time in MiniLM training steps (the race against
PEFT; GLUE RTE LoRA, bf16, 1 thread). Here one 64-bit word of the same generator gives four 16-bit
draws: an element is kept when its draw is at least round(p * 65536) of the 65536 values, so the drop
rate is p to within 1/131072 (p = 0.1: 0.1000061), and kept values are scaled by 1 / (1 - p), as torch
does. Drawing and applying a mask took 0.28-0.45x the time of `F.dropout` on MiniLM's attention and
hidden-state tensors (a scratch script, 1 thread); `make bench-step ARGS="--compare fast-dropout ..."`
measured 0.945x a GLUE RTE LoRA step and 0.949x a full fine-tuning step. The masks differ from
torch's for the same seed, so a run with it is another draw of the same procedure, not a bit-identical
rerun. One difference besides the stream: a NaN or inf in a dropped position becomes 0 (torch's
multiplies, and keeps it).

No library provides this: torch's CPU dropout is the per-element draw, and nothing in transformers or
PEFT replaces it. The switch is `torch.nn.functional.dropout` itself, for the training loop only, and
process-wide while it lasts (every thread sees it): every nn.Dropout and transformers' eager attention
call it by attribute, so one swap reaches them all (sdpa's internal dropout does not; it keeps torch's
draw). CUDA tensors, tensor subclasses, code being compiled, and rates that 16 bits cannot hold (p
that round to 0 or 65536 of 65536 draws: 0 and 1 included) go to torch's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.nn import functional

DRAW_BITS = 16
DRAW_VALUES = 1 << DRAW_BITS
DRAWS_PER_WORD = 64 // DRAW_BITS
_torch_dropout = functional.dropout


def keep_mask(shape: torch.Size, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A bool mask of `shape`, True with probability 1 - round(p * 65536) / 65536, from 64-bit words."""
    count = shape.numel()
    words = torch.empty((count + DRAWS_PER_WORD - 1) // DRAWS_PER_WORD, dtype=torch.int64)
    words.random_(torch.iinfo(torch.int64).min, None, generator=generator)  # every bit uniform
    draws = words.view(torch.int16)[:count].view(shape)
    return draws >= torch.iinfo(torch.int16).min + round(p * DRAW_VALUES)


def drawable(p: float) -> bool:
    """Whether 16-bit draws hold the drop rate `p` (to within 1/131072) with something both kept and dropped."""
    return 0.0 <= p <= 1.0 and 1 <= round(p * DRAW_VALUES) <= DRAW_VALUES - 1


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """`torch.nn.functional.dropout` with the mask from `keep_mask` on plain CPU tensors; torch's own
    elsewhere (see the module docstring)."""
    plain_cpu = type(input) is torch.Tensor and input.device.type == "cpu"
    if not training or not plain_cpu or not drawable(p) or torch.compiler.is_compiling():
        return _torch_dropout(input, p, training, inplace)
    keep = keep_mask(input.shape, p)
    if inplace:
        return input.mul_(keep).mul_(1.0 / (1.0 - p))
    return torch.where(keep, input, 0.0).mul_(1.0 / (1.0 - p))


@contextlib.contextmanager
def fast_dropout(enabled: bool) -> Iterator[None]:
    """Within the block, every `torch.nn.functional.dropout` call is `dropout` above (when `enabled`)."""
    if not enabled:
        yield
        return
    previous, functional.dropout = functional.dropout, dropout
    try:
        yield
    finally:
        functional.dropout = previous
