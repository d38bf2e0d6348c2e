"""NLG data layer: the staged files read as the LoRA repo's converters do, grouping, encoding, batching.

Counts are checked against /work/shared/data/MANIFEST.tsv where it has them; the rest (unique
inputs, seen/unseen sizes) were counted from the files and are asserted so a changed reader shows.
"""

from __future__ import annotations

import csv
import json
import re

import pytest

from lora_repro import paths
from lora_repro.data import nlg
from lora_repro.data.nlg import encode as nlg_encode

try:
    DATA = paths.data_root()
except paths.DataRootError:  # pragma: no cover - CI and developers have ../shared/data
    DATA = None

needs_data = pytest.mark.skipif(DATA is None, reason="no data root (set LORA_REPRO_DATA)")


def _manifest() -> dict[str, str]:
    rows = {}
    with (DATA / "MANIFEST.tsv").open(encoding="utf8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            rows[row["path"]] = row["rows"]
    return rows


# ----------------------------------------------------------------------------------------------
# A GPT-2-style byte-level BPE tokenizer, trained in memory on E2E lines (kept local on purpose).
# ----------------------------------------------------------------------------------------------

E2E_SAMPLE = [
    "name : The Vaults | Type : pub | price : more than £ 30 | near : Café Adriatic",
    "The Vaults pub near Café Adriatic has a 5 star rating . Prices start at £ 30 .",
    "name : Alimentum | area : city centre | family friendly : no",
    "There is a place in the city centre , Alimentum , that is not family - friendly .",
    "Abilene_Regional_Airport : cityServed : Abilene,_Texas",
    "Mars Hill College : joined : 1973 | Mars Hill College : location : Mars Hill, North Carolina",
]


def _build_tokenizer(bos: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(E2E_SAMPLE * 50, trainer)
    kwargs = {"eos_token": "<|endoftext|>"}
    if bos:
        kwargs["bos_token"] = "<|endoftext|>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    fast.name_or_path = "test-bpe" if bos else "test-bpe-nobos"
    return fast


@pytest.fixture(scope="module")
def tokenizer():
    return _build_tokenizer()


def _decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids, clean_up_tokenization_spaces=False)


# ----------------------------------------------------------------------------------------------
# Readers and counts
# ----------------------------------------------------------------------------------------------


@needs_data
def test_e2e_txt_line_counts_match_manifest():
    manifest = _manifest()
    for split, name in [("train", "train"), ("valid", "valid"), ("test", "test")]:
        examples = nlg.load_examples("e2e", split)
        assert len(examples) == int(manifest[f"e2e/lora_format/{name}.txt"])
    assert [len(nlg.load_examples("e2e", s)) for s in nlg.SPLITS] == [42061, 4672, 4693]


@needs_data
def test_e2e_test_has_630_unique_mrs_in_official_order():
    groups = nlg.group_examples(nlg.load_examples("e2e", "test"))
    assert len(groups) == 630  # the paper's "630 unique MRs" holds for the LoRA test.txt
    # testset.csv lists the MRs alone; its order is the first-seen order of the txt.
    with (DATA / "e2e/original/testset.csv").open(encoding="utf8", newline="") as handle:
        official = [nlg.e2e_mr_to_lora(row["MR"]) for row in csv.DictReader(handle)]
    assert [g.context for g in groups] == official
    assert sum(len(g.references) for g in groups) == 4693
    assert len(nlg.group_examples(nlg.load_examples("e2e", "valid"))) == 547


def test_e2e_mr_converter():
    mr = "name[The Vaults], eatType[pub], priceRange[£20-25], customer rating[5 out of 5], familyFriendly[no]"
    assert nlg.e2e_mr_to_lora(mr) == (
        "name : The Vaults | Type : pub | price : £ 20 - 25 | customer rating : 5 out of 5 | "
        "family friendly : no"
    )
    with pytest.raises(nlg.NLGDataError, match="unknown E2E attribute 'colour'"):
        nlg.e2e_mr_to_lora("name[X], colour[red]")
    with pytest.raises(nlg.NLGDataError, match="cannot parse"):
        nlg.e2e_mr_to_lora("name[X], broken")


@needs_data
@pytest.mark.parametrize("split", ["valid", "test"])
def test_e2e_csv_and_txt_agree(split):
    """Same rows in the same order: MRs exactly (via the converter), references modulo spaces.

    The txt references were tokenised by an outside tool (dev says "isn 't", test "is n't", train
    "£ 20- £ 25"), so only the text without whitespace is identical.
    """
    txt = nlg.load_examples("e2e", split)
    csv_rows = nlg.load_examples("e2e", split, source="csv")
    assert len(txt) == len(csv_rows)
    assert [e.context for e in txt] == [e.context for e in csv_rows]
    strip = re.compile(r"\s+")
    assert [strip.sub("", e.completion) for e in txt] == [strip.sub("", e.completion) for e in csv_rows]
    assert {(e.context, strip.sub("", e.completion)) for e in txt} == {
        (e.context, strip.sub("", e.completion)) for e in csv_rows
    }


@needs_data
@pytest.mark.slow
def test_e2e_csv_and_txt_agree_on_train():
    txt = nlg.load_examples("e2e", "train")
    csv_rows = nlg.load_examples("e2e", "train", source="csv")
    assert [e.context for e in txt] == [e.context for e in csv_rows]
    strip = re.compile(r"\s+")
    assert all(strip.sub("", a.completion) == strip.sub("", b.completion) for a, b in zip(txt, csv_rows, strict=True))


@needs_data
def test_e2e_context_format():
    first = nlg.load_examples("e2e", "test")[0]
    assert first.context == "name : Blue Spice | Type : coffee shop | area : city centre"
    assert first.completion == "A coffee shop in the city centre area called Blue Spice ."


@needs_data
def test_webnlg_counts_and_seen_split():
    manifest = _manifest()
    test = nlg.load_examples("webnlg", "test")
    raw = json.loads((DATA / "webnlg/lora_format/test.json").read_text(encoding="utf8"))
    assert len(raw["entries"]) == int(manifest["webnlg/lora_format/test.json"].split()[0]) == 1862
    assert len(test) == 4928  # every test lexicalisation is "good"
    groups = nlg.group_examples(test)
    assert len(groups) == 1862
    seen, unseen = nlg.filter_groups(groups, "seen"), nlg.filter_groups(groups, "unseen")
    assert (len(seen), len(unseen)) == (971, 891)
    assert sum(e.seen for e in test) == 2495 and sum(not e.seen for e in test) == 2433
    assert {g.category for g in unseen} == {
        "Artist", "Athlete", "CelestialBody", "MeanOfTransportation", "Politician"
    }
    assert {g.category for g in seen} == set(nlg.WEBNLG_SEEN_CATEGORIES)
    first = test[0]
    assert first.context == "Abilene_Regional_Airport : cityServed : Abilene,_Texas"
    assert (first.category, first.seen) == ("Airport", True)
    # train/dev drop the lexicalisations commented "toFix"
    assert len(nlg.load_examples("webnlg", "train")) == 18025
    assert len(nlg.load_examples("webnlg", "dev")) == 2258


def test_webnlg_reader_builds_context_and_filters_comments(tmp_path):
    entry = {
        "category": "Artist",
        "modifiedtripleset": [
            {"subject": "A_B", "property": "birthPlace", "object": "C,_D"},
            {"subject": "A_B", "property": "genre", "object": "Rock_music"},
        ],
        "lexicalisations": [
            {"comment": "good", "lex": "A B, born in C, plays rock."},
            {"comment": "toFix", "lex": "bad"},
        ],
    }
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"entries": [{"1": entry}]}), encoding="utf8")
    (ex,) = nlg.read_webnlg_json(path)
    assert ex == nlg.NLGExample(
        "A_B : birthPlace : C,_D | A_B : genre : Rock_music", "A B, born in C, plays rock.", "Artist", False
    )
    path.write_text(json.dumps({"entries": [{"1": {"category": "Food"}}]}), encoding="utf8")
    with pytest.raises(nlg.NLGDataError, match=r"t\.json: entry 0"):
        nlg.read_webnlg_json(path)


@needs_data
def test_dart_counts_and_context():
    manifest = _manifest()
    dev = nlg.load_examples("dart", "dev")
    assert manifest["dart/dart-v1.1.1-full-dev.json"] == "2768 entries / 6980 refs"
    assert len(dev) == 6980
    assert len(json.loads((DATA / "dart/dart-v1.1.1-full-dev.json").read_text(encoding="utf8"))) == 2768
    mars_hill = "Mars Hill College : joined : 1973 | Mars Hill College : location : Mars Hill, North Carolina"
    assert dev[0].context == mars_hill
    assert dev[0].seen is None
    assert len(nlg.group_examples(dev)) == 2721  # identical triple sets merge, as in gpt2_decode
    test = nlg.load_examples("dart", "test")
    assert len(test) == 12552
    assert len(nlg.group_examples(test)) == 4159


def test_dart_reader_lowercases_property_only(tmp_path):
    path = tmp_path / "d.json"
    data = [{
        "tripleset": [["[TABLECONTEXT]", "[TITLE]", "Jeff Daniels"], ["X", "NO._OF_CHANNELS", "1"]],
        "annotations": [{"source": "s", "text": "t1"}, {"source": "s", "text": "t2"}],
    }]
    path.write_text(json.dumps(data), encoding="utf8")
    examples = nlg.read_dart_json(path)
    expected = "[TABLECONTEXT] : [title] : Jeff Daniels | X : no._of_channels : 1"
    assert [e.context for e in examples] == [expected] * 2
    assert [e.completion for e in examples] == ["t1", "t2"]


@needs_data
def test_dart_train_missing_is_explained():
    with pytest.raises(nlg.NLGDataMissing, match=r"DART train split is not staged.*Yale-LILY/dart"):
        nlg.load_examples("dart", "train")


def test_unknown_names_and_missing_root(tmp_path):
    with pytest.raises(ValueError, match="unknown NLG dataset 'wikisql'"):
        nlg.load_examples("wikisql", "train", data_root=tmp_path)
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        nlg.load_examples("e2e", "holdout", data_root=tmp_path)
    with pytest.raises(nlg.NLGDataMissing, match="e2e valid file not found"):
        nlg.load_examples("e2e", "dev", data_root=tmp_path)
    with pytest.raises(ValueError, match="applies to E2E only"):
        nlg.load_examples("dart", "test", data_root=tmp_path, source="csv")


def test_malformed_e2e_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("name : A||A is here .\nname : B without separator\n", encoding="utf8")
    with pytest.raises(nlg.NLGDataError, match=r"bad\.txt:2: .*no '\|\|'"):
        nlg.read_e2e_txt(path)
    path.write_text("name : A||x||y\n", encoding="utf8")
    with pytest.raises(nlg.NLGDataError, match=r"bad\.txt:1: .*2 '\|\|'"):
        nlg.read_e2e_txt(path)
    path.write_text("name : A||A is here . \n", encoding="utf8")
    assert nlg.read_e2e_txt(path) == [nlg.NLGExample("name : A", "A is here .")]


# ----------------------------------------------------------------------------------------------
# Grouping and subsets
# ----------------------------------------------------------------------------------------------


def test_grouping_preserves_all_references_in_order():
    examples = [
        nlg.NLGExample("a", "r1 "), nlg.NLGExample("b", "s1"), nlg.NLGExample("a", "r2<|endoftext|>junk"),
        nlg.NLGExample("c", "t1\n\nmore"), nlg.NLGExample("b", "s2"),
    ]
    assert nlg.group_references(examples) == [("a", ["r1", "r2"]), ("b", ["s1", "s2"]), ("c", ["t1"])]


@needs_data
def test_grouping_keeps_every_e2e_test_reference():
    examples = nlg.load_examples("e2e", "test")
    groups = nlg.group_references(examples)
    assert sum(len(refs) for _, refs in groups) == len(examples)
    by_context: dict[str, list[str]] = {}
    for ex in examples:
        by_context.setdefault(ex.context, []).append(ex.completion.strip())
    assert dict(groups) == by_context


def test_subsets_are_deterministic_nested_and_ordered():
    examples = [nlg.NLGExample(str(i), str(i)) for i in range(100)]
    small, large = nlg.subset_examples(examples, 10, 3), nlg.subset_examples(examples, 30, 3)
    assert small == nlg.subset_examples(examples, 10, 3)
    assert set(small) <= set(large)
    assert [int(e.context) for e in large] == sorted(int(e.context) for e in large)
    assert nlg.subset_examples(examples, 10, 4) != small
    assert nlg.subset_examples(examples, None) == examples
    groups = nlg.group_examples(examples)
    assert [g.context for g in nlg.select_groups(groups, 3)] == ["0", "1", "2"]
    sampled = nlg.select_groups(groups, 5, seed=1)
    assert sampled == nlg.select_groups(groups, 5, seed=1) and len(sampled) == 5


# ----------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------


def test_encode_pair_masks_exactly_the_prompt(tokenizer):
    context = "name : Alimentum | area : city centre | family friendly : no"
    completion = "There is a place in the city centre , Alimentum , that is not family - friendly ."
    enc = nlg.encode_pair(tokenizer, context, completion)
    prompt = nlg.encode_prompt(tokenizer, context)
    eos = tokenizer.eos_token_id
    assert prompt[-1] == tokenizer.bos_token_id == eos  # the "bos" closes the context
    assert enc["input_ids"][: len(prompt)] == prompt
    assert enc["labels"][: len(prompt)] == [-100] * len(prompt)
    target = enc["labels"][len(prompt):]
    assert -100 not in target and target == enc["input_ids"][len(prompt):]
    assert target[-1] == eos
    assert _decode(tokenizer, target) == " " + completion + "<|endoftext|>"
    assert _decode(tokenizer, prompt) == context + "<|endoftext|>"
    no_specials = nlg.encode_pair(tokenizer, context, completion, add_bos=False, add_eos=False)
    assert len(no_specials["input_ids"]) == len(enc["input_ids"]) - 2


def test_encode_pair_truncates_from_the_right(tokenizer):
    full = nlg.encode_pair(tokenizer, "name : The Vaults", "The Vaults pub near Café Adriatic .")
    cut = nlg.encode_pair(tokenizer, "name : The Vaults", "The Vaults pub near Café Adriatic .", max_length=8)
    assert cut["input_ids"] == full["input_ids"][:8] and cut["labels"] == full["labels"][:8]
    prompt = nlg.encode_prompt(tokenizer, "name : The Vaults | Type : pub", max_length=4)
    assert len(prompt) == 4 and prompt[-1] == tokenizer.eos_token_id


def test_tokenizer_without_bos_uses_eos_as_separator():
    tok = _build_tokenizer(bos=False)
    assert tok.bos_token_id is None
    enc = nlg.encode_pair(tok, "name : A", "A .")
    prompt = nlg.encode_prompt(tok, "name : A")
    assert prompt[-1] == tok.eos_token_id
    assert enc["labels"].count(-100) == len(prompt)
    assert nlg.pad_id_for(tok) == tok.eos_token_id


def test_collate_pads_dynamically(tokenizer):
    features = [
        nlg.encode_pair(tokenizer, "name : A", "A ."),
        nlg.encode_pair(tokenizer, "name : The Vaults | Type : pub", "The Vaults is a pub near Café Adriatic ."),
    ]
    pad = nlg.pad_id_for(tokenizer)
    batch = nlg.Collator(tokenizer)(features)
    width = max(len(f["input_ids"]) for f in features)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, width)
    n = len(features[0]["input_ids"])
    assert batch["input_ids"][0, n:].tolist() == [pad] * (width - n)
    assert batch["labels"][0, n:].tolist() == [-100] * (width - n)
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (width - n)
    prompts = nlg.collate([{"input_ids": [5, 6]}, {"input_ids": [7, 8, 9]}], pad, padding_side="left")
    assert "labels" not in prompts
    assert prompts["input_ids"][0].tolist() == [pad, 5, 6]
    assert prompts["attention_mask"][0].tolist() == [0, 1, 1]


@needs_data
def test_encode_split_caches_and_keys(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "cache"))
    first = nlg.encode_split(tokenizer, "e2e", "valid", 128, subset_size=40, subset_seed=1)
    files = list((tmp_path / "cache" / "nlg").glob("*.pt"))
    assert len(first) == 40 and len(files) == 1
    examples = nlg.subset_examples(nlg.load_examples("e2e", "valid"), 40, 1)
    assert first == [nlg.encode_pair(tokenizer, e.context, e.completion, 128) for e in examples]

    def fail(*args, **kwargs):
        raise AssertionError("cache not used")

    monkeypatch.setattr(nlg_encode, "load_examples", fail)  # where encode_split looks it up
    assert nlg.encode_split(tokenizer, "e2e", "valid", 128, subset_size=40, subset_seed=1) == first
    monkeypatch.undo()
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "cache"))
    nlg.encode_split(tokenizer, "e2e", "dev", 256, subset_size=40, subset_seed=1)
    nlg.encode_split(_build_tokenizer(bos=False), "e2e", "valid", 128, subset_size=40, subset_seed=1)
    assert len(list((tmp_path / "cache" / "nlg").glob("*.pt"))) == 3
    assert not list((tmp_path / "cache" / "nlg").glob(".*tmp"))


@needs_data
def test_encode_split_drops_examples_without_completion(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path))
    with pytest.warns(UserWarning, match="no completion token left at max_length=5"):
        out = nlg.encode_split(tokenizer, "e2e", "valid", 5, subset_size=10)
    assert out == []
