"""Reading E2E, WebNLG 2017 and DART as the paper's code does (microsoft/LoRA ``examples/NLG``).

``format_converting_*.py`` -> :func:`load_examples`: one ``(context, completion)`` pair per
reference. E2E: the text before/after ``||`` of each (stripped) line. WebNLG: the modified triples
joined as ``"subj : prop : obj | ..."`` (underscores kept), one pair per lexicalisation whose
comment is ``good``, flagged seen/unseen by category. DART: the same join with the property
lower-cased, one pair per annotation. Malformed input stops with the file, the line or entry, and
the fix.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_repro import paths

DATASETS = ("e2e", "webnlg", "dart")
SPLITS = ("train", "valid", "test")
SPLIT_ALIASES = {"dev": "valid", "validation": "valid", "val": "valid"}

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


def normalise_split(split: str) -> str:
    """Map dev/validation to ``valid``; raise on anything that is not train/valid/test."""
    name = SPLIT_ALIASES.get(split.lower(), split.lower())
    if name not in SPLITS:
        raise ValueError(
            f"unknown split {split!r}: use one of {', '.join(SPLITS)} (or dev/validation for valid)"
        )
    return name


def check_dataset(dataset: str) -> str:
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
    dataset, split = check_dataset(dataset), normalise_split(split)
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
