"""The data helpers both task families share: subset routine, batch order, tokenizer fingerprint, cache.

The pinned orders below are what the committed GLUE and NLG records were trained with; a change to
either stream or ranking changes those runs' rows or batches, so these tests must fail on it.
"""

from __future__ import annotations

import hashlib
import random
from itertools import chain

import pytest
import torch

from lora_repro import paths
from lora_repro.data import cache
from lora_repro.data.batching import LengthGroupedBatches, make_batches
from lora_repro.data.subset import seeded_subset

LENGTHS = torch.tensor([5, 1, 9, 3, 7, 2, 8, 4, 6, 10])


def _batches(**kwargs) -> list[list[int]]:
    options = {"batch_size": 3, "shuffle": True, "seed": 0, "group_by_length": False, "stream": "torch"}
    return list(LengthGroupedBatches(LENGTHS, **{**options, **kwargs}))


# --------------------------------------------------------------------------------------- subsets


@pytest.mark.parametrize("ranking", ["draws", "shuffle"])
def test_subset_is_seeded_nested_and_in_file_order(ranking):
    rows = list(range(100))
    ten = seeded_subset(rows, 10, 3, ranking)
    assert ten == seeded_subset(rows, 10, 3, ranking) != seeded_subset(rows, 10, 4, ranking)
    assert ten == sorted(ten) and set(ten) <= set(seeded_subset(rows, 30, 3, ranking))
    assert seeded_subset(rows, None, 0, ranking) == rows == seeded_subset(rows, 500, 0, ranking)
    assert seeded_subset(rows, 0, 0, ranking) == []


def test_subset_rankings_are_the_committed_ones():
    rows = list(range(20))
    # GLUE: rows ranked by one random() draw each; NLG: the head of a Random.shuffle.
    draws = random.Random(0)
    keys = [draws.random() for _ in rows]
    shuffled = list(rows)
    random.Random(0).shuffle(shuffled)
    assert seeded_subset(rows, 5, 0, "draws") == sorted(sorted(rows, key=keys.__getitem__)[:5]) == [3, 5, 7, 12, 15]
    assert seeded_subset(rows, 5, 0, "shuffle") == sorted(shuffled[:5]) == [0, 10, 14, 16, 18]


def test_subset_rejects_bad_input():
    with pytest.raises(ValueError, match="subset size must be >= 0 or None, got -1"):
        seeded_subset([1, 2], -1, 0, "draws")
    with pytest.raises(ValueError, match="unknown subset ranking 'random'; use one of: draws, shuffle"):
        seeded_subset([1, 2], 1, 0, "random")


# ---------------------------------------------------------------------------------- batch order


def test_unshuffled_order_is_file_order_or_longest_first():
    assert _batches(shuffle=False) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert _batches(shuffle=False, group_by_length=True) == [[9, 2, 6], [4, 8, 0], [7, 3, 5], [1]]


def test_streams_are_the_committed_ones():
    # torch (GLUE): randperm seeded by SHA-256 of "seed:epoch"; python (NLG): Random("seed:epoch").shuffle.
    mixed = hashlib.sha256(b"0:0").digest()[:8]
    generator = torch.Generator().manual_seed(int.from_bytes(mixed, "little"))
    expected_torch = [chunk.tolist() for chunk in torch.randperm(10, generator=generator).split(3)]
    order = list(range(10))
    random.Random("0:0").shuffle(order)
    expected_python = [order[i : i + 3] for i in range(0, 10, 3)]
    assert _batches() == expected_torch == [[3, 8, 7], [5, 0, 1], [2, 4, 6], [9]]
    assert _batches(stream="python") == expected_python == [[5, 0, 3], [2, 7, 8], [6, 4, 1], [9]]
    assert _batches(group_by_length=True) == [[1], [9, 2, 6], [7, 3, 5], [4, 8, 0]]


@pytest.mark.parametrize("stream", ["torch", "python"])
@pytest.mark.parametrize("group", [False, True])
def test_each_epoch_is_complete_and_reproducible(stream, group):
    lengths = torch.randint(1, 50, (400,), generator=torch.Generator().manual_seed(0))
    sampler = LengthGroupedBatches(lengths, 3, True, 7, group, stream)
    epoch0, epoch1 = list(sampler), list(sampler)
    assert sorted(chain.from_iterable(epoch0)) == sorted(chain.from_iterable(epoch1)) == list(range(400))
    assert epoch0 != epoch1 and len(epoch0) == len(sampler) == 134
    again = LengthGroupedBatches(lengths, 3, True, 7, group, stream)
    again.set_epoch(1)
    assert list(again) == epoch1


def test_grouping_reduces_padding():
    lengths = torch.randint(1, 200, (2000,), generator=torch.Generator().manual_seed(0))

    def padded_width(group: bool) -> int:
        sampler = LengthGroupedBatches(lengths, 16, True, 0, group, "python")
        return sum(int(lengths[batch].max()) * len(batch) for batch in sampler)

    assert padded_width(True) < 0.8 * padded_width(False)


def test_make_batches_collates_rows_in_sampler_order():
    rows = [f"row{i}" for i in range(10)]
    loader = make_batches(rows, LENGTHS, list, 3, shuffle=False, group_by_length=True)
    assert list(loader) == [["row9", "row2", "row6"], ["row4", "row8", "row0"], ["row7", "row3", "row5"], ["row1"]]
    assert isinstance(loader.batch_sampler, LengthGroupedBatches)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        make_batches(rows, LENGTHS, list, 0)
    with pytest.raises(ValueError, match="unknown shuffle stream 'numpy'"):
        make_batches(rows, LENGTHS, list, 2, stream="numpy")


# ------------------------------------------------------------------------- fingerprint and cache


def _tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(["[UNK]", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[UNK]")


def test_fingerprint_tells_same_sized_vocabularies_apart_and_ignores_call_settings():
    first, same, other = _tokenizer(["a", "b"]), _tokenizer(["a", "b"]), _tokenizer(["a", "c"])
    assert len(first) == len(other)
    assert cache.tokenizer_fingerprint(first) == cache.tokenizer_fingerprint(same)
    assert cache.tokenizer_fingerprint(first) != cache.tokenizer_fingerprint(other)
    before = cache.tokenizer_fingerprint(first)
    first(["a b a"], truncation=True, max_length=2, padding="max_length")  # leaves settings on the backend
    assert cache.tokenizer_fingerprint(first) == before
    first.eos_token = "b"
    assert cache.tokenizer_fingerprint(first) != before  # the NLG encoder appends eos itself


def test_cache_builds_once_per_key_and_rebuilds_bad_files(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path))
    builds = []

    def build() -> dict[str, torch.Tensor]:
        builds.append(1)
        return {"ids": torch.arange(len(builds) + 2)}

    key = {"task": "t", "n": 1}
    data, path, hit = cache.load_or_build("fam", key, build)
    assert not hit and path.parent == tmp_path / "fam" and torch.equal(data["ids"], torch.arange(3))
    again, _, hit = cache.load_or_build("fam", dict(key), build)
    assert hit and torch.equal(again["ids"], data["ids"]) and len(builds) == 1
    cache.load_or_build("fam", {"task": "t", "n": 2}, build)
    assert len(builds) == 2 and len(list((tmp_path / "fam").glob("*.pt"))) == 2
    path.write_bytes(b"not a torch file")
    _, _, hit = cache.load_or_build("fam", key, build)
    assert not hit and len(builds) == 3 and "unreadable cache file" in caplog.text
    assert cache.load_or_build("fam", key, build)[2] and not list((tmp_path / "fam").glob(".*"))


def test_flat_rows_round_trip():
    ids, offsets = cache.flat_rows([[1, 2, 3], [], [4]])
    assert ids.dtype == torch.int32 and ids.tolist() == [1, 2, 3, 4] and offsets.tolist() == [0, 3, 3, 4]
