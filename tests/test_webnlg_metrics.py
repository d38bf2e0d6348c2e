"""GenerationEval-equivalent BLEU/METEOR/TER: hand-checked cases, padding, file parsing, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import sacrebleu

from lora_repro.metrics import coco, webnlg
from lora_repro.metrics.webnlg import (
    multi_bleu_detok,
    pad_references,
    read_generation_files,
    score_generation,
    ter,
    word_tokenize,
)
from helpers import write_text as _write


def test_identical_output_scores_bleu_100_and_ter_0() -> None:
    refs = [["the cat sat on the mat ."], ["alan shepard was born in new hampshire ."]]
    hyps = [r[0] for r in refs]
    assert multi_bleu_detok(refs, hyps) == 100.0
    assert ter(hyps[1].split(), refs[1][0].split()) == 0.0


def test_ter_hand_checked() -> None:
    assert ter("a b c".split(), "a b d".split()) == pytest.approx(1 / 3)  # one substitution
    # "a" moved to the front is one shift, where plain edit distance would need two edits.
    assert ter("b c a".split(), "a b c".split()) == pytest.approx(1 / 3)
    assert ter([], "a b".split()) == 1.0  # two insertions over two reference words
    # pyter's own docstring example: 4 edits (1 shift + 3) over 13 reference words.
    ref = "SAUDI ARABIA denied THIS WEEK information published in the AMERICAN new york times"
    hyp = "THIS WEEK THE SAUDIS denied information published in the new york times"
    assert f"{ter(hyp.split(), ref.split()):.3f}" == "0.308"


def test_bleu_matches_sacrebleu_13a_without_empty_references() -> None:
    refs = [["The Eagle is a coffee shop, near Burger King.", "Near Burger King is The Eagle."],
            ["Zizzi is a pub in the city centre.", "Zizzi is a moderately priced pub."]]
    hyps = ["The Eagle is a coffee shop near Burger King.", "Zizzi is a pub in the centre."]
    expected = sacrebleu.corpus_bleu(hyps, [list(r) for r in zip(*refs)], tokenize="13a",
                                     smooth_method="none").score
    assert multi_bleu_detok(refs, hyps) == round(expected, 2)


def test_bleu_counts_an_empty_reference_for_the_brevity_penalty() -> None:
    # Instance 1: "" (length 0) ties with the 8-word reference at distance 4 and, being shorter,
    # wins; so the reference length is 0 + 4 against 8 output words and there is no penalty
    # (skipping the empty reference would give BP = exp(1 - 12/8) and BLEU 60.65).
    refs = [["a b c d e f g h", ""], ["a b c d", "a b c d"]]
    assert multi_bleu_detok(refs, ["a b c d", "a b c d"]) == 100.0
    # Brevity penalty and a missing 4-gram: 3 output words against 4 gives BLEU 0, as in Perl.
    assert multi_bleu_detok([["a b c d"]], ["a b c"]) == 0.0


def test_word_tokenize_is_nltk_treebank() -> None:
    assert word_tokenize('" hello " she cannot say') == "`` hello `` she can not say"
    assert word_tokenize("") == ""


def test_padding_repeats_the_first_reference() -> None:
    assert pad_references([["a"], ["b", "c"]]) == [["a", "a"], ["b", "c"]]
    assert pad_references([["a"]], num_refs=3) == [["a", "a", "a"]]
    with pytest.raises(ValueError, match="instance 0 has 2 references but num_refs=1"):
        pad_references([["a", "b"]], num_refs=1)
    with pytest.raises(ValueError, match="instance 1 has no reference"):
        pad_references([["a"], []])


def test_padding_with_the_first_reference_leaves_ter_unchanged() -> None:
    # TER is a minimum over references, so copies of the first one cannot move it.
    hyp, refs = "b c a", ["a b c", "x y z"]
    padded = pad_references([refs], num_refs=6)[0]
    assert webnlg._instance_ter(hyp, padded) == webnlg._instance_ter(hyp, refs)
    assert webnlg._instance_ter(hyp, refs) == pytest.approx(1 / 3)
    assert webnlg._instance_ter(hyp, ["", "x y z"]) == 1.0  # an empty reference scores 1


def test_files_parse_like_eval_py_with_trailing_instance(tmp_path: Path) -> None:
    r0 = _write(tmp_path, "reference0", "a b\nc d\n")
    r1 = _write(tmp_path, "reference1", "a x\nc y\n")
    hyp = _write(tmp_path, "hyp", "a b\nc d\n")
    refs, hyps = read_generation_files([r0, r1], hyp)
    assert hyps == ["a b", "c d", ""]  # f.read().split("\n") keeps the piece after the last newline
    assert refs == [["a b", "a x"], ["c d", "c y"], ["", ""]]


def test_file_count_mismatch_names_files_and_counts(tmp_path: Path) -> None:
    r0 = _write(tmp_path, "reference0", "a\nb\nc\n")
    hyp = _write(tmp_path, "hyp", "a\nb\n")
    with pytest.raises(ValueError) as err:
        read_generation_files([r0], hyp)
    assert all(part in str(err.value) for part in (str(r0), str(hyp), "4 lines", "has 3"))
    with pytest.raises(ValueError, match="hypothesis file .* is empty"):
        read_generation_files([r0], _write(tmp_path, "empty", "\n"))


def test_list_count_mismatch() -> None:
    with pytest.raises(ValueError, match="2 reference instances but 1 hypotheses"):
        score_generation([["a"], ["b"]], ["a"])


def test_cli_on_files_keeps_eval_py_trailing_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # METEOR is stubbed (see the Java test below); BLEU, TER and the file handling are real.
    seen = {}

    def fake_meteor(refs_tok: list[list[str]], hyps_tok: list[str]) -> float:
        seen.update(refs=refs_tok, hyps=hyps_tok)
        return 1.0

    monkeypatch.setattr(webnlg, "require_java", lambda: "java")
    monkeypatch.setattr(webnlg, "meteor_files", fake_meteor)
    lines = "the cat sat on the mat .\nalan shepard was born in new hampshire .\n"
    r0 = _write(tmp_path, "reference0", lines)
    r1 = _write(tmp_path, "reference1", "a cat sat on a mat .\nshepard was born in 1923 .\n")
    hyp = _write(tmp_path, "hypothesis", lines)
    assert webnlg.main(["--refs", str(r0), str(r1), "--hyp", str(hyp)]) == 0
    # Perfect outputs, but eval.py's TER mean also takes the empty trailing instance, scored 1.
    assert json.loads(capsys.readouterr().out) == {"BLEU": 100.0, "METEOR": 1.0, "TER": 0.3333}
    assert seen["hyps"][-1] == "" and seen["refs"][-1] == ["", ""]


def test_missing_java_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coco.shutil, "which", lambda name: None)
    with pytest.raises(coco.JavaNotFoundError, match="default-jre-headless"):
        score_generation([["a b"]], ["a b"])


@pytest.mark.java
@pytest.mark.slow
def test_score_generation_with_meteor_jar() -> None:
    # Ragged references (padded with the first), perfect outputs, and one all-empty last
    # instance that METEOR must leave out (the jar would refuse its empty reference lines).
    refs = [["the cat sat on the mat ."], ["shepard was born in 1923 .", "alan shepard was born ."],
            [""]]
    hyps = ["the cat sat on the mat .", "alan shepard was born .", ""]
    expected = {"BLEU": 100.0, "METEOR": 1.0, "TER": pytest.approx(1 / 3)}
    assert score_generation(refs, hyps) == expected
