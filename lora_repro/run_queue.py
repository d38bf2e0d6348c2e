"""Several processes sharing one protocol's runs, run by run, so they finish together.

`make reproduce-glue` used to give each of its two processes every second method. Methods differ in
cost (full fine-tuning took a quarter of the GLUE table's summed time), so one process worked on while
the other sat idle: 52.6 min of wall time for 97.5 min of runs (shards of 52.6 and 44.9), where half
would be 48.7. Here every
process walks the same ordered plan and claims a run by linking its claim file into place (`os.link`
fails when the name exists: of two processes exactly one gets it), longest runs first (the greedy rule
that finishes a set of jobs on a few machines close to the ideal), init sources before the runs that
start from them.

A run whose init source (`train.init_from_task`) another process is still training waits for it; a
process takes other ready runs first and waits only when none is left. A source that failed, or whose
process died before finishing it, stops each process when it next looks at a run that starts from it,
with the source named (so one failed source ends the invocation, as it did the sequential loop). The
marks live in a fresh folder per invocation (the Makefile makes it with `mktemp -d`) on a file system
with hard links and `flock`.

Why not a library: joblib and Hydra's launchers dispatch independent jobs; this needs the init-source
order across processes, and skips that the store decides (`run.run`).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from lora_repro.config import method_label
from lora_repro.errors import BadInput

RunId = tuple[str, int, str]  # (method label, seed, task)


def run_id(cfg: Mapping[str, Any]) -> RunId:
    return method_label(cfg), cfg["seed"], cfg["task"]["name"]


def source_id(cfg: Mapping[str, Any]) -> RunId | None:
    """The run whose weights `cfg` starts from (same method and seed), or None."""
    task = cfg["train"].get("init_from_task")
    return (method_label(cfg), cfg["seed"], task) if task else None


def expected_seconds(records: Iterable[Mapping[str, Any]]) -> dict[RunId, float]:
    """The wall time of the newest stored run of each (method, seed, task): the cost used to order them."""
    newest: dict[RunId, Mapping[str, Any]] = {}
    for record in records:
        ident = (record["method"], record["seed"], record["task"])
        if ident not in newest or record["created_at"] > newest[ident]["created_at"]:
            newest[ident] = record
    return {ident: float(record["timing"]["wall_s"]) for ident, record in newest.items()
            if (record.get("timing") or {}).get("wall_s")}


def claim_order(plan: list[dict], seconds: Mapping[RunId, float]) -> list[dict]:
    """`plan` (already in init order) with each init depth's runs longest first; runs never stored keep
    their plan order after the known ones of their depth."""
    depth: dict[RunId, int] = {}
    for cfg in plan:  # init order: a source's depth is known before its dependents'
        source = source_id(cfg)
        depth[run_id(cfg)] = depth.get(source, -1) + 1 if source else 0
    return sorted(plan, key=lambda cfg: (depth[run_id(cfg)], -seconds.get(run_id(cfg), 0.0)))


class RunQueue:
    """The claim, done and failed marks of one invocation's runs in `folder` (fresh per invocation).

    A claim is a file its process holds an exclusive `flock` on until the run's done or failed mark is
    written, so a claim whose lock is free and that has neither mark belongs to a process that died
    (killed, out of memory): the processes waiting on that run stop with its name instead of waiting on.
    """

    def __init__(self, folder: Path, poll_s: float = 2.0) -> None:
        if not folder.is_dir():
            raise BadInput(f"--queue {folder}: no such folder; give one fresh folder that every process of "
                           "this invocation shares (e.g. from `mktemp -d`)")
        self.folder, self.poll_s = folder, poll_s

    def _mark(self, ident: RunId, kind: str) -> Path:
        method, seed, task = ident
        return self.folder / f"{method}.{task}.{seed}.{kind}"

    def claim(self, ident: RunId) -> int | None:
        """A descriptor holding the lock of `ident`'s claim if this process got it (exactly one does)."""
        fd, temporary = tempfile.mkstemp(dir=self.folder, prefix=".claiming-")
        fcntl.flock(fd, fcntl.LOCK_EX)  # held before the claim is visible under its name
        try:
            os.link(temporary, self._mark(ident, "claim"))
        except FileExistsError:
            os.close(fd)
            return None
        finally:
            os.unlink(temporary)
        return fd

    def ready(self, source: RunId | None, planned: set[RunId]) -> bool:
        """Whether a run starting from `source` can start: no source in this plan, or it is done. Raises
        when the source failed, or its process stopped before finishing it."""
        if source is None or source not in planned or self._mark(source, "done").exists():
            return True
        claimed = self._mark(source, "claim")
        if not self._mark(source, "failed").exists() and (not claimed.exists() or self._locked(claimed)):
            return False  # not started yet, or training
        if self._mark(source, "done").exists():  # finished between the two looks
            return True
        why = "failed" if self._mark(source, "failed").exists() else "was left unfinished by a process that stopped"
        raise RuntimeError(f"{' '.join(map(str, source))} {why}, so the runs that start from its weights cannot "
                           "run; fix it and run the protocol again")

    @staticmethod
    def _locked(path: Path) -> bool:
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def work(self, plan: list[dict], execute: Callable[[dict], bool]) -> int:
        """Claim and `execute` runs of `plan` (in claim order) until every run is claimed; `execute` says
        whether its run completed (a run with a NaN loss is stored as failed). Returns how many runs this
        process took (run or found in the store)."""
        pending, planned, taken = list(plan), {run_id(cfg) for cfg in plan}, 0
        while pending:
            cfg = next((c for c in pending if self.ready(source_id(c), planned)), None)
            if cfg is None:
                time.sleep(self.poll_s)  # every run left starts from one another process is training
                continue
            pending.remove(cfg)
            ident = run_id(cfg)
            lock = self.claim(ident)
            if lock is None:
                continue
            completed = False
            try:
                completed = execute(cfg)
            finally:
                self._mark(ident, "done" if completed else "failed").touch()
                os.close(lock)
            taken += 1
        return taken
