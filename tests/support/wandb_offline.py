"""Read back what W&B wrote for an offline run, with wandb's own record format (no network, no server).

An offline run keeps every record in ``run-<id>.wandb``: a 7-byte header (``:W&B``, magic 0xBEE1,
version 0), then the LevelDB log format (32 KiB blocks; records of a CRC, a 2-byte length and a type
FULL/FIRST/MIDDLE/LAST) whose payloads are ``wandb_internal_pb2.Record`` protobufs. wandb 0.2x+
no longer ships a Python reader for it (its Go core reads it in ``wandb sync``), so this is one.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    """Every ``Record`` in a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1, "not a W&B transaction log"
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            pending = payload
        elif kind == FIRST:
            pending = payload
            continue
        elif kind == MIDDLE:
            pending += payload
            continue
        elif kind == LAST:
            pending += payload
        else:
            break  # zero padding at the end
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        yield record


def run_dir(root: Path) -> Path:
    """The one offline run under ``root`` (the ``dir`` given to wandb)."""
    runs = sorted((root / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0]


def history(run: Path) -> list[dict]:
    """Each ``run.log`` row of an offline run: ``{key: value}`` with ``_step``."""
    rows = []
    for record in records(next(run.glob("run-*.wandb"))):
        if record.WhichOneof("record_type") == "history":
            rows.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def config(run: Path) -> dict:
    """The run's config, as the last config record holds it."""
    out: dict = {}
    for record in records(next(run.glob("run-*.wandb"))):
        if record.WhichOneof("record_type") == "config":
            for item in record.config.update:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif record.WhichOneof("record_type") == "run":
            for item in record.run.config.update:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out
