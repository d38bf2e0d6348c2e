"""Grouping NLG examples by input, as ``gpt2_decode.py`` does, and choosing the inputs to decode.

References are grouped by identical context (one hypothesis per unique input); the LoRA repo beams
every test line and keeps one hypothesis per context, so decoding each unique context once gives
the same scorer files for a fraction of the work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lora_repro.data.nlg.read import NLGDataError, NLGExample
from lora_repro.data.subset import seeded_subset


@dataclass
class InputGroup:
    """One unique input with all its references, in the order gpt2_decode.py collects them."""

    context: str
    references: list[str] = field(default_factory=list)
    category: str | None = None
    seen: bool | None = None


def reference_text(completion: str) -> str:
    """A completion as gpt2_decode.py keeps it as a reference: cut at eos / blank line, stripped."""
    return completion.split("<|endoftext|>")[0].split("\n\n")[0].strip()


def group_examples(examples: Iterable[NLGExample]) -> list[InputGroup]:
    """One group per unique context, first-seen order, with all references (and WebNLG's flags).

    The LoRA repo beams every test line and keeps one hypothesis per context; decoding each unique
    context once gives the same files for a fraction of the work.
    """
    groups: dict[str, InputGroup] = {}
    for ex in examples:
        group = groups.get(ex.context)
        if group is None:
            group = groups[ex.context] = InputGroup(ex.context, [], ex.category, ex.seen)
        elif group.seen != ex.seen:
            raise NLGDataError(
                f"context {ex.context[:80]!r} appears in both a seen and an unseen category "
                f"({group.category}, {ex.category}); the U/S split would be ambiguous"
            )
        group.references.append(reference_text(ex.completion))
    return list(groups.values())


def group_references(examples: Iterable[NLGExample]) -> list[tuple[str, list[str]]]:
    """``[(context, [references...]), ...]``, one entry per unique context in first-seen order."""
    return [(g.context, g.references) for g in group_examples(examples)]


def filter_groups(groups: Sequence[InputGroup], which: str = "all") -> list[InputGroup]:
    """Keep all / seen / unseen inputs (gpt2_decode.py ``--filter``); for WebNLG's U/S/A columns."""
    if which == "all":
        return list(groups)
    if which not in ("seen", "unseen"):
        raise ValueError(f"filter {which!r}: use all, seen or unseen")
    if any(g.seen is None for g in groups):
        raise ValueError("seen/unseen filtering needs WebNLG groups (they carry the seen flag)")
    return [g for g in groups if g.seen == (which == "seen")]


def subset_examples(examples: Sequence[NLGExample], size: int | None, seed: int = 0) -> list[NLGExample]:
    """A deterministic sample of ``size`` examples (all if None or too few), in file order.

    The NLG ranking of :func:`lora_repro.data.subset.seeded_subset` (a seeded shuffle), the one the
    committed E2E/WebNLG/DART records were made with.
    """
    return seeded_subset(examples, size, seed, ranking="shuffle")


def select_groups(
    groups: Sequence[InputGroup], n: int | None = None, seed: int | None = None
) -> list[InputGroup]:
    """The first ``n`` unique inputs, or with ``seed`` a seeded sample of ``n`` (kept in order)."""
    if n is not None and n < 0:
        raise ValueError(f"number of inputs must be >= 0, got {n}")
    if seed is None:
        return list(groups[:n])
    return seeded_subset(groups, n, seed, ranking="shuffle")


def context_of(group: InputGroup | tuple[str, Sequence[str]]) -> str:
    """The input text of an :class:`InputGroup` or a ``(context, references)`` pair."""
    return group.context if isinstance(group, InputGroup) else group[0]


def references_of(group: InputGroup | tuple[str, Sequence[str]]) -> list[str]:
    """The references of an :class:`InputGroup` or a ``(context, references)`` pair."""
    return list(group.references if isinstance(group, InputGroup) else group[1])
