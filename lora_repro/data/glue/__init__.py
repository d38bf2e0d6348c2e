"""GLUE data: task specs (``tasks``), reading the TSVs or the hub (``read``), tokenising once with a
cache and batching (``encode``). The names below are the package's API; the training loop only
sees an :class:`EncodedSplit` and a DataLoader, never the file formats.
"""

from lora_repro.data.glue.encode import EncodedSplit, PadRows, encode_split, make_loader
from lora_repro.data.glue.read import (
    HUB_DATASET,
    SOURCES,
    GlueDataMissingError,
    GlueExample,
    GlueFormatError,
    GlueHubError,
    read_split,
    split_path,
    subset,
)
from lora_repro.data.glue.tasks import TASKS, GlueTask, get_task

__all__ = [
    "HUB_DATASET", "SOURCES", "TASKS", "EncodedSplit", "GlueDataMissingError", "GlueExample", "GlueFormatError",
    "GlueHubError", "GlueTask", "PadRows", "encode_split", "get_task", "make_loader", "read_split", "split_path",
    "subset",
]
