"""GenerationEval-equivalent BLEU/METEOR/TER: official scores on raw-text fixtures, hand-checked
cases, padding, file parsing, errors.

Ground truth: tests/fixtures/generationeval (scores of the official eval.py on those files, see its
README). BLEU and TER need no Java; METEOR does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sacrebleu
from helpers import write_text as _write

from lora_repro.metrics import coco, webnlg
from lora_repro.metrics.bleu_nist import mteval_tokenize
from lora_repro.metrics.webnlg import (
    corpus_ter,
    multi_bleu_detok,
    pad_references,
    read_generation_files,
    score_generation,
    ter,
    word_tokenize,
)

FIXTURES = Path(__file__).parent / "fixtures" / "generationeval"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
RAW_CASES = ["raw_punct", "nonascii_ws"]


def _fixture(name: str) -> tuple[list[list[str]], list[str]]:
    spec = EXPECTED[name]
    ref_paths = [FIXTURES / name / f"reference{k}" for k in range(spec["num_refs"])]
    refs, hyps = read_generation_files(ref_paths, FIXTURES / name / "hypothesis")
    assert len(hyps) == spec["instances"]
    return refs, hyps


@pytest.mark.parametrize("name", [*RAW_CASES, "trailing_newline"])
def test_bleu_and_ter_equal_official_on_raw_text(name: str) -> None:
    refs, hyps = _fixture(name)
    # A final newline ends the last line (eval.py itself cannot score such files; see expected.json).
    official = EXPECTED[EXPECTED[name].get("same_lines_as", name)]["official"]
    refs_tok = [[word_tokenize(r) for r in inst] for inst in refs]
    assert multi_bleu_detok(refs, hyps) == official["BLEU"]
    assert corpus_ter(refs_tok, [word_tokenize(h) for h in hyps]) == pytest.approx(official["TER"], abs=1e-12)


@pytest.mark.java
@pytest.mark.slow
@pytest.mark.parametrize("name", RAW_CASES)
def test_all_scores_equal_official_on_raw_text(name: str) -> None:
    refs, hyps = _fixture(name)
    scores = score_generation(refs, hyps)
    assert scores == pytest.approx(EXPECTED[name]["official"], abs=1e-12)


def test_word_tokenize_splits_sentences_like_nltk_punkt() -> None:
    # Expected strings: nltk 3.5's word_tokenize with nltk_data's punkt english.pickle.
    assert (word_tokenize("Alan Shepard was born in New Hampshire. He died in California.")
            == "Alan Shepard was born in New Hampshire . He died in California .")
    assert (word_tokenize("Dr. Smith works at the U.S. Army. He is 45 years old.")
            == "Dr. Smith works at the U.S. Army . He is 45 years old .")
    assert (word_tokenize("It is cheap. it is family friendly. It is near Café Rouge!")
            == "It is cheap . it is family friendly . It is near Café Rouge !")
    assert (word_tokenize("Aarhus Airport serves Aarhus, Denmark.The runway is 2,776 m long...")
            == "Aarhus Airport serves Aarhus , Denmark.The runway is 2,776 m long ...")
    assert word_tokenize('He said "yes." Then he left.') == "He said `` yes . '' Then he left ."


def test_english_punkt_parameters_have_nltk_model_sizes() -> None:
    # nltk_data's english.pickle: 156 abbreviations, 37 collocations, 39 sentence starters and
    # 20,366 orthographic-context entries (the package's tables were compared with it entry by entry).
    params = webnlg._english_punkt()._params  # fresh: lookups add zero entries to the defaultdict
    sizes = (len(params.abbrev_types), len(params.collocations), len(params.sent_starters),
             len(params.ortho_context))
    assert sizes == (156, 37, 39, 20366)


def test_bleu_splits_tokens_at_ascii_whitespace_only() -> None:
    # multi-bleu-detok.perl reads undecoded bytes: no-break space, thin space, U+0085, U+2028 and
    # U+3000 stay inside their token.
    for space in ("\u00a0", "\u2009", "\u0085", "\u2028", "\u3000"):
        assert mteval_tokenize(f"New{space}Hampshire", perl=True, perl_bytes=True) == [f"New{space}Hampshire"]
    assert mteval_tokenize("a\tb\x0bc\x0cd\re", perl=True, perl_bytes=True) == list("abcde")
    assert mteval_tokenize("New\u00a0Hampshire", perl=True) == ["New", "Hampshire"]  # mteval-v13a (E2E)


def test_identical_output_scores_bleu_100_and_ter_0() -> None:
    refs = [["the cat sat on the mat ."], ["alan shepard was born in new hampshire ."]]
    hyps = [r[0] for r in refs]
    assert multi_bleu_detok(refs, hyps) == 100.0
    assert ter(hyps[1].split(), refs[1][0].split()) == 0.0


def test_ter_hand_checked() -> None:
    assert ter(["a", "b", "c"], ["a", "b", "d"]) == pytest.approx(1 / 3)  # one substitution
    # "a" moved to the front is one shift, where plain edit distance would need two edits.
    assert ter(["b", "c", "a"], ["a", "b", "c"]) == pytest.approx(1 / 3)
    assert ter([], ["a", "b"]) == 1.0  # two insertions over two reference words
    # pyter's own docstring example: 4 edits (1 shift + 3) over 13 reference words.
    ref = "SAUDI ARABIA denied THIS WEEK information published in the AMERICAN new york times"
    hyp = "THIS WEEK THE SAUDIS denied information published in the new york times"
    assert f"{ter(hyp.split(), ref.split()):.3f}" == "0.308"


def test_bleu_matches_sacrebleu_13a_without_empty_references() -> None:
    refs = [["The Eagle is a coffee shop, near Burger King.", "Near Burger King is The Eagle."],
            ["Zizzi is a pub in the city centre.", "Zizzi is a moderately priced pub."]]
    hyps = ["The Eagle is a coffee shop near Burger King.", "Zizzi is a pub in the centre."]
    expected = sacrebleu.corpus_bleu(hyps, [list(r) for r in zip(*refs, strict=True)], tokenize="13a",
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


def test_a_final_newline_ends_the_last_line(tmp_path: Path) -> None:
    r0 = _write(tmp_path, "reference0", "a b\nc d\n")
    r1 = _write(tmp_path, "reference1", "a x\nc y")
    hyp = _write(tmp_path, "hyp", "a b\nc d\n")
    refs, hyps = read_generation_files([r0, r1], hyp)
    assert hyps == ["a b", "c d"]  # eval.py's split("\n") would add an empty third instance
    assert refs == [["a b", "a x"], ["c d", "c y"]]
    # Only one newline is a terminator: a blank last line is an (empty) instance of its own.
    refs, hyps = read_generation_files([_write(tmp_path, "r", "a\n\n")], _write(tmp_path, "h", "a\n\n"))
    assert hyps == ["a", ""] and refs == [["a"], [""]]


def test_file_count_mismatch_names_files_and_counts(tmp_path: Path) -> None:
    r0 = _write(tmp_path, "reference0", "a\nb\nc\n")
    hyp = _write(tmp_path, "hyp", "a\nb\n")
    with pytest.raises(ValueError) as err:
        read_generation_files([r0], hyp)
    assert all(part in str(err.value) for part in (str(r0), str(hyp), "3 lines", "has 2"))
    with pytest.raises(ValueError, match=r"hypothesis file .* is empty"):
        read_generation_files([r0], _write(tmp_path, "empty", "\n"))


def test_list_count_mismatch() -> None:
    with pytest.raises(ValueError, match="2 reference instances but 1 hypotheses"):
        score_generation([["a"], ["b"]], ["a"])


def test_cli_on_files_with_final_newlines(
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
    # Perfect outputs; no empty trailing instance enters TER's mean or METEOR's files.
    assert json.loads(capsys.readouterr().out) == {"BLEU": 100.0, "METEOR": 1.0, "TER": 0.0}
    assert len(seen["hyps"]) == 2 and seen["hyps"][-1] and seen["refs"][-1][0]


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
