"""Scorer input files (lora_repro.metrics.files): the layouts gpt2_decode.py writes for each scorer."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_repro.data.nlg import InputGroup
from lora_repro.metrics import files


def test_write_e2e_files(tmp_path):
    groups = [("a", ["Ref one .", "Ref two ."]), ("b", ["Only ref ."])]
    hyps = ["Hyp one .<|endoftext|>", "Hyp two .\n\nrubbish"]
    files.write_e2e_files(groups, hyps, tmp_path / "ref.txt", tmp_path / "hyp.txt")
    assert (tmp_path / "ref.txt").read_text(encoding="utf8") == "Ref one .\nRef two .\n\nOnly ref .\n\n"
    assert (tmp_path / "hyp.txt").read_text(encoding="utf8") == "Hyp one .\nHyp two .\n"
    with pytest.raises(ValueError, match="1 hypotheses for 2 unique inputs"):
        files.write_e2e_files(groups, hyps[:1], tmp_path / "r", tmp_path / "h")
    with pytest.raises(ValueError, match="empty reference"):
        files.write_e2e_files([("a", [" "])], ["x"], tmp_path / "r", tmp_path / "h")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hyp.txt", "ref.txt"]


def test_write_multi_ref_files_pads_with_first_and_tokenises(tmp_path):
    groups = [
        InputGroup("x", ["Isn't it £20-25?", "Second."], "Artist", False),
        InputGroup("y", [f"R{i}" for i in range(8)], "Food", True),
    ]
    out = files.write_multi_ref_files(groups, ["Hyp A's.", "HYP B"], tmp_path / "refs", n_refs=3)
    read = [Path(p).read_text(encoding="utf8").splitlines() for p in out["references"]]
    assert read == [["isn ' t it £ 20 - 25 ?", "r0"], ["second .", "r1"], ["isn ' t it £ 20 - 25 ?", "r2"]]
    assert Path(out["hypothesis"]).read_text(encoding="utf8") == "hyp a ' s .\nhyp b\n"
    assert out["reference_prefix"] == tmp_path / "refs" / "reference"
    raw = files.write_multi_ref_files(groups[:1], ["H"], tmp_path / "raw", n_refs=2, tokenize=False, lower=False)
    assert Path(raw["references"][0]).read_text(encoding="utf8") == "Isn't it £20-25?\n"
    with pytest.raises(ValueError, match="2 hypotheses for 1 unique inputs"):
        files.write_multi_ref_files(groups[:1], ["a", "b"], tmp_path / "x")
