"""The tokenised-data cache shared by every task family: one tokenizer fingerprint, one file layout.

A split is tokenised once per (tokenizer, task, split, options, source file) and stored as flat
tensors in ``cache_dir()/<family>/<hash>.pt``; the full key is stored inside the file and compared
on load, so a hash collision or a file written by other code is rebuilt, never trusted. Files are
written with :func:`lora_repro.io.atomic_write`, so a killed run leaves no half-written cache.

Handwritten rather than ``datasets`` (Arrow files, ``Dataset.map``'s fingerprinted cache): the rows
come from the suite's validating readers as in-memory lists, and ``map`` keeps no automatic cache
for in-memory datasets, so it would still need this key (and this tokenizer fingerprint) to name
its file. Measured on SST-2 train (MiniLM) and E2E train (SmolLM2), a ``map`` pipeline's warm path
(readers + ``from_dict`` + cache hit: 4.6 s and 1.4 s) is slower than loading these files, whose
``torch.load`` takes 2-14 ms; the Arrow files were 0.7x and 2.8x the size. What a warm load costs
here is the fingerprint (0.3-1.4 s) and, for NLG, turning flat tensors back into lists.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from lora_repro import paths
from lora_repro.io import atomic_write

log = logging.getLogger(__name__)


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """What tells one tokenizer's output from another's, for the cache key.

    Name, size and class catch the common cases; the special ids matter because the NLG encoder
    appends bos/eos itself. For fast tokenizers the whole serialised pipeline (vocab, normaliser,
    special-token template) is hashed, else the vocabulary, so two tokenizers built in code with
    the same name ('') and size but different vocabularies never share a cache entry.
    """
    identity = {
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "size": len(tokenizer),
        "class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Truncation and padding are call-time settings the tokenizer remembers between calls;
        # they would make the key depend on what the tokenizer was last used for, so they are
        # cleared on a copy. The copy is parsed in Rust: parsing and re-sorting the JSON in Python
        # cost about 3x as much for SmolLM2's 1.5 MB pipeline.
        pipeline = Tokenizer.from_str(backend.to_str())
        pipeline.no_truncation()
        pipeline.no_padding()
        identity["backend_sha256"] = hashlib.sha256(pipeline.to_str().encode("utf8")).hexdigest()
    else:
        identity["vocab_sha256"] = _sha256(sorted(tokenizer.get_vocab().items()))
    return identity


def source_identity(path: Path) -> dict[str, Any]:
    """A source file's name, size and mtime: editing or replacing the file re-tokenises."""
    stat = path.stat()
    return {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf8")).hexdigest()


def cache_path(family: str, key: dict[str, Any]) -> Path:
    """Where the encoding for ``key`` lives: ``cache_dir()/<family>/<16 hex of the key's hash>.pt``."""
    return paths.cache_dir() / family / f"{_sha256(key)[:16]}.pt"


def load_or_build(
    family: str, key: dict[str, Any], build: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], Path, bool]:
    """The cached tensors for ``key``, else ``build()``'s, saved for next time.

    ``build`` returns a dict of tensors (and plain values) that ``torch.load(weights_only=True)``
    can read back. Returns (data, cache file, whether it came from the cache).
    """
    path = cache_path(family, key)
    cached = _load(path, key)
    if cached is not None:
        return cached, path, True
    data = build()
    atomic_write(path, lambda handle: torch.save({"key": key, "data": data}, handle), binary=True)
    return data, path, False


def _load(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The stored data, or None if absent, unreadable or written for another key."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as err:  # a cache miss, whatever broke: the caller rebuilds it
        log.warning("ignoring unreadable cache file %s (%s); re-tokenising", path, err)
        return None
    if not isinstance(payload, dict) or payload.get("key") != key:
        return None
    return payload["data"]


def flat_rows(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as one int32 tensor plus int64 offsets (row i is ``ids[offsets[i]:offsets[i+1]]``).

    A list of Python lists for MNLI's 393k rows costs several hundred MB and loads slowly.
    """
    offsets = torch.zeros(len(rows) + 1, dtype=torch.long)
    offsets[1:] = torch.tensor([len(row) for row in rows], dtype=torch.long).cumsum(0)
    ids = torch.tensor([token for row in rows for token in row], dtype=torch.int32)
    return ids, offsets

