"""Models: sources (hub, offline packages, tiny, shape-only) and the per-architecture module map."""

from lora_repro.models.arch import ArchSpec, spec_for
from lora_repro.models.load import LoadedModel, load_model

__all__ = ["ArchSpec", "LoadedModel", "load_model", "spec_for"]
