"""E2E NLG Challenge scores (BLEU, NIST, METEOR, ROUGE_L, CIDEr), as ``measure_scores.py`` gives.

The LoRA paper's E2E numbers come from tuetschek/e2e-metrics run as
``measure_scores.py REF HYP -p``. This module reads the same files the same way and returns the
same numbers, offline: BLEU/NIST from :mod:`lora_repro.metrics.bleu_nist` (``mode="python"`` is
``-p``, ``mode="perl"`` the scorer's default mteval-v13a-sig.pl), METEOR/ROUGE_L/CIDEr from
pycocoevalcap's jars and scorers via :mod:`lora_repro.metrics.coco`. BLEU, METEOR and ROUGE_L are
fractions (the paper's tables show them times 100).

CLI: ``python -m lora_repro.metrics.e2e REF HYP [--mode python|perl]`` prints the scores as JSON,
rounded to the 4 decimals the scorer prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from lora_repro.metrics.bleu_nist import MODES, bleu_nist, check_pairs
from lora_repro.metrics.coco import coco_scores, require_java

METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")


def _lines(path: Path) -> list[str]:
    """The scorer's read_lines: codecs' UTF-8 line iteration (which also breaks at the Unicode line
    separators str.splitlines knows), each line stripped."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]


def read_e2e_files(ref_path: str | Path, hyp_path: str | Path) -> tuple[list[list[str]], list[str]]:
    """References grouped per instance and one hypothesis per instance, as the scorer reads them.

    The reference file holds each instance's references on consecutive lines with one blank line
    between instances (a final blank line is allowed). A file that forms a single block is read as
    one reference per line, the scorer's single-reference fallback. The hypothesis file has one
    line per instance; blank lines in it are (empty) outputs.
    """
    ref_path, hyp_path = Path(ref_path), Path(hyp_path)
    hyps = _lines(hyp_path)
    if not any(hyps):
        raise ValueError(f"hypothesis file {hyp_path} is empty: it needs one output per line, one "
                         f"line per instance of {ref_path}")
    groups: list[list[str]] = [[]]
    group_start = [1]
    for line_no, line in enumerate(_lines(ref_path), start=1):
        if line:
            groups[-1].append(line)
        else:
            groups.append([])
            group_start.append(line_no + 1)
    if not groups[-1]:
        del groups[-1]
    if len(groups) == 1:
        groups = [[ref] for ref in groups[0]]
    else:
        empty = [group_start[i] for i, g in enumerate(groups) if not g]
        if empty:
            raise ValueError(f"reference file {ref_path}: line {empty[0]} is blank where an "
                             "instance's references should start (a blank line at the top or two "
                             "in a row); separate instances by exactly one blank line")
    if not groups:
        raise ValueError(f"reference file {ref_path} is empty")
    if len(groups) != len(hyps):
        raise ValueError(
            f"reference file {ref_path} has {len(groups)} instances (groups of lines separated by "
            f"a blank line) but hypothesis file {hyp_path} has {len(hyps)} lines; they must match "
            "one to one"
        )
    return groups, hyps


def score_e2e(
    refs: Sequence[Sequence[str]], hyps: Sequence[str], mode: str = "python"
) -> dict[str, float]:
    """BLEU, NIST, METEOR, ROUGE_L and CIDEr of ``hyps`` against ``refs`` (one list per instance).

    ``mode`` picks the BLEU/NIST back end: ``"python"`` (``measure_scores.py -p``, the paper's) or
    ``"perl"`` (the default mteval-v13a-sig.pl). Needs Java for the other three.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_pairs(refs, hyps)
    require_java()  # fail before any work, not after BLEU/NIST
    scores = bleu_nist(refs, hyps, mode)
    scores.update(coco_scores(refs, hyps))
    return {name: scores[name] for name in METRICS}


def main(argv: Sequence[str] | None = None) -> int:
    """Score E2E files and print the JSON; errors go to stderr with exit code 2."""
    parser = argparse.ArgumentParser(
        prog="python -m lora_repro.metrics.e2e",
        description="E2E NLG Challenge metrics, as tuetschek/e2e-metrics measure_scores.py.",
    )
    parser.add_argument("ref", help="references: one block of lines per instance, blank-line "
                        "separated")
    parser.add_argument("hyp", help="system outputs: one line per instance")
    parser.add_argument("--mode", choices=MODES, default="python",
                        help="BLEU/NIST back end: python (the scorer's -p, used in the paper) "
                        "or perl")
    args = parser.parse_args(argv)
    try:
        refs, hyps = read_e2e_files(args.ref, args.hyp)
        scores = score_e2e(refs, hyps, args.mode)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({name: round(value, 4) for name, value in scores.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
