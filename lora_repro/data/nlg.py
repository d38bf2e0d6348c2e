"""NLG data for the GPT-2 experiments: E2E, WebNLG 2017 and DART, formatted as the paper's code does.

The paper's numbers (Tables 3, 13, 14) come from microsoft/LoRA ``examples/NLG``. Its pipeline is
reproduced here step by step, because each step changes what the model sees or what is scored:

1. ``format_converting_*.py`` -> :func:`load_examples`: one ``(context, completion)`` pair per
   reference. E2E: the text before/after ``||`` of each (stripped) line. WebNLG: the modified
   triples joined as ``"subj : prop : obj | ..."`` (underscores kept), one pair per lexicalisation
   whose comment is ``good``, flagged seen/unseen by category. DART: the same join with the property
   lower-cased, one pair per annotation.
2. ``gpt2_encode.py --add_bos --add_eos`` -> :func:`encode_pair`. The layout is
   ``enc(context) + [bos] + enc(" " + completion) + [eos]``: the "bos" is *appended to the context*
   and acts as the separator (nothing precedes the context), the completion is encoded with a
   leading space, and GPT-2's bos and eos are the same id, 50256.
3. ``data_utils.FT_Dataset`` -> loss only on completion tokens (labels -100 on the prompt and the
   padding); sequences longer than ``max_length`` keep their first tokens (see :func:`encode_pair`).
4. ``gpt2_decode.py`` -> :func:`group_references` and the writers: references are grouped by
   identical context (one hypothesis per unique input), hypotheses are cut at ``<|endoftext|>`` and
   at the first blank line, and WebNLG/DART references are written as ``reference0..5`` padded with
   the first reference, lower-cased and tokenised (``--tokenize --lower``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lora_repro import paths

DATASETS = ("e2e", "webnlg", "dart")
SPLITS = ("train", "valid", "test")
SPLIT_ALIASES = {"dev": "valid", "validation": "valid", "val": "valid"}
IGNORE_INDEX = -100
CACHE_FORMAT_VERSION = 1  # bump when the encoding layout changes, so stale caches are not reused

# format_converting_webnlg.py: the 10 DBpedia categories of the WebNLG 2017 training data. The test
# set adds 5 unseen ones (Artist, Athlete, CelestialBody, MeanOfTransportation, Politician).
WEBNLG_SEEN_CATEGORIES = frozenset(
    {
        "Airport", "Astronaut", "Building", "City", "ComicsCharacter",
        "Food", "Monument", "SportsTeam", "University", "WrittenWork",
    }
)

# E2E attribute names as they appear in the LoRA txt files (taken from the Wiseman et al. aligned
# data that LoRA/PrefixTuning ship); the order of attributes is the CSV's.
E2E_KEY_NAMES = {
    "name": "name",
    "eatType": "Type",
    "familyFriendly": "family friendly",
    "priceRange": "price",
    "customer rating": "customer rating",
    "food": "food",
    "area": "area",
    "near": "near",
}

_E2E_FILES = {
    "lora": {"train": "e2e/lora_format/train.txt", "valid": "e2e/lora_format/valid.txt",
             "test": "e2e/lora_format/test.txt"},
    "csv": {"train": "e2e/original/trainset.csv", "valid": "e2e/original/devset.csv",
            "test": "e2e/original/testset_w_refs.csv"},
}
_WEBNLG_FILES = {"train": "webnlg/lora_format/train.json", "valid": "webnlg/lora_format/dev.json",
                 "test": "webnlg/lora_format/test.json"}
# The LoRA repo reads dart-v1.1.1-full-{train,dev,test}.json; here the test JSON is derived from the
# XML (see PROVENANCE.md), so the canonical name is preferred and the derived one is the fallback.
_DART_FILES = {
    "train": ("dart/dart-v1.1.1-full-train.json",),
    "valid": ("dart/dart-v1.1.1-full-dev.json",),
    "test": ("dart/dart-v1.1.1-full-test.json", "dart/dart-v1.1.1-full-test.from_xml.json"),
}


class NLGDataError(ValueError):
    """A data file is malformed; the message names the file, the line/entry and the fix."""


class NLGDataMissing(FileNotFoundError):
    """A split's source file is not under the data root; the message says where to get it."""


@dataclass(frozen=True)
class NLGExample:
    """One (input, reference) pair exactly as the LoRA converters write it.

    ``context``/``completion`` are the converter's strings, unchanged (the encoder adds the space
    before the completion). ``category``/``seen`` are set for WebNLG only (``seen`` drives the
    paper's U/S/A columns); they are None for E2E and DART.
    """

    context: str
    completion: str
    category: str | None = None
    seen: bool | None = None


@dataclass
class InputGroup:
    """One unique input with all its references, in the order gpt2_decode.py collects them."""

    context: str
    references: list[str] = field(default_factory=list)
    category: str | None = None
    seen: bool | None = None


# ----------------------------------------------------------------------------------------------
# Locating files
# ----------------------------------------------------------------------------------------------


def normalise_split(split: str) -> str:
    """Map dev/validation to ``valid``; raise on anything that is not train/valid/test."""
    name = SPLIT_ALIASES.get(split.lower(), split.lower())
    if name not in SPLITS:
        raise ValueError(
            f"unknown split {split!r}: use one of {', '.join(SPLITS)} (or dev/validation for valid)"
        )
    return name


def _check_dataset(dataset: str) -> str:
    name = dataset.lower()
    if name not in DATASETS:
        raise ValueError(f"unknown NLG dataset {dataset!r}: use one of {', '.join(DATASETS)}")
    return name


def source_path(
    dataset: str, split: str, data_root: str | os.PathLike | None = None, source: str = "lora"
) -> Path:
    """The file a split is read from; raises NLGDataMissing with a fix when it is absent.

    ``source`` matters for E2E only: ``lora`` (the repo's tokenised txt) or ``csv`` (the official
    release, untokenised references).
    """
    dataset, split = _check_dataset(dataset), normalise_split(split)
    root = paths.data_root(data_root)
    if dataset == "e2e":
        if source not in _E2E_FILES:
            raise ValueError(f"unknown E2E source {source!r}: use 'lora' (txt) or 'csv' (original)")
        candidates: tuple[str, ...] = (_E2E_FILES[source][split],)
    elif source != "lora":
        raise ValueError(f"source={source!r} applies to E2E only; {dataset} has one source")
    elif dataset == "webnlg":
        candidates = (_WEBNLG_FILES[split],)
    else:
        candidates = _DART_FILES[split]
    for rel in candidates:
        if (root / rel).is_file():
            return root / rel
    tried = ", ".join(str(root / rel) for rel in candidates)
    if dataset == "dart" and split == "train":
        raise NLGDataMissing(
            f"the DART train split is not staged (looked for {tried}); it was not obtained for this "
            "data root (every copy is >= 4 MiB, see PROVENANCE.md). Fix: get "
            "dart-v1.1.1-full-train.json (github.com/Yale-LILY/dart, data/v1.1.1, the 2020-07 "
            "version LoRA used; the Hugging Face hub dataset 'dart' also has it: check it is "
            "v1.1.1) and put it in <data_root>/dart/, or point data_root / $LORA_REPRO_DATA at a "
            "data root that has it."
        )
    raise NLGDataMissing(
        f"{dataset} {split} file not found (looked for {tried}). Fix: point data_root or "
        "$LORA_REPRO_DATA at the folder holding e2e/, webnlg/ and dart/ (see PROVENANCE.md)."
    )


# ----------------------------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------------------------


def read_e2e_txt(path: str | os.PathLike) -> list[NLGExample]:
    """Read the LoRA ``MR||text`` lines as format_converting_e2e.py does.

    The line is stripped, then split at ``||``: context = the left part, completion = the right.
    A line without exactly one ``||`` (including a blank line) would crash or silently lose text in
    the original script, so it is an error here.
    """
    path = Path(path)
    examples = []
    with path.open(encoding="utf8") as handle:
        for lineno, line in enumerate(handle, 1):
            parts = line.strip().split("||")
            if len(parts) != 2:
                found = "no '||'" if len(parts) == 1 else f"{len(parts) - 1} '||'"
                raise NLGDataError(
                    f"{path}:{lineno}: expected one 'MR || text' pair per line, found {found} in "
                    f"{line.strip()[:80]!r}. Fix: repair or delete that line (the LoRA txt files "
                    "have no blank lines)."
                )
            examples.append(NLGExample(context=parts[0], completion=parts[1]))
    return examples


_E2E_SLOT = re.compile(r"\s*([^\[\],]+?)\s*\[([^\]]*)\]\s*(?:,|$)")


def _split_value(value: str) -> str:
    """Split punctuation off words (``£20-25`` -> ``£ 20 - 25``) as the LoRA MR values are."""
    return " ".join(re.findall(r"\w+|[^\w\s]", value))


def e2e_mr_to_lora(mr: str) -> str:
    """Convert an official E2E MR (``name[The Vaults], eatType[pub]``) to the LoRA txt context.

    Deterministic: attributes keep their order, names are renamed by :data:`E2E_KEY_NAMES`, and
    values get punctuation split off. Checked to reproduce every MR of the three LoRA txt files
    from the official CSVs exactly.
    """
    slots, pos = [], 0
    while pos < len(mr):
        match = _E2E_SLOT.match(mr, pos)
        if match is None or match.end() == pos:
            raise NLGDataError(f"cannot parse E2E MR {mr!r} at character {pos}: expected key[value]")
        key, value = match.group(1), match.group(2)
        if key not in E2E_KEY_NAMES:
            raise NLGDataError(
                f"unknown E2E attribute {key!r} in MR {mr!r}: known are {', '.join(E2E_KEY_NAMES)}"
            )
        slots.append(f"{E2E_KEY_NAMES[key]} : {_split_value(value)}")
        pos = match.end()
    if not slots:
        raise NLGDataError(f"empty E2E MR {mr!r}")
    return " | ".join(slots)


def read_e2e_csv(path: str | os.PathLike) -> list[NLGExample]:
    """Read an official E2E CSV (columns mr, ref) with contexts in the LoRA format.

    References stay untokenised: the LoRA txt references were tokenised by an external tool that is
    not consistent across splits (dev ``isn 't``, test ``is n't``), so only their whitespace-free
    text matches the CSV's.
    """
    path = Path(path)
    examples = []
    with path.open(encoding="utf8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"mr", "ref"} - set(reader.fieldnames or ())
        if missing:
            raise NLGDataError(
                f"{path}: columns {sorted(missing)} missing (header {reader.fieldnames}). Fix: use "
                "trainset.csv, devset.csv or testset_w_refs.csv (testset.csv has no references)."
            )
        for row in reader:
            try:
                context = e2e_mr_to_lora(row["mr"])
            except NLGDataError as err:
                raise NLGDataError(f"{path}:{reader.line_num}: {err}") from None
            examples.append(NLGExample(context=context, completion=row["ref"]))
    return examples


def triples_context(triples: Iterable[Sequence[str]], lower_property: bool = False) -> str:
    """Join (subject, property, object) triples as the LoRA converters do: ``s : p : o | ...``.

    Nothing is normalised (WebNLG keeps ``Abilene,_Texas``); DART lower-cases the property.
    """
    parts = []
    for subject, prop, obj in triples:
        parts.append(f"{subject} : {prop.lower() if lower_property else prop} : {obj}")
    return " | ".join(parts)


def _load_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise NLGDataError(f"{path}: not valid JSON ({err}). Fix: re-fetch the file.") from None


def read_webnlg_json(path: str | os.PathLike) -> list[NLGExample]:
    """Read a LoRA WebNLG 2017 JSON as format_converting_webnlg.py does.

    Each entry is ``{"<i>": {...}}``; the context is the ``modifiedtripleset`` joined by
    :func:`triples_context`, and one example is made per lexicalisation whose ``comment`` is
    ``good`` (train/dev drop the ``toFix`` ones). ``seen`` = category in the 10 training categories.
    """
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise NLGDataError(f"{path}: expected {{'entries': [...]}} (the LoRA WebNLG format)")
    examples = []
    for index, wrapper in enumerate(data["entries"]):
        where = f"{path}: entry {index} (key {index + 1})"
        if not isinstance(wrapper, dict) or len(wrapper) != 1:
            raise NLGDataError(f"{where}: expected a one-key object {{'{index + 1}': {{...}}}}")
        entry = next(iter(wrapper.values()))
        try:
            triples = [(t["subject"], t["property"], t["object"]) for t in entry["modifiedtripleset"]]
            category = entry["category"]
            lexes = [lex["lex"] for lex in entry["lexicalisations"] if lex["comment"] == "good"]
        except (KeyError, TypeError) as err:
            raise NLGDataError(
                f"{where}: missing field {err} (needs category, modifiedtripleset with "
                "subject/property/object, lexicalisations with lex/comment)"
            ) from None
        context = triples_context(triples)
        seen = category in WEBNLG_SEEN_CATEGORIES
        examples.extend(NLGExample(context, lex, category, seen) for lex in lexes)
    return examples


def read_dart_json(path: str | os.PathLike) -> list[NLGExample]:
    """Read a DART v1.1.1 JSON as format_converting_dart.py does (property lower-cased).

    One example per annotation, its ``text`` as the completion (one test annotation is empty; it is
    kept, as the LoRA script keeps it).
    """
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, list):
        raise NLGDataError(f"{path}: expected a list of entries (the DART JSON format)")
    examples = []
    for index, entry in enumerate(data):
        try:
            triples = [tuple(t) for t in entry["tripleset"]]
            texts = [ann["text"] for ann in entry["annotations"]]
        except (KeyError, TypeError) as err:
            raise NLGDataError(
                f"{path}: entry {index}: missing field {err} (needs tripleset, annotations[].text)"
            ) from None
        if any(len(t) != 3 for t in triples):
            raise NLGDataError(f"{path}: entry {index}: a triple is not [subject, property, object]")
        context = triples_context(triples, lower_property=True)
        examples.extend(NLGExample(context, text) for text in texts)
    return examples


def load_examples(
    dataset: str, split: str, data_root: str | os.PathLike | None = None, source: str = "lora"
) -> list[NLGExample]:
    """All (context, completion) pairs of one split, in file order (see the module docstring)."""
    path = source_path(dataset, split, data_root, source)
    name = dataset.lower()
    if name == "e2e":
        return read_e2e_txt(path) if source == "lora" else read_e2e_csv(path)
    if name == "webnlg":
        return read_webnlg_json(path)
    return read_dart_json(path)


# ----------------------------------------------------------------------------------------------
# Grouping and subsets
# ----------------------------------------------------------------------------------------------


def reference_text(completion: str) -> str:
    """A completion as gpt2_decode.py keeps it as a reference: cut at eos / blank line, stripped."""
    return completion.split("<|endoftext|>")[0].split("\n\n")[0].strip()


def group_examples(examples: Iterable[NLGExample]) -> list[InputGroup]:
    """One group per unique context, first-seen order, with all references (and WebNLG's flags).

    The LoRA repo beams every test line and keeps one hypothesis per context; decoding each unique
    context once gives the same files for a fraction of the work.
    """
    groups: dict[str, InputGroup] = {}
    for ex in examples:
        group = groups.get(ex.context)
        if group is None:
            group = groups[ex.context] = InputGroup(ex.context, [], ex.category, ex.seen)
        elif group.seen != ex.seen:
            raise NLGDataError(
                f"context {ex.context[:80]!r} appears in both a seen and an unseen category "
                f"({group.category}, {ex.category}); the U/S split would be ambiguous"
            )
        group.references.append(reference_text(ex.completion))
    return list(groups.values())


def group_references(examples: Iterable[NLGExample]) -> list[tuple[str, list[str]]]:
    """``[(context, [references...]), ...]``, one entry per unique context in first-seen order."""
    return [(g.context, g.references) for g in group_examples(examples)]


def filter_groups(groups: Sequence[InputGroup], which: str = "all") -> list[InputGroup]:
    """Keep all / seen / unseen inputs (gpt2_decode.py ``--filter``); for WebNLG's U/S/A columns."""
    if which == "all":
        return list(groups)
    if which not in ("seen", "unseen"):
        raise ValueError(f"filter {which!r}: use all, seen or unseen")
    if any(g.seen is None for g in groups):
        raise ValueError("seen/unseen filtering needs WebNLG groups (they carry the seen flag)")
    return [g for g in groups if g.seen == (which == "seen")]


def _seeded_order(n: int, seed: int) -> list[int]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def subset_examples(
    examples: Sequence[NLGExample], size: int | None, seed: int = 0
) -> list[NLGExample]:
    """A deterministic sample of ``size`` examples (all if None or too few), in file order.

    Taken from a seeded permutation, so a smaller subset is contained in a larger one (same seed).
    """
    if size is None or size >= len(examples):
        return list(examples)
    if size < 0:
        raise ValueError(f"subset size must be >= 0, got {size}")
    keep = sorted(_seeded_order(len(examples), seed)[:size])
    return [examples[i] for i in keep]


def select_groups(
    groups: Sequence[InputGroup], n: int | None = None, seed: int | None = None
) -> list[InputGroup]:
    """The first ``n`` unique inputs, or with ``seed`` a seeded sample of ``n`` (kept in order)."""
    if n is None or n >= len(groups):
        return list(groups)
    if n < 0:
        raise ValueError(f"number of inputs must be >= 0, got {n}")
    if seed is None:
        return list(groups[:n])
    keep = sorted(_seeded_order(len(groups), seed)[:n])
    return [groups[i] for i in keep]


# ----------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------


def separator_id(tokenizer: Any) -> int:
    """The token appended after the context (``--add_bos``): bos, or eos where bos is None.

    GPT-2 has bos = eos = ``<|endoftext|>`` (50256), which is what the LoRA code hard-codes; a
    tokenizer without a bos token gets the same behaviour through its eos.
    """
    token_id = tokenizer.bos_token_id
    if token_id is None:
        token_id = tokenizer.eos_token_id
    if token_id is None:
        raise ValueError(
            f"{type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '')!r}) has neither a "
            "bos nor an eos token. Fix: set tokenizer.eos_token (e.g. '<|endoftext|>')."
        )
    return int(token_id)


def _eos_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no eos token, needed for add_eos. Fix: set "
            "tokenizer.eos_token or pass add_eos=False."
        )
    return int(tokenizer.eos_token_id)


def pad_id_for(tokenizer: Any) -> int:
    """Pad with the tokenizer's pad token, else eos (GPT-2 has no pad; padding is masked anyway)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return _eos_id(tokenizer)


def _encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens (the LoRA encoder adds none), batched for speed."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _assemble(
    context_ids: list[int],
    completion_ids: list[int],
    max_length: int | None,
    sep: int | None,
    eos: int | None,
) -> dict[str, list[int]]:
    prompt = context_ids + ([sep] if sep is not None else [])
    target = completion_ids + ([eos] if eos is not None else [])
    input_ids = prompt + target
    labels = [IGNORE_INDEX] * len(prompt) + target
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def encode_pair(
    tokenizer: Any,
    context: str,
    completion: str,
    max_length: int | None = None,
    add_bos: bool = True,
    add_eos: bool = True,
) -> dict[str, list[int]]:
    """Training ids as gpt2_encode.py + FT_Dataset build them; loss only on the completion.

    ``input_ids = enc(context) + [bos] + enc(" " + completion) + [eos]`` and ``labels`` are -100 on
    ``enc(context) + [bos]`` (the prompt, :func:`encode_prompt`) and the ids elsewhere; the model
    shifts labels itself. Truncation keeps the first ``max_length`` tokens, as FT_Dataset does:
    the prompt then stays identical to the one used at generation (cutting the context from the
    left would drop the leading ``name : ...`` slot the model is asked about), and only the
    completion's tail is lost. An example whose prompt fills ``max_length`` has no label left.
    """
    context_ids, completion_ids = _encode_texts(tokenizer, [context, " " + completion])
    sep = separator_id(tokenizer) if add_bos else None
    eos = _eos_id(tokenizer) if add_eos else None
    return _assemble(context_ids, completion_ids, max_length, sep, eos)


def encode_prompt(
    tokenizer: Any, context: str, add_bos: bool = True, max_length: int | None = None
) -> list[int]:
    """Generation prefix: ``enc(context) + [bos]``, i.e. the training input up to the completion.

    With ``max_length`` the prompt keeps its *last* tokens, as the repo's beam query does (its
    length is seq_len - eval_len), so it still ends with the separator.
    """
    ids = _encode_texts(tokenizer, [context])[0]
    if add_bos:
        ids.append(separator_id(tokenizer))
    if max_length is not None and len(ids) > max_length:
        ids = ids[len(ids) - max_length:]
    return ids


def encode_prompts(
    tokenizer: Any,
    groups: Sequence[InputGroup] | Sequence[tuple[str, Sequence[str]]],
    add_bos: bool = True,
    max_length: int | None = None,
) -> list[list[int]]:
    """:func:`encode_prompt` for each unique input (batched)."""
    contexts = [_context_of(g) for g in groups]
    sep = separator_id(tokenizer) if add_bos else None
    prompts = []
    for ids in _encode_texts(tokenizer, contexts):
        if sep is not None:
            ids.append(sep)
        if max_length is not None and len(ids) > max_length:
            ids = ids[len(ids) - max_length:]
        prompts.append(ids)
    return prompts


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """What identifies a tokenizer for the cache: name, size, class, special ids and a vocab hash.

    The vocab hash tells apart in-memory tokenizers that share name ('' ) and size.
    """
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256(
        json.dumps(sorted(vocab.items()), ensure_ascii=False).encode("utf8")
    ).hexdigest()[:16]
    return {
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "len": len(tokenizer),
        "class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "vocab_sha256": digest,
    }


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pack(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Flat tensors (ids, lengths, prompt lengths) store and load much faster than nested lists."""
    ids = [i for f in features for i in f["input_ids"]]
    lengths = [len(f["input_ids"]) for f in features]
    prompt = [sum(1 for lab in f["labels"] if lab == IGNORE_INDEX) for f in features]
    return {
        "ids": torch.tensor(ids, dtype=torch.int32),
        "lengths": torch.tensor(lengths, dtype=torch.int64),
        "prompt_lengths": torch.tensor(prompt, dtype=torch.int64),
    }


def _unpack(packed: dict[str, torch.Tensor]) -> list[dict[str, list[int]]]:
    ids = packed["ids"].tolist()
    out, pos = [], 0
    for length, prompt in zip(packed["lengths"].tolist(), packed["prompt_lengths"].tolist()):
        seq = ids[pos:pos + length]
        out.append({"input_ids": seq, "labels": [IGNORE_INDEX] * prompt + seq[prompt:]})
        pos += length
    return out


def encode_split(
    tokenizer: Any,
    dataset: str,
    split: str,
    max_length: int | None,
    subset_size: int | None = None,
    subset_seed: int = 0,
    data_root: str | os.PathLike | None = None,
    add_bos: bool = True,
    add_eos: bool = True,
) -> list[dict[str, list[int]]]:
    """Encoded (optionally subsetted) split, cached under ``cache_dir()/nlg/<hash>.pt``.

    The key covers the tokenizer (:func:`tokenizer_fingerprint`), dataset, split, max_length,
    subset, bos/eos flags and the source file's size and mtime, so editing the data or changing
    tokenizer re-encodes. Examples left with no completion token by truncation carry no loss (and
    an all -100 batch gives a NaN mean loss), so they are dropped with a warning.
    """
    dataset, split = _check_dataset(dataset), normalise_split(split)
    path = source_path(dataset, split, data_root)
    stat = path.stat()
    key = {
        "format": CACHE_FORMAT_VERSION,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "dataset": dataset,
        "split": split,
        "max_length": max_length,
        "subset": [subset_size, subset_seed] if subset_size is not None else None,
        "add_bos": add_bos,
        "add_eos": add_eos,
        "source": {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf8")).hexdigest()[:24]
    cache_file = paths.cache_dir() / "nlg" / f"{digest}.pt"
    if cache_file.is_file():
        try:
            stored = torch.load(cache_file, weights_only=True)
            if stored.get("key") == json.dumps(key, sort_keys=True):
                return _unpack(stored["data"])
        except Exception:  # a corrupt or foreign cache file is rebuilt, never trusted
            pass

    examples = subset_examples(load_examples(dataset, split, data_root), subset_size, subset_seed)
    features = encode_examples(tokenizer, examples, max_length, add_bos, add_eos)
    empty = [i for i, f in enumerate(features) if all(lab == IGNORE_INDEX for lab in f["labels"])]
    if empty:
        warnings.warn(
            f"{dataset} {split}: {len(empty)} of {len(features)} examples have no completion token "
            f"left at max_length={max_length} and were dropped. Fix: raise max_length.",
            stacklevel=2,
        )
        dropped = set(empty)
        features = [f for i, f in enumerate(features) if i not in dropped]
    _atomic_torch_save({"key": json.dumps(key, sort_keys=True), "data": _pack(features)}, cache_file)
    return features


def encode_examples(
    tokenizer: Any,
    examples: Sequence[NLGExample],
    max_length: int | None = None,
    add_bos: bool = True,
    add_eos: bool = True,
) -> list[dict[str, list[int]]]:
    """:func:`encode_pair` over many examples, with one batched tokenizer call (no cache)."""
    sep = separator_id(tokenizer) if add_bos else None
    eos = _eos_id(tokenizer) if add_eos else None
    contexts = _encode_texts(tokenizer, [ex.context for ex in examples])
    completions = _encode_texts(tokenizer, [" " + ex.completion for ex in examples])
    return [_assemble(c, t, max_length, sep, eos) for c, t in zip(contexts, completions)]


def collate(
    features: Sequence[dict[str, Sequence[int]]], pad_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest sequence: input_ids with ``pad_id``, labels with -100.

    Right padding for training; left padding for batched generation from prompts (features
    without ``labels`` give no labels tensor).
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if not features:
        raise ValueError("cannot collate an empty batch")
    width = max(len(f["input_ids"]) for f in features)
    has_labels = all("labels" in f for f in features)
    ids, mask, labels = [], [], []
    for f in features:
        n = len(f["input_ids"])
        fill = width - n

        def place(seq: Sequence[int], value: int) -> list[int]:
            return list(seq) + [value] * fill if padding_side == "right" else [value] * fill + list(seq)

        ids.append(place(f["input_ids"], pad_id))
        mask.append(place([1] * n, 0))
        if has_labels:
            labels.append(place(f["labels"], IGNORE_INDEX))
    batch = {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "attention_mask": torch.tensor(mask, dtype=torch.long),
    }
    if has_labels:
        batch["labels"] = torch.tensor(labels, dtype=torch.long)
    return batch


class Collator:
    """A DataLoader ``collate_fn`` bound to a tokenizer's pad id (pad token, else eos)."""

    def __init__(self, tokenizer: Any, padding_side: str = "right") -> None:
        self.pad_id = pad_id_for(tokenizer)
        self.padding_side = padding_side

    def __call__(self, features: Sequence[dict[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        return collate(features, self.pad_id, self.padding_side)


# ----------------------------------------------------------------------------------------------
# Reference / hypothesis files for scoring
# ----------------------------------------------------------------------------------------------


def clean_hypothesis(text: str) -> str:
    """Decoded output as gpt2_decode.py keeps it: cut at ``<|endoftext|>`` and the first blank line.

    Remaining single newlines become spaces, since one would shift every later line of the file.
    """
    return " ".join(reference_text(text).splitlines()).strip()


def standard_tokenize(text: str) -> str:
    """gpt2_decode.py ``--tokenize``: every non-word character is its own token, single spaces."""
    return " ".join(" ".join(re.split(r"(\W)", text)).split())


def post_process(text: str, tokenize: bool = False, lower: bool = False) -> str:
    """gpt2_decode.py's post-processing: lower-case first, then tokenise."""
    if lower:
        text = text.lower()
    if tokenize:
        text = standard_tokenize(text)
    return text


def _context_of(group: InputGroup | tuple[str, Sequence[str]]) -> str:
    return group.context if isinstance(group, InputGroup) else group[0]


def _references_of(group: InputGroup | tuple[str, Sequence[str]]) -> list[str]:
    return list(group.references if isinstance(group, InputGroup) else group[1])


def _atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf8", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_counts(groups: Sequence[Any], hyps: Sequence[str]) -> None:
    if len(groups) != len(hyps):
        raise ValueError(
            f"{len(hyps)} hypotheses for {len(groups)} unique inputs: there must be one hypothesis "
            "per group, in group order (decode each unique context once)"
        )


def _one_line(text: str, what: str) -> str:
    if "\n" in text or "\r" in text:
        raise ValueError(f"{what} spans several lines: {text[:80]!r}; it would misalign the file")
    return text


def write_e2e_files(
    groups: Sequence[InputGroup] | Sequence[tuple[str, Sequence[str]]],
    hyps: Sequence[str],
    ref_path: str | os.PathLike,
    hyp_path: str | os.PathLike,
    tokenize: bool = False,
    lower: bool = False,
) -> None:
    """Files for the official E2E scorer (``measure_scores.py ref hyp``), as gpt2_decode.py writes.

    Ref file: an instance's references on consecutive lines, each instance followed by a blank
    line; hyp file: one line per instance. The README's E2E decode passes neither ``--tokenize``
    nor ``--lower``, hence the defaults.
    """
    _check_counts(groups, hyps)
    ref_lines, hyp_lines = [], []
    for index, (group, hyp) in enumerate(zip(groups, hyps)):
        refs = _references_of(group)
        if not refs:
            raise ValueError(f"input {index} ({_context_of(group)[:60]!r}) has no reference")
        for ref in refs:
            line = _one_line(post_process(ref, tokenize, lower), f"reference of input {index}")
            if not line.strip():
                raise ValueError(
                    f"input {index} has an empty reference; the E2E format would read it as the "
                    "end of the instance"
                )
            ref_lines.append(line + "\n")
        ref_lines.append("\n")
        hyp_lines.append(post_process(clean_hypothesis(hyp), tokenize, lower) + "\n")
    _atomic_write_text(Path(ref_path), "".join(ref_lines))
    _atomic_write_text(Path(hyp_path), "".join(hyp_lines))


def write_multi_ref_files(
    groups: Sequence[InputGroup] | Sequence[tuple[str, Sequence[str]]],
    hyps: Sequence[str],
    folder: str | os.PathLike,
    n_refs: int = 6,
    tokenize: bool = True,
    lower: bool = True,
    hyp_name: str = "hypothesis",
) -> dict[str, Any]:
    """GenerationEval files (``eval.py -R folder/reference -H folder/hypothesis -nr 6``).

    ``reference<k>`` holds the k-th reference of every input, one per line; inputs with fewer than
    ``n_refs`` references repeat their *first* one, and references beyond ``n_refs`` are dropped,
    both as gpt2_decode.py does. Lower-casing then tokenising is on by default, matching the
    README's WebNLG/DART decode (``--tokenize --lower``). Returns the written paths.
    """
    if n_refs < 1:
        raise ValueError(f"n_refs must be >= 1, got {n_refs}")
    _check_counts(groups, hyps)
    columns: list[list[str]] = [[] for _ in range(n_refs)]
    hyp_lines = []
    for index, (group, hyp) in enumerate(zip(groups, hyps)):
        refs = _references_of(group)
        if not refs:
            raise ValueError(f"input {index} ({_context_of(group)[:60]!r}) has no reference")
        for k in range(n_refs):
            ref = refs[k] if k < len(refs) else refs[0]
            line = post_process(ref, tokenize, lower)
            columns[k].append(_one_line(line, f"reference of input {index}"))
        hyp_lines.append(post_process(clean_hypothesis(hyp), tokenize, lower))
    folder = Path(folder)
    ref_paths = []
    for k, lines in enumerate(columns):
        path = folder / f"reference{k}"
        _atomic_write_text(path, "".join(line + "\n" for line in lines))
        ref_paths.append(path)
    hyp_path = folder / hyp_name
    _atomic_write_text(hyp_path, "".join(line + "\n" for line in hyp_lines))
    return {"references": ref_paths, "reference_prefix": folder / "reference", "hypothesis": hyp_path}

