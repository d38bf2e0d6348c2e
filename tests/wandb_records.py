"""Read an offline wandb run file back (tests only): the records wandb wrote, once the run is complete.

wandb 0.31 ships no Python reader for its `run-*.wandb` files (its writer is the Go core), so this
decodes the documented LevelDB-log framing (32 KiB blocks; each chunk: CRC32 (4), length (2, little
endian), type (1: full, 2: first, 3: middle, 4: last)) after the 7-byte header, and parses each record
with wandb's own protobuf schema. `wait_for_records` polls until the run's exit record is there, so a
test never reads a file that the wandb service is still writing.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2

HEADER_BYTES = 7
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    offset, pending = HEADER_BYTES, b""
    while offset + 7 <= len(data):
        block_left = BLOCK - offset % BLOCK
        if block_left < 7:  # the rest of a block too small for a chunk header is padding
            offset += block_left
            continue
        _, length, kind = struct.unpack("<IHB", data[offset:offset + 7])
        chunk = data[offset + 7:offset + 7 + length]
        if len(chunk) < length:
            return  # a chunk still being written
        offset += 7 + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def read_records(path: Path) -> list:
    records = []
    for payload in _payloads(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def wait_for_records(run_dir: Path, deadline_s: float = 60.0) -> list:
    """The run's records once its exit record is written; fails after `deadline_s` without one."""
    stop = time.monotonic() + deadline_s
    while True:
        files = list(Path(run_dir).glob("run-*.wandb"))
        records = read_records(files[0]) if len(files) == 1 else []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > stop:
            raise TimeoutError(f"{run_dir}: no complete wandb run file after {deadline_s} s ({len(records)} records)")
        time.sleep(0.2)


def logged_keys(records: list) -> tuple[set[str], dict[str, str]]:
    """(keys of every history row, summary key -> JSON value) of a run's records."""
    history, summary = set(), {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.update(item.key or "/".join(item.nested_key) for item in record.history.item)
        elif kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): item.value_json for item in record.summary.update})
    return history, summary
