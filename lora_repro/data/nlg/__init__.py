"""NLG data for the GPT-2 experiments: E2E, WebNLG 2017 and DART, formatted as the paper's code does.

The paper's numbers (Tables 3, 13, 14) come from microsoft/LoRA ``examples/NLG``; its pipeline is
reproduced step by step, because each step changes what the model sees or what is scored:
reading and converting the files (``read``, the ``format_converting_*.py`` scripts), grouping
references by input (``groups``, ``gpt2_decode.py``), encoding with completion-only labels, caching
and batching (``encode``, ``gpt2_encode.py`` and ``FT_Dataset``). The scorer input files are
written by :mod:`lora_repro.metrics.files`. The names below are the package's API.
"""

from lora_repro.data.nlg.encode import (
    IGNORE_INDEX,
    Collator,
    collate,
    encode_examples,
    encode_pair,
    encode_prompt,
    encode_prompts,
    encode_split,
    make_loader,
    pad_id_for,
    separator_id,
)
from lora_repro.data.nlg.groups import (
    InputGroup,
    filter_groups,
    group_examples,
    group_references,
    reference_text,
    select_groups,
    subset_examples,
)
from lora_repro.data.nlg.read import (
    DATASETS,
    E2E_KEY_NAMES,
    SPLITS,
    WEBNLG_SEEN_CATEGORIES,
    NLGDataError,
    NLGDataMissing,
    NLGExample,
    e2e_mr_to_lora,
    load_examples,
    normalise_split,
    read_dart_json,
    read_e2e_csv,
    read_e2e_txt,
    read_webnlg_json,
    source_path,
    triples_context,
)

__all__ = [
    "DATASETS", "E2E_KEY_NAMES", "IGNORE_INDEX", "SPLITS", "WEBNLG_SEEN_CATEGORIES", "Collator", "InputGroup",
    "NLGDataError", "NLGDataMissing", "NLGExample", "collate", "e2e_mr_to_lora", "encode_examples", "encode_pair",
    "encode_prompt", "encode_prompts", "encode_split", "filter_groups", "group_examples", "group_references",
    "load_examples", "make_loader", "normalise_split", "pad_id_for", "read_dart_json", "read_e2e_csv", "read_e2e_txt",
    "read_webnlg_json", "reference_text", "select_groups", "separator_id", "source_path", "subset_examples",
    "triples_context",
]
