"""The run queue of `make reproduce-*`: every run once, init sources first, longest first, failures named."""

from __future__ import annotations

import os
import threading
import time

import pytest

from experiments import reproduce
from lora_repro.errors import BadInput
from lora_repro.run_queue import RunQueue, claim_order, expected_seconds, run_id


def cfg(task: str, method: str = "lora", init: str | None = None) -> dict:
    return {"task": {"name": task}, "method": {"name": method}, "seed": 0, "train": {"init_from_task": init}}


PLAN = [cfg("sst2", "full"), cfg("stsb", "full"), cfg("sst2"), cfg("stsb"), cfg("mrpc", init="stsb"),
        cfg("rte", init="stsb")]


def test_claim_order_is_init_depth_then_the_longest_known_run_first():
    seconds = {("full", 0, "sst2"): 30.0, ("full", 0, "stsb"): 50.0, ("lora", 0, "stsb"): 40.0,
               ("lora", 0, "rte"): 20.0, ("lora", 0, "mrpc"): 10.0}
    order = [run_id(c) for c in claim_order(PLAN, seconds)]
    assert order == [("full", 0, "stsb"), ("lora", 0, "stsb"), ("full", 0, "sst2"), ("lora", 0, "sst2"),
                     ("lora", 0, "rte"), ("lora", 0, "mrpc")]


def test_expected_seconds_are_the_newest_record_per_run():
    def record(created: str, wall: float) -> dict:
        return {"method": "lora", "seed": 0, "task": "rte", "created_at": created, "timing": {"wall_s": wall}}

    assert expected_seconds([record("2026-01-02", 5.0), record("2026-01-03", 7.0), record("2026-01-01", 9.0)]) == {
        ("lora", 0, "rte"): 7.0}


def work_in_threads(queue: RunQueue, plan: list[dict], execute, workers: int = 2) -> list[BaseException]:
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            queue.work(plan, execute)
        except BaseException as err:  # the test inspects what each worker raised
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    return errors


def test_two_workers_run_every_run_once_and_dependents_after_their_source(tmp_path):
    """Full fine-tuning's STS-B does not end until LoRA's MRPC has started: the worker without it must go
    on to LoRA's runs instead of waiting for full's MRPC (else it times out and the order check fails)."""
    queue = RunQueue(tmp_path, poll_s=0.01)
    events: list[tuple[str, tuple]] = []
    lock, lora_mrpc_started = threading.Lock(), threading.Event()

    def execute(c: dict) -> bool:
        with lock:
            events.append(("start", run_id(c)))
        if run_id(c) == ("lora", 0, "mrpc"):
            lora_mrpc_started.set()
        if run_id(c) == ("full", 0, "stsb"):
            lora_mrpc_started.wait(timeout=10)
        with lock:
            events.append(("end", run_id(c)))
        return True

    plan = [cfg("stsb", "full"), cfg("stsb"), cfg("mrpc", "full", init="stsb"), cfg("mrpc", init="stsb")]
    assert work_in_threads(queue, claim_order(plan, {}), execute) == []
    starts = [ident for kind, ident in events if kind == "start"]
    assert sorted(starts) == sorted(run_id(c) for c in plan)  # each once
    for method in ("full", "lora"):
        assert events.index(("start", (method, 0, "mrpc"))) > events.index(("end", (method, 0, "stsb")))
    assert events.index(("start", ("lora", 0, "mrpc"))) < events.index(("end", ("full", 0, "stsb")))


@pytest.mark.parametrize("outcome", ["raises", "stored as failed"])
def test_a_failed_source_stops_the_workers_waiting_for_it(tmp_path, outcome):
    queue = RunQueue(tmp_path, poll_s=0.01)
    plan = [cfg("stsb"), cfg("rte", init="stsb"), cfg("mrpc", init="stsb")]

    def execute(c: dict) -> bool:
        if c["task"]["name"] == "stsb":
            time.sleep(0.1)
            if outcome == "raises":
                raise RuntimeError("the data reader failed")
            return False  # a NaN loss: run() stores a failed record and returns it
        return True

    messages = sorted(str(err) for err in work_in_threads(queue, plan, execute))
    waiting = [m for m in messages if m.startswith("lora 0 stsb failed, so the runs that start from its weights")]
    assert len(waiting) == (1 if outcome == "raises" else 2)
    assert messages.count("the data reader failed") == (outcome == "raises")


def test_a_source_whose_process_died_stops_the_wait(tmp_path):
    """A claim with its lock released and no done or failed mark: its process was killed mid-run."""
    queue = RunQueue(tmp_path, poll_s=0.01)
    os.close(queue.claim(("lora", 0, "stsb")))  # claimed, then gone without a mark
    with pytest.raises(RuntimeError, match="lora 0 stsb was left unfinished by a process that stopped"):
        queue.work([cfg("stsb"), cfg("rte", init="stsb")], lambda c: True)


def test_a_source_being_trained_is_waited_for(tmp_path):
    queue = RunQueue(tmp_path, poll_s=0.01)
    held = queue.claim(("lora", 0, "stsb"))  # another process, training it
    assert queue.claim(("lora", 0, "stsb")) is None
    assert not queue.ready(("lora", 0, "stsb"), {("lora", 0, "stsb")})
    (tmp_path / "lora.stsb.0.done").touch()
    os.close(held)
    assert queue.ready(("lora", 0, "stsb"), {("lora", 0, "stsb")})


def test_queue_needs_an_existing_folder_and_excludes_shards_and_table_only(tmp_path, capsys):
    with pytest.raises(BadInput, match="no such folder"):
        RunQueue(tmp_path / "absent")
    with pytest.raises(SystemExit):
        reproduce.main(["+experiment=glue_smoke", "--queue", str(tmp_path), "--shard", "0/2"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce.main(["+experiment=glue_smoke", "--queue", str(tmp_path), "--table-only"])
    assert "not with --shard, --table-only" in capsys.readouterr().err
