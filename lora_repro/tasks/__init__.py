"""Task families: how a run gets its batches, its loss, evaluates an epoch, and finishes (GLUE, NLG).

`family(kind)` gives the module for a task config's `kind`; each satisfies `base.TaskFamily`.
"""

from __future__ import annotations

from lora_repro.tasks.base import TaskData, TaskFamily


def family(kind: str) -> TaskFamily:
    """The task family module for `task.kind` (imported on demand: NLG pulls in the scorers)."""
    if kind == "glue":
        from lora_repro.tasks import glue as module
    elif kind == "nlg":
        from lora_repro.tasks import nlg as module
    else:
        raise ValueError(f"task.kind={kind!r} has no family; known: glue, nlg")
    return module


__all__ = ["TaskData", "TaskFamily", "family"]
