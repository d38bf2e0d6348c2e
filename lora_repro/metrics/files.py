"""The scorers' input files, written as ``gpt2_decode.py`` writes them, and hypothesis cleaning.

Hypotheses are cut at ``<|endoftext|>`` and at the first blank line; E2E gets the official
scorer's ref/hyp pair, WebNLG/DART GenerationEval's ``reference0..5`` (padded with the first
reference) and ``hypothesis``, lower-cased and tokenised (``--tokenize --lower``). Every file is
written atomically (:mod:`lora_repro.io`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lora_repro.data.nlg.groups import InputGroup, context_of, reference_text, references_of
from lora_repro.io import atomic_write_text


def clean_hypothesis(text: str) -> str:
    """Decoded output as gpt2_decode.py keeps it: cut at ``<|endoftext|>`` and the first blank line.

    Remaining single newlines become spaces, since one would shift every later line of the file.
    """
    return " ".join(reference_text(text).splitlines()).strip()


def standard_tokenize(text: str) -> str:
    """gpt2_decode.py ``--tokenize``: every non-word character is its own token, single spaces."""
    return " ".join(" ".join(re.split(r"(\W)", text)).split())


def post_process(text: str, tokenize: bool = False, lower: bool = False) -> str:
    """gpt2_decode.py's post-processing: lower-case first, then tokenise."""
    if lower:
        text = text.lower()
    if tokenize:
        text = standard_tokenize(text)
    return text


def _check_counts(groups: Sequence[Any], hyps: Sequence[str]) -> None:
    if len(groups) != len(hyps):
        raise ValueError(
            f"{len(hyps)} hypotheses for {len(groups)} unique inputs: there must be one hypothesis "
            "per group, in group order (decode each unique context once)"
        )


def _one_line(text: str, what: str) -> str:
    if "\n" in text or "\r" in text:
        raise ValueError(f"{what} spans several lines: {text[:80]!r}; it would misalign the file")
    return text


def write_e2e_files(
    groups: Sequence[InputGroup] | Sequence[tuple[str, Sequence[str]]],
    hyps: Sequence[str],
    ref_path: str | os.PathLike,
    hyp_path: str | os.PathLike,
    tokenize: bool = False,
    lower: bool = False,
) -> None:
    """Files for the official E2E scorer (``measure_scores.py ref hyp``), as gpt2_decode.py writes.

    Ref file: an instance's references on consecutive lines, each instance followed by a blank
    line; hyp file: one line per instance. The README's E2E decode passes neither ``--tokenize``
    nor ``--lower``, hence the defaults.
    """
    _check_counts(groups, hyps)
    ref_lines, hyp_lines = [], []
    for index, (group, hyp) in enumerate(zip(groups, hyps, strict=True)):
        refs = references_of(group)
        if not refs:
            raise ValueError(f"input {index} ({context_of(group)[:60]!r}) has no reference")
        for ref in refs:
            line = _one_line(post_process(ref, tokenize, lower), f"reference of input {index}")
            if not line.strip():
                raise ValueError(
                    f"input {index} has an empty reference; the E2E format would read it as the "
                    "end of the instance"
                )
            ref_lines.append(line + "\n")
        ref_lines.append("\n")
        hyp_lines.append(post_process(clean_hypothesis(hyp), tokenize, lower) + "\n")
    atomic_write_text(ref_path, "".join(ref_lines))
    atomic_write_text(hyp_path, "".join(hyp_lines))


def write_multi_ref_files(
    groups: Sequence[InputGroup] | Sequence[tuple[str, Sequence[str]]],
    hyps: Sequence[str],
    folder: str | os.PathLike,
    n_refs: int = 6,
    tokenize: bool = True,
    lower: bool = True,
    hyp_name: str = "hypothesis",
) -> dict[str, Any]:
    """GenerationEval files (``eval.py -R folder/reference -H folder/hypothesis -nr 6``).

    ``reference<k>`` holds the k-th reference of every input, one per line; inputs with fewer than
    ``n_refs`` references repeat their *first* one, and references beyond ``n_refs`` are dropped,
    both as gpt2_decode.py does. Lower-casing then tokenising is on by default, matching the
    README's WebNLG/DART decode (``--tokenize --lower``). Returns the written paths.
    """
    if n_refs < 1:
        raise ValueError(f"n_refs must be >= 1, got {n_refs}")
    _check_counts(groups, hyps)
    columns: list[list[str]] = [[] for _ in range(n_refs)]
    hyp_lines = []
    for index, (group, hyp) in enumerate(zip(groups, hyps, strict=True)):
        refs = references_of(group)
        if not refs:
            raise ValueError(f"input {index} ({context_of(group)[:60]!r}) has no reference")
        for k in range(n_refs):
            ref = refs[k] if k < len(refs) else refs[0]
            line = post_process(ref, tokenize, lower)
            columns[k].append(_one_line(line, f"reference of input {index}"))
        hyp_lines.append(post_process(clean_hypothesis(hyp), tokenize, lower))
    folder = Path(folder)
    ref_paths = []
    for k, lines in enumerate(columns):
        path = folder / f"reference{k}"
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        ref_paths.append(path)
    hyp_path = folder / hyp_name
    atomic_write_text(hyp_path, "".join(line + "\n" for line in hyp_lines))
    return {"references": ref_paths, "reference_prefix": folder / "reference", "hypothesis": hyp_path}
