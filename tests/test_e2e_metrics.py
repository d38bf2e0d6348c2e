"""The E2E scorer port against the official scorer's printed numbers, plus its quirks and errors.

Ground truth: shared/fixtures/e2e_metrics (scores printed by tuetschek/e2e-metrics on the files).
BLEU/NIST need no Java; the full metric set (METEOR, ROUGE_L, CIDEr) does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import write_text as _write

from lora_repro import paths
from lora_repro.metrics import coco, e2e
from lora_repro.metrics.bleu_nist import bleu_nist, mteval_tokenize
from lora_repro.metrics.e2e import read_e2e_files, score_e2e

# Like the data mirror, the fixtures live in ../shared beside the checkout (CI has it there too).
FIXTURES = paths.REPO_ROOT.parent / "shared" / "fixtures" / "e2e_metrics"


def _expected() -> dict:
    assert FIXTURES.is_dir(), f"E2E scorer fixtures not found at {FIXTURES}"
    return json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))


def _fixture(name: str) -> tuple[list[list[str]], list[str], dict]:
    spec = _expected()[name]
    refs, hyps = read_e2e_files(FIXTURES / spec["ref"], FIXTURES / spec["hyp"])
    assert len(hyps) == spec["instances"]
    return refs, hyps, spec


def _assert_4dp(scores: dict[str, float], expected: dict[str, float]) -> None:
    assert {k: round(scores[k], 4) for k in expected} == expected


@pytest.mark.parametrize("mode", ["python", "perl"])
@pytest.mark.parametrize("name", ["example", "special"])
def test_bleu_nist_match_official_scorer(name: str, mode: str) -> None:
    refs, hyps, spec = _fixture(name)
    expected = {k: spec[f"{mode}_mode"][k] for k in ("BLEU", "NIST")}
    _assert_4dp(bleu_nist(refs, hyps, mode), expected)


@pytest.mark.java
@pytest.mark.slow
@pytest.mark.parametrize("name", ["example", "special"])
def test_all_metrics_match_official_scorer_in_both_modes(name: str) -> None:
    refs, hyps, spec = _fixture(name)
    scores = score_e2e(refs, hyps, mode="python")
    assert list(scores) == list(e2e.METRICS)
    _assert_4dp(scores, spec["python_mode"])
    # METEOR/ROUGE_L/CIDEr do not depend on the mode; only BLEU/NIST are swapped.
    _assert_4dp({**scores, **bleu_nist(refs, hyps, "perl")}, spec["perl_mode"])


def test_cli_prints_official_scores(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The Java metrics are checked above; here the jars are stubbed with the official values so
    # file reading, Perl-mode BLEU/NIST and the JSON printout are checked in milliseconds.
    spec = _expected()["special"]
    java_part = {k: spec["perl_mode"][k] for k in ("METEOR", "ROUGE_L", "CIDEr")}
    monkeypatch.setattr(e2e, "require_java", lambda: "java")
    monkeypatch.setattr(e2e, "coco_scores", lambda refs, hyps: dict(java_part))
    code = e2e.main([str(FIXTURES / spec["ref"]), str(FIXTURES / spec["hyp"]), "--mode", "perl"])
    assert code == 0
    printed = capsys.readouterr().out
    assert json.loads(printed) == spec["perl_mode"]
    assert list(json.loads(printed)) == list(e2e.METRICS)


def test_mteval_tokenization() -> None:
    text = 'Hello, world. 3.5-4 &amp; "x"'
    assert mteval_tokenize(text, perl=True, lowercase=True) == [
        "hello", ",", "world", ".", "3.5", "-", "4", "&", '"', "x", '"']
    assert mteval_tokenize("", perl=True) == []
    assert mteval_tokenize("", perl=False) == [""]  # pymteval: "".split(" ")


def test_perl_mode_lowercases_ascii_only() -> None:
    refs, hyps = [["Café noir et crème fraîche"]], ["CAFÉ NOIR ET CRÈME FRAÎCHE"]
    assert bleu_nist(refs, hyps, "python")["BLEU"] == pytest.approx(1.0)
    # mteval's tr/[A-Z]/[a-z]/ leaves É, È and Î upper-case: only "noir et" matches.
    assert bleu_nist(refs, hyps, "perl")["BLEU"] < 0.5


def test_short_output_quirks_differ_between_modes() -> None:
    refs, hyps = [["a b c d"], ["a b c d e f"]], ["a", "a b c d e f"]
    # pymteval adds len - n + 1 per output, negative for "a": n-gram totals 7, 5, 3, 1 against
    # hits 7, 5, 4, 3, so the precisions multiply to 4 (> 1); closest reference lengths 4 + 6.
    python_bleu = math.sqrt(2) * math.exp(1 - 10 / 7)
    assert bleu_nist(refs, hyps, "python")["BLEU"] == pytest.approx(python_bleu, rel=1e-12)
    # mteval counts max(len - n + 1, 0): every precision is 1, only the brevity penalty is left.
    assert bleu_nist(refs, hyps, "perl")["BLEU"] == round(math.exp(1 - 10 / 7), 4)


def test_python_mode_nist_undefined_for_one_word_outputs() -> None:
    with pytest.raises(ValueError, match="mode='perl'"):
        bleu_nist([["a b c d"]], ["a"], "python")


def test_perl_nist_treats_prefix_zero_as_empty() -> None:
    # Perl tests the prefix string "0" for truth, so info("0 x") = -log2(1/2) = 1 instead of 0.
    assert bleu_nist([["0 x"]], ["0 x"], "perl")["NIST"] == 2.0
    assert bleu_nist([["y x"]], ["y x"], "perl")["NIST"] == 1.0


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        bleu_nist([["a"]], ["a"], "mteval")
    with pytest.raises(ValueError, match="2 reference instances but 1 hypotheses"):
        score_e2e([["a"], ["b"]], ["a"])
    with pytest.raises(ValueError, match=r"instances \[0\] have no reference"):
        bleu_nist([[]], ["a"])


def test_read_files_like_the_scorer(tmp_path: Path) -> None:
    multi = _write(tmp_path, "multi.ref", "a b\nc d\n\ne f\n\n")
    hyp = _write(tmp_path, "two.hyp", "x y\n\n")  # a blank line is an (empty) output
    assert read_e2e_files(multi, hyp) == ([["a b", "c d"], ["e f"]], ["x y", ""])
    single = _write(tmp_path, "single.ref", "a b\ne f\n")  # one block: one reference per line
    assert read_e2e_files(single, hyp) == ([["a b"], ["e f"]], ["x y", ""])


def test_count_mismatch_names_both_files_and_counts(tmp_path: Path) -> None:
    ref = _write(tmp_path, "r.txt", "a\nb\n\nc\n\nd\n")
    hyp = _write(tmp_path, "h.txt", "a\nc\n")
    with pytest.raises(ValueError) as err:
        read_e2e_files(ref, hyp)
    assert all(part in str(err.value) for part in (str(ref), str(hyp), "3 instances", "2 lines"))


def test_empty_hypothesis_file_and_double_blank_lines(tmp_path: Path) -> None:
    ref = _write(tmp_path, "r.txt", "a\n\nb\n")
    with pytest.raises(ValueError, match=r"hypothesis file .* is empty"):
        read_e2e_files(ref, _write(tmp_path, "h.txt", "\n \n"))
    with pytest.raises(ValueError, match="line 3 is blank"):
        read_e2e_files(_write(tmp_path, "r2.txt", "a\n\n\nb\n"),
                       _write(tmp_path, "h2.txt", "a\nb\n"))


def test_missing_java_is_a_clear_error_and_cli_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(coco.shutil, "which", lambda name: None)
    with pytest.raises(coco.JavaNotFoundError, match="apt-get install default-jre-headless"):
        score_e2e([["a b"]], ["a b"])
    ref, hyp = _write(tmp_path, "r.txt", "a b\n"), _write(tmp_path, "h.txt", "a b\n")
    assert e2e.main([str(ref), str(hyp)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Java" in err
