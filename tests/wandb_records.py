"""Test helper: read back what an offline Weights & Biases run wrote.

The run's ``run-<id>.wandb`` file is a LevelDB-style log (7-byte file header ``:W&B`` + magic + version, then 32 KiB
blocks of records, each with a 7-byte header: crc32, length, type FULL/FIRST/MIDDLE/LAST) of ``Record`` protobufs.

    from wandb_records import history

    rows = history(run_dir)          # [{key: json-decoded value}, ...], one per wandb.log call, in order

Call ``wandb.teardown()`` after ``run.finish()`` first: the W&B service may still hold the run's records in memory
when ``finish()`` returns (seen here: a 7-byte file, header only); teardown stops the service, which writes them.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

_BLOCK = 32768
_HEADER = 7


def _records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, out, pending = _HEADER, [], b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            out.append(pending + chunk)
            pending = b""
    return out


def run_dirs(save_dir: str | Path) -> list[Path]:
    """The offline run directories under ``save_dir`` (``wandb/offline-run-*``), sorted."""
    return sorted(Path(save_dir).glob("wandb/offline-run-*"))


def history(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every history row the run logged: ``{key: value}`` with nested keys joined by ``/``, values JSON-decoded."""
    from wandb.proto import wandb_internal_pb2 as pb

    (file,) = Path(run_dir).glob("run-*.wandb")
    rows, kinds = [], []
    for raw in _records(file):
        record = pb.Record()
        record.ParseFromString(raw)
        kinds.append(record.WhichOneof("record_type"))
        if kinds[-1] == "history":
            rows.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                         for item in record.history.item})
    if "exit" not in kinds:
        raise RuntimeError(f"{file} has no exit record yet (call wandb.teardown() after finish()); got {kinds}")
    return rows
