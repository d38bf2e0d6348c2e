"""Resume state of an unfinished run: what a killed run needs to continue as if it had never stopped.

Every `train.checkpoint_every` optimizer steps the loop saves the trainable (method + head) weights,
the optimizer, scheduler and grad-scaler states, the RNG states (torch CPU and CUDA, Python
`random`, numpy), the step, the epoch and how many of its batches were consumed, the epoch's running
loss, the history and the best epoch so far. The file sits beside the run's method weights under
`cache_dir()`, named by the run key, so rerunning the same command finds it; it is written
atomically (`lora_repro.io`) and deleted once the run's record is written.

Why the RNG states are restored only after the resumed epoch's batches are skipped: creating a
DataLoader iterator draws from torch's global RNG, so the uninterrupted run's generator had already
moved past that draw when the state was saved.
"""

from __future__ import annotations

import io
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lora_repro.io import atomic_write_bytes
from lora_repro.methods import load_method_state_dict, method_state_dict
from lora_repro.paths import cache_dir

log = logging.getLogger(__name__)

FORMAT = 1


def resume_path(experiment: str, key: str) -> Path:
    """Beside the run's weights (`checkpoints.weights_path`), one file per run key."""
    return cache_dir() / "weights" / experiment / f"{key}.resume.pt"


def rng_states() -> dict[str, Any]:
    """Every generator the loop draws from (dropout, LoRA dropout, data order helpers)."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class Checkpointer:
    """Saves a run's resume state every `every` steps (`write`: only the rank that owns the run)
    and loads it back at the start of a rerun."""

    def __init__(self, path: Path, every: int | None, write: bool = True) -> None:
        self.path, self.every, self.write = path, every or 0, write

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, state, scaler: torch.amp.GradScaler) -> None:
        """Write `state` (a train.TrainState) and the RNG states, atomically."""
        if not self.write:
            return
        payload = {
            "format": FORMAT, "weights": method_state_dict(state.model), "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_states(),
            "loop": {name: getattr(state, name) for name in LOOP_FIELDS},
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write_bytes(self.path, buffer.getvalue())
        log.debug("resume state at step %d -> %s", state.step, self.path)

    def restore(self, state, scaler: torch.amp.GradScaler) -> dict[str, Any] | None:
        """Load a saved state into `state` and `scaler`; return the RNG states to restore once the
        resumed epoch's consumed batches are skipped (None: nothing saved, a fresh start)."""
        if not self.path.is_file():
            return None
        payload = torch.load(self.path, map_location="cpu", weights_only=False)
        if payload.get("format") != FORMAT:
            log.warning("ignoring %s: resume format %s, this code reads %s", self.path, payload.get("format"), FORMAT)
            return None
        load_method_state_dict(state.model, payload["weights"])
        load_optimizer_state(state.optimizer, payload["optimizer"])
        state.scheduler.load_state_dict(payload["scheduler"])
        scaler.load_state_dict(payload["scaler"])
        for name, value in payload["loop"].items():
            setattr(state, name, value)
        if state.epoch_loss is not None:
            state.epoch_loss = state.epoch_loss.to(next(state.model.parameters()).device)
        state.resumed_at = [*state.resumed_at, state.step]
        log.info("resuming from %s: step %d, epoch %d, %d batches into it", self.path, state.step,
                 state.epoch + 1, state.epoch_batches)
        return payload["rng"]

    def discard(self) -> None:
        """The run's record is written: its resume state is no longer needed."""
        if self.write:
            self.path.unlink(missing_ok=True)


KERNEL_OPTIONS = ("fused", "foreach")


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """`optimizer.load_state_dict(saved)`, keeping the kernel this code chose (fused / foreach).

    torch takes every group option from the saved state, so a state saved before AdamW was fused
    would turn the fused kernel off for the rest of the run; a fused kernel wants its step counts
    on the weights' device, where torch leaves them on the CPU for an unfused group.
    """
    kernels = [{name: group.get(name) for name in KERNEL_OPTIONS} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, kept in zip(optimizer.param_groups, kernels, strict=True):
        group.update(kept)
        if not kept.get("fused"):
            continue
        for param in group["params"]:
            moments = optimizer.state.get(param, {})
            if "step" in moments:
                moments["step"] = moments["step"].to(param.device, torch.float32)


# TrainState fields saved besides the model, optimizer and scheduler.
LOOP_FIELDS = ("step", "epoch", "epoch_batches", "epoch_loss", "history", "best", "best_epoch", "best_weights",
               "samples", "tokens", "train_s", "eval_s", "resumed_at")
