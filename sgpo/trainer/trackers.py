"""Cutting TensorBoard event files back to a step, so a resumed run's curves show each step
once (as :meth:`sgpo.trainer.checkpoint.RunFolder.trim_metrics` does for metrics.jsonl).

An event file is a sequence of TFRecords: ``uint64 length | uint32 crc(length) | data |
uint32 crc(data)``, ``data`` being a serialised ``Event`` whose ``step`` decides. Records are
copied byte for byte (their checksums stay valid); the file is replaced atomically. Other
trackers (wandb, ...) keep their own history on their servers and are not cut."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from sgpo.io import write_bytes_atomic


def _records(data: bytes) -> list[tuple[bytes, bytes]]:
    """(whole record, event payload) of every complete record; a torn tail (a kill mid-write) is dropped."""
    out, i = [], 0
    while i + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, i)
        end = i + 12 + length + 4
        if end > len(data):
            break
        out.append((data[i:end], data[i + 12 : i + 12 + length]))
        i = end
    return out


def _event_step(payload: bytes) -> int:
    from tensorboard.compat.proto.event_pb2 import Event

    return int(Event.FromString(payload).step)


def cut_tensorboard_events(folder: str | os.PathLike, step: int) -> int:
    """Drop every event after ``step`` from the event files under ``folder``; returns how many
    were dropped (0 when there is no such folder or tensorboard is not installed)."""
    files = sorted(Path(folder).rglob("events.out.tfevents.*")) if Path(folder).is_dir() else []
    if not files:
        return 0
    try:
        import tensorboard.compat.proto.event_pb2  # noqa: F401
    except ImportError:  # no tensorboard: no tensorboard tracker wrote these
        return 0
    dropped = 0
    for path in files:
        data = path.read_bytes()
        records = _records(data)
        kept = [rec for rec, payload in records if _event_step(payload) <= step]
        if len(kept) < len(records) or sum(map(len, kept)) < len(data):
            dropped += len(records) - len(kept)
            write_bytes_atomic(path, b"".join(kept))
    return dropped


__all__ = ["cut_tensorboard_events"]
