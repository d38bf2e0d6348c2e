"""BLEU and NIST exactly as the E2E NLG Challenge scorer computes them, in both of its modes.

Why this is written here: the E2E scorer (tuetschek/e2e-metrics, ``measure_scores.py``) has two
BLEU/NIST back ends, and no PyPI package reproduces either one to the digit.

* ``-p`` (Python mode, the one the LoRA authors used) runs the scorer's own port of mteval
  (``metrics/pymteval.py``). It tokenises like mteval-v13a but keeps case and lower-cases n-grams
  with ``str.lower``, keeps an empty output as one empty token, adds ``len(output) - n + 1`` (which
  is negative for outputs shorter than n) to the n-gram totals, floors zero BLEU counts at 1e-15,
  and takes NIST's length penalty against the sum of each instance's *mean* reference length.
* Default (Perl mode) writes SGML files and runs ``mteval-v13a-sig.pl``: ASCII-only lower-casing,
  instances with fewer references padded with empty ones, BLEU smoothed by 1/2^k for zero n-gram
  matches, NIST's length penalty against *total reference words / maximum reference count*, and
  the two scores read back from the script's ``%.4f`` printout.

Generic implementations (sacrebleu, nltk's ``nist_score``) compute the textbook metrics without
these details, and the details show in the 4th decimal on E2E-sized data (the fixtures' NIST
differs by 0.03 between the two modes). The tokeniser (:func:`mteval_tokenize`) is shared with
the WebNLG scorer, whose BLEU (Moses ``multi-bleu-detok.perl``) uses the same mteval-v13a rules.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

MODES = ("python", "perl")

# mteval-v13a "language-dependent part". The first class is the ASCII punctuation ranges
# {-~ [-` space-& (-+ :-@ and /; apostrophe, comma, hyphen and period are handled by later rules.
_PUNCT = re.compile(r"([{-~\[-` -&(-+:-@/])")
_PERIOD_COMMA_AFTER_NON_DIGIT = re.compile(r"([^0-9])([.,])")
_PERIOD_COMMA_BEFORE_NON_DIGIT = re.compile(r"([.,])([^0-9])")
_DASH_AFTER_DIGIT = re.compile(r"([0-9])(-)")
_ENTITIES = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))
# Perl's \s on character strings; Python's \s also matches \x1c-\x1f, which Perl's does not.
_PERL_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_PERL_SPACES = re.compile(f"[{_PERL_SPACE}]+")
# Perl's \s on byte strings (a script that never decodes its input): ASCII whitespace only, so the
# UTF-8 bytes of a no-break space (C2 A0) or U+2028 (E2 80 A8) stay inside their token.
_PERL_BYTE_SPACES = re.compile("[\t\n\x0b\x0c\r ]+")
_PY_SPACES = re.compile(r"\s+")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

_BLEU_ORDER = 4
_NIST_ORDER = 5
_BLEU_TINY, _BLEU_SMALL = 1e-15, 1e-9  # pymteval's floors for zero hits / zero n-gram totals


def mteval_tokenize(text: str, *, perl: bool, lowercase: bool = False, perl_bytes: bool = False) -> list[str]:
    """Tokenise one segment with mteval-v13a's default (non-international) rules.

    ``perl=True`` follows the Perl scripts (mteval-v13a, multi-bleu-detok): Perl's whitespace class,
    and an empty segment has no tokens. ``perl=False`` follows pymteval's port: Python's whitespace
    class, and an empty segment is one empty token, as ``"".split(" ")`` gives. ``lowercase`` is
    mteval-v13a's default ``tr/[A-Z]/[a-z]/``, which maps ASCII letters only. ``perl_bytes`` (with
    ``perl``) is for Perl scripts that read undecoded bytes, as multi-bleu-detok.perl does: only
    ASCII whitespace separates tokens there.
    """
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, char in _ENTITIES:
        text = text.replace(entity, char)
    text = f" {text} "
    if lowercase:
        text = text.translate(_ASCII_LOWER)
    text = _PUNCT.sub(r" \1 ", text)
    text = _PERIOD_COMMA_AFTER_NON_DIGIT.sub(r"\1 \2 ", text)
    text = _PERIOD_COMMA_BEFORE_NON_DIGIT.sub(r" \1 \2", text)
    text = _DASH_AFTER_DIGIT.sub(r"\1 \2 ", text)
    if perl:
        spaces = _PERL_BYTE_SPACES if perl_bytes else _PERL_SPACES
        text = spaces.sub(" ", text).strip(" ")  # only single spaces are left to strip
        return text.split(" ") if text else []
    return _PY_SPACES.sub(" ", text).strip().split(" ")


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _clipped_counts(hyp: Sequence[str], refs: Sequence[Sequence[str]], n: int) -> dict:
    """Hypothesis n-grams (first-occurrence order), counts clipped by the max over references."""
    ref_max: Counter = Counter()
    for ref in refs:
        ref_max |= Counter(_ngrams(ref, n))
    return {g: min(c, ref_max[g]) for g, c in Counter(_ngrams(hyp, n)).items() if g in ref_max}


def check_pairs(refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> None:
    """One list of references per hypothesis, and at least one hypothesis (every scorer's precondition)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} reference instances but {len(hyps)} hypotheses; give one "
                         "list of references per hypothesis")
    if not hyps:
        raise ValueError("no hypotheses to score")


def bleu_nist(
    refs: Sequence[Sequence[str]], hyps: Sequence[str], mode: str = "python"
) -> dict[str, float]:
    """Corpus BLEU (0-1) and NIST of ``hyps`` against ``refs``, as the E2E scorer's ``mode`` does.

    ``refs[i]`` holds the (one or more) references of instance ``i``; ``mode`` is ``"python"``
    (``measure_scores.py -p``) or ``"perl"`` (its default, mteval-v13a-sig.pl).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_pairs(refs, hyps)
    empty = [i for i, r in enumerate(refs) if not r]
    if empty:
        raise ValueError(f"instances {empty[:5]} have no reference; every hypothesis needs one")
    return _perl_scores(refs, hyps) if mode == "perl" else _python_scores(refs, hyps)


# ----------------------------------------------------------------------------- Python mode (-p)


def _python_scores(refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> dict[str, float]:
    """pymteval's BLEUScore() and NISTScore() fed instance by instance, as run_pymteval does."""
    bleu_hits = [0] * _BLEU_ORDER
    bleu_lens = [0] * _BLEU_ORDER
    bleu_ref_len = 0
    nist_hits: list[list[dict]] = [[] for _ in range(_NIST_ORDER)]
    nist_lens = [0] * _NIST_ORDER
    ref_counts: list[Counter] = [Counter() for _ in range(_NIST_ORDER + 1)]  # [0] holds ()
    avg_ref_len = 0.0

    for hyp_text, ref_texts in zip(hyps, refs, strict=True):
        # pymteval lower-cases inside its n-gram helper; token counts are the same either way.
        hyp = [t.lower() for t in mteval_tokenize(hyp_text, perl=False)]
        low_refs = [[t.lower() for t in mteval_tokenize(r, perl=False)] for r in ref_texts]
        for n in range(1, _NIST_ORDER + 1):
            clipped = _clipped_counts(hyp, low_refs, n)
            if n <= _BLEU_ORDER:
                bleu_hits[n - 1] += sum(clipped.values())
                bleu_lens[n - 1] += len(hyp) - n + 1
            nist_hits[n - 1].append(clipped)
            nist_lens[n - 1] += len(hyp) - n + 1
            for ref in low_refs:
                ref_counts[n].update(_ngrams(ref, n))
        closest = min(low_refs, key=lambda r: (abs(len(r) - len(hyp)), len(r)))
        bleu_ref_len += len(closest)
        ref_len_sum = sum(len(r) for r in low_refs)
        ref_counts[0][()] += ref_len_sum
        avg_ref_len += ref_len_sum / float(len(low_refs))

    return {
        "BLEU": _python_bleu(bleu_hits, bleu_lens, bleu_ref_len),
        "NIST": _python_nist(nist_hits, nist_lens, ref_counts, avg_ref_len),
    }


def _python_bleu(hits: list[int], cand_lens: list[int], ref_len: int) -> float:
    bp = 1.0
    if cand_lens[0] <= ref_len:
        bp = math.exp(1.0 - ref_len / (float(cand_lens[0]) if cand_lens[0] else 1e-5))
    log_sum = 0.0
    for n_hits, n_len in zip(hits, cand_lens, strict=True):
        log_sum += math.log(max(float(n_hits), _BLEU_TINY) / max(float(n_len), _BLEU_SMALL))
    return bp * math.exp((1.0 / _BLEU_ORDER) * log_sum)


def _python_nist(
    hits: list[list[dict]], cand_lens: list[int], ref_counts: list[Counter], avg_ref_len: float
) -> float:
    def info(ngram: tuple[str, ...]) -> float:
        prefix_count = ref_counts[len(ngram) - 1][ngram[:-1]]
        return math.log(prefix_count / float(ref_counts[len(ngram)][ngram]), 2)

    nist_sum = 0.0
    for n in range(_NIST_ORDER):
        hit_info = 0.0
        for instance in hits[n]:
            hit_info += sum(info(g) * c for g, c in instance.items())
        if cand_lens[n] == 0:
            raise ValueError(
                f"the Python-mode NIST is undefined here: the {n + 1}-gram total of the outputs "
                "is 0 (outputs shorter than n words make it shrink), and the E2E scorer itself "
                "fails with ZeroDivisionError; score these outputs with mode='perl'"
            )
        nist_sum += hit_info / cand_lens[n]
    beta = -math.log(0.5) / math.log(1.5) ** 2
    ratio = cand_lens[0] / float(avg_ref_len)
    penalty = 1.0 if ratio >= 1 else 0.0 if ratio <= 0 else math.exp(-beta * math.log(ratio) ** 2)
    return penalty * nist_sum


# ----------------------------------------------------------------------------- Perl mode


def _perl_scores(refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> dict[str, float]:
    """mteval-v13a-sig.pl on the SGML files measure_scores.py writes (refs padded with '')."""
    n_refs = max(len(r) for r in refs)
    # The SGML writer pastes raw text into <seg> and mteval collapses whitespace runs first.
    tok = [[_perl_segment(r) for r in list(inst) + [""] * (n_refs - len(inst))] for inst in refs]
    tst = [_perl_segment(h) for h in hyps]

    info = _perl_ngram_info(tok)
    ref_length = 0
    match = [0] * (_NIST_ORDER + 1)
    tst_cnt = [0] * (_NIST_ORDER + 1)
    tst_info = [0.0] * (_NIST_ORDER + 1)
    ref_words = 0
    for hyp, inst_refs in zip(tst, tok, strict=True):
        for j in range(1, _NIST_ORDER + 1):
            tst_cnt[j] += max(len(hyp) - j + 1, 0)
            clipped = _clipped_counts(hyp, inst_refs, j)
            for gram, count in clipped.items():
                tst_info[j] += info[gram] * count
                match[j] += count
        ref_words += sum(len(r) for r in inst_refs)
        ref_length += _closest_ref_length(inst_refs, len(hyp))

    bleu = _perl_bleu(ref_length, match, tst_cnt)
    nist = _perl_nist(tst_cnt, tst_info, ref_words, n_refs)
    # measure_scores.py reads both back from the script's "%2.4f"/"%.4f" printout.
    return {"BLEU": float(f"{bleu:.4f}"), "NIST": float(f"{nist:.4f}")}


def _perl_segment(text: str) -> list[str]:
    return mteval_tokenize(_PERL_SPACES.sub(" ", text), perl=True, lowercase=True)


def _perl_ngram_info(refs: list[list[list[str]]]) -> dict[tuple[str, ...], float]:
    """compute_ngram_info: -log2(count(w1..wn) / count(w1..wn-1)) over every reference segment.

    Quirk kept: Perl tests the prefix string for truth, so a prefix that is exactly "0" (the
    one-word n-gram "0") is treated like the empty prefix and divides by the total word count.
    """
    counts: Counter = Counter()
    total_words = 0
    for inst in refs:
        for ref in inst:
            total_words += len(ref)
            for n in range(1, _NIST_ORDER + 1):
                counts.update(_ngrams(ref, n))
    info = {}
    for gram, count in counts.items():
        prefix = gram[:-1]
        use_total = not prefix or prefix == ("0",)
        ratio = count / total_words if use_total else count / counts[prefix]
        info[gram] = -math.log(ratio) / math.log(2)
    return info


def _closest_ref_length(refs: Sequence[Sequence[str]], hyp_len: int) -> int:
    """brevity_penalty_closest: the first reference seeds it; later empty ones are skipped."""
    best = len(refs[0])
    for ref in refs[1:]:
        length = len(ref)
        if not length:
            continue
        if abs(hyp_len - length) < abs(hyp_len - best) or (
            abs(hyp_len - length) == abs(hyp_len - best) and length < best
        ):
            best = length
    return best


def _perl_bleu(ref_length: int, match: list[int], tst_cnt: list[int]) -> float:
    """bleu_score (the default, smoothed): a zero match count counts as 1/2^k for the k-th one."""
    exp_len_score = math.exp(min(0, 1 - ref_length / tst_cnt[1])) if tst_cnt[1] > 0 else 0.0
    score = 0.0
    smooth = 1
    for j in range(1, _BLEU_ORDER + 1):
        if tst_cnt[j] == 0:
            iscore = 0.0
        elif match[j] == 0:
            smooth *= 2
            iscore = math.log(1 / (smooth * tst_cnt[j]))
        else:
            iscore = math.log(match[j] / tst_cnt[j])
        score += iscore
    return math.exp(score / _BLEU_ORDER) * exp_len_score


def _perl_nist(tst_cnt: list[int], tst_info: list[float], ref_words: int, n_refs: int) -> float:
    """nist_score: information per n-gram order, penalised against ref words / reference count."""
    score = 0.0
    for n in range(1, _NIST_ORDER + 1):
        score += tst_info[n] / max(tst_cnt[n], 1)
    ratio = tst_cnt[1] / (ref_words / n_refs)
    if ratio >= 1:
        return score
    if ratio <= 0:
        return 0.0
    beta = -math.log(0.5) / math.log(1.5) / math.log(1.5)
    return score * math.exp(-beta * math.log(ratio) * math.log(ratio))
