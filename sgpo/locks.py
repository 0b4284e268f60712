"""Advisory locks (``flock``) that say who holds them: one writer per run folder, eval folder,
extraction output and model-cache entry.

A lock file holds one JSON line naming its holder (host, pid, start time, command), written
after the lock is taken, so a refused second writer can say whom it waited for. The lock
itself is the kernel's: it goes with the process, so a lock file left by a dead process (kill
-9, a lost node) is simply taken over by the next writer; lock files are never deleted (a
delete races with a process that just opened the old one). Within one process a lock on a
path is re-entrant (two trainers one after the other in a test, a resume in the same
interpreter), counted, and released when the last holder leaves.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sgpo.errors import UserError

LOCK_NAME = ".sgpo.lock"  # a run or eval folder's lock file

_HELD: dict[str, list[int]] = {}  # resolved path -> [fd, holders in this process]


class LockedError(UserError):
    """Another process holds the lock; the message names it."""


def holder_record(role: str) -> dict[str, Any]:
    return {"role": role, "host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)[:200]}


def _holder(path: str | os.PathLike) -> dict[str, Any]:
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) and "pid" in info else {}


def read_holder(path: str | os.PathLike) -> str:
    """The holder recorded in a lock file, as text ("" when none is recorded yet)."""
    info = _holder(path)
    if not info:
        return ""
    return f"host {info.get('host', '?')}, pid {info['pid']}, since {info.get('started', '?')}"


def _refusal(path: Path) -> str:
    info = _holder(path)
    if not info:
        return f"{path} is being written by another sgpo process (holder not yet recorded)"
    return f"{path} is being written by another {info.get('role') or 'sgpo process'} ({read_holder(path)})"


def _write_holder(fd: int, role: str) -> None:
    data = (json.dumps(holder_record(role)) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:  # a full disk: the lock still holds, only the holder's name is missing
        pass


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides who may read it
    except OSError as e:
        raise UserError(f"{path}: cannot create the lock file ({e.strerror or e})") from None


@contextmanager
def exclusive_lock(path: str | os.PathLike, role: str = "sgpo process", *, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive advisory lock on the file ``path`` (created if missing) and record
    this process as its holder, in the ``role`` it writes (``sgpo train``). Without ``wait`` a
    second holder fails at once with a :class:`LockedError` naming the first (its role, host,
    pid, start time); with ``wait`` it blocks until the first is done, saying once whom it waits for."""
    import fcntl

    path = Path(path)
    key = os.path.realpath(path)
    if key in _HELD:  # re-entrant within the process
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _release(key)
        return
    fd = _open(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise LockedError(f"{_refusal(path)}; wait for it to finish or choose another output") from None
            info = _holder(path)
            print(f"sgpo: waiting for {info.get('role') or 'another sgpo process'} ({read_holder(path) or path})",
                  file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP):
                raise UserError(f"{path}: this file system does not support file locks ({e.strerror}); "
                                "use a local or lock-capable folder") from None
            raise
    except BaseException:
        os.close(fd)
        raise
    _write_holder(fd, role)
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        _release(key)


def _release(key: str) -> None:
    entry = _HELD[key]
    entry[1] -= 1
    if entry[1] == 0:
        del _HELD[key]
        os.close(entry[0])  # releases the lock; the holder line stays (the next holder overwrites it)


def folder_lock(folder: str | os.PathLike, role: str) -> Any:
    """The one-writer lock of a run or eval folder (``FOLDER/.sgpo.lock``), held as ``role``."""
    return exclusive_lock(Path(folder) / LOCK_NAME, role)


class HeldLock:
    """A lock taken now and released by :meth:`release` (or at exit): for a lock held across
    method calls, as a trainer holds its run folder from set-up to the last checkpoint."""

    def __init__(self, cm: Any):
        self._cm = cm
        cm.__enter__()

    def release(self) -> None:
        if self._cm is not None:
            cm, self._cm = self._cm, None
            cm.__exit__(None, None, None)


__all__ = ["LOCK_NAME", "LockedError", "exclusive_lock", "folder_lock", "HeldLock", "read_holder"]
