"""Read an offline W&B run (its ``run-<id>.wandb`` transaction log) without network or an account.

Offline runs keep their config, history and summary only in the ``.wandb`` file: a LevelDB-style log
(a 7-byte ``:W&B`` header, then 32 KiB blocks of chunks with a 7-byte header: crc32, little-endian
length, type FULL/FIRST/MIDDLE/LAST) of ``wandb_internal_pb2.Record`` protobufs. This reader decodes
them with wandb's own protobuf schema, e.g. to check what a run logged before ``wandb sync``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HEADER = 7
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def iter_record_bytes(path: str | os.PathLike):
    """Yield the raw protobuf bytes of every record in a ``.wandb`` file."""
    data = Path(path).read_bytes()
    if not data.startswith(b":W&B"):
        raise ValueError(f"{path} is not a W&B transaction log (no ':W&B' header)")
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer: zero padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        if pos + _HEADER + length > len(data):  # a record still being written
            break
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""
        elif kind == 0 and length == 0:  # preallocated tail
            break
        else:
            raise ValueError(f"{path}: corrupt chunk type {kind} at byte {pos}")


@dataclass
class OfflineRun:
    """What an offline run recorded: identity, nested config, history rows, final summary, artifacts."""

    run_id: str = ""
    project: str = ""
    group: str = ""
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None


def _items(items) -> dict[str, Any]:
    out = {}
    for it in items:
        key = it.key or "/".join(it.nested_key)
        out[key] = json.loads(it.value_json)
    return out


def read_offline_run(run_dir: str | os.PathLike, wait_s: float = 30.0) -> OfflineRun:
    """Decode ``<run_dir>/run-*.wandb`` (``run_dir`` is an ``offline-run-*`` dir or the ``.wandb`` file).

    ``wandb.finish()`` can return before wandb's service process has flushed the log; this waits up
    to ``wait_s`` seconds for the run's exit record (a run still going is returned as read).
    """
    run_dir = Path(run_dir)
    deadline = time.monotonic() + wait_s
    while True:
        files = [run_dir] if run_dir.is_file() else sorted(run_dir.glob("run-*.wandb"))
        run = _decode(files[0]) if files else None
        if (run is not None and run.exit_code is not None) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if run is None:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")
    return run


def _decode(path: Path) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2 as pb

    run = OfflineRun()
    for raw in iter_record_bytes(path):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.run_id, run.project, run.group, run.name = r.run_id, r.project, r.run_group, r.display_name
            run.config.update(_items(r.config.update))
            run.summary.update(_items(r.summary.update))
        elif kind == "config":
            run.config.update(_items(rec.config.update))
        elif kind == "history":
            run.history.append(_items(rec.history.item))
        elif kind == "summary":
            run.summary.update(_items(rec.summary.update))
        elif kind == "artifact":
            a = rec.artifact
            files = [c.path for c in a.manifest.contents]
            run.artifacts.append({"name": a.name, "type": a.type, "aliases": list(a.aliases), "files": files})
        elif kind == "exit":
            run.exit_code = rec.exit.exit_code
    # wandb stores each top-level config key as {"value": ...}; unwrap to the user's nested dict
    run.config = {k: v["value"] if isinstance(v, dict) and "value" in v else v for k, v in run.config.items()}
    return run
