"""Reading back a W&B offline run (``run-<id>.wandb``) with the wandb client's own record definitions.

The file is W&B's transaction log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of
LevelDB-style records (crc32, length, type) whose payloads are ``wandb_internal_pb2.Record`` messages.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = 7  # bytes of both the file header and each record header
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    name: str = ""
    group: str = ""
    job_type: str = ""
    history: list[dict] = field(default_factory=list)  # one dict per logged step: key -> value


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    found, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a header is zero padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        pos += HEADER
        if kind == 0:  # zero padding to the end of the block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        pending += data[pos : pos + length]
        pos += length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            found.append(record)
            pending = b""
    return found


def read_run(path: Path) -> OfflineRun:
    run = OfflineRun()
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.name, run.group, run.job_type = record.run.display_name, record.run.run_group, record.run.job_type
        elif kind == "history":
            run.history.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return run


def offline_runs(directory: Path) -> list[OfflineRun]:
    """Every offline run written anywhere under ``directory``."""
    return [read_run(path) for path in sorted(directory.glob("**/wandb/offline-run-*/run-*.wandb"))]
