"""Model-cache entries (``$SGPO_CACHE``, default ``~/.cache/sgpo``) built once and atomically,
safe on a cache shared by several processes, containers or hosts.

- **One builder.** :func:`cached_entry` takes the entry's lock (``NAME.lock`` beside it, see
  :mod:`sgpo.locks`); a second process needing the entry waits, then uses the first's result.
- **Whole or absent.** The entry is built in ``.NAME.tmp-HOST-PID-TOKEN`` beside it (unique
  across hosts and containers, whose PIDs repeat), completed by a marker written last,
  :data:`MARKER`, listing every file's size and SHA-256, then renamed into place.
- **Checked on every use.** An entry counts as built only with a valid marker whose files
  all exist with their recorded sizes (small files, config and tokenizer, are checked
  against their SHA-256 too; the weights by size, which is what a cut copy or a full disk
  changes). A damaged or incomplete entry is rebuilt; where it cannot be, one line names it.
- **An entry without a marker** (built before markers existed, or copied in by hand) is
  verified once: every JSON file parses and every safetensors file is exactly as long as its
  header says. If so the marker is written and the entry kept; otherwise it is rebuilt.
- **A full disk** during a build is one line (exit 2) and the partial folder is removed.
- Files honour the user's umask (nothing is written with fixed permissions).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import struct
from pathlib import Path
from typing import Callable

from sgpo.errors import UserError
from sgpo.locks import exclusive_lock

MARKER = ".sgpo-complete.json"
_SMALL = 16 << 20  # files up to this size are checked against their SHA-256 on every use
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class CacheError(UserError):
    """A cache entry that is damaged and cannot be rebuilt here, or a build that could not be written."""


def temp_name(target: Path) -> Path:
    """A build folder beside ``target``, unique across hosts and containers (the PID alone
    repeats: every container's first process is PID 1)."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:40]
    return target.with_name(f".{target.name}.tmp-{host}-{os.getpid()}-{secrets.token_hex(6)}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER)


def write_marker(folder: Path) -> None:
    """Record every file's size and SHA-256; written last, it says the entry is complete."""
    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in _files(folder)}
    data = json.dumps({"version": 1, "files": files}, indent=1)
    tmp = folder / f"{MARKER}.tmp"
    with tmp.open("w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MARKER)


def check_entry(folder: Path, required: tuple[str, ...] = ()) -> str:
    """Why ``folder`` is not a complete entry ("" when it is): no marker, a file missing, or
    one whose size (or, for small files, SHA-256) differs from the marker's record."""
    if not folder.is_dir():
        return "not built"
    try:
        files = json.loads((folder / MARKER).read_text())["files"]
        assert isinstance(files, dict)
    except FileNotFoundError:
        return "no completion marker"
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return f"unreadable {MARKER}"
    for name in required:
        if name not in files:
            return f"{name} missing"
    for name, info in files.items():
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} missing"
        if size != info.get("size"):
            return f"{name} is {size} bytes, {info.get('size')} when built"
        if size <= _SMALL and _sha256(path) != info.get("sha256"):
            return f"{name} changed since it was built (checksum)"
    return ""


def _safetensors_complete(path: Path) -> bool:
    """The file is exactly as long as its header says (a cut or zero-filled copy is not)."""
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 << 20:
                return False
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size == 8 + n + end
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return False


def verify_unmarked(folder: Path, required: tuple[str, ...]) -> str:
    """Why an entry without a marker cannot be trusted ("" when it can): a required file
    missing, a JSON file that does not parse, a safetensors file cut short."""
    for name in required:
        if not (folder / name).is_file():
            return f"{name} missing"
    for path in _files(folder):
        if path.suffix == ".json":
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return f"{path.name} is not valid JSON"
        elif path.suffix == ".safetensors" and not _safetensors_complete(path):
            return f"{path.name} is incomplete"
    return ""


def _is_disk_full(e: BaseException) -> OSError | None:
    if isinstance(e, OSError) and e.errno in _DISK_FULL:
        return e
    text = str(e)
    m = re.search(r"os error (\d+)", text)  # safetensors' Rust errors
    if m and int(m.group(1)) in _DISK_FULL:
        return OSError(int(m.group(1)), os.strerror(int(m.group(1))))
    if "No space left" in text or "File too large" in text or "Disk quota" in text:
        return OSError(errno.ENOSPC, "No space left on device")
    return None


def cached_entry(target: str | os.PathLike, build: Callable[[Path], None], *, what: str,
                 required: tuple[str, ...] = ("config.json",), cannot_rebuild: str = "") -> Path:
    """The cache entry ``target``, built by ``build(folder)`` (which writes every file into
    the empty ``folder``) on first use, or when the entry is damaged. ``what`` names the
    entry in messages; ``cannot_rebuild`` (say, a missing package) makes a missing or damaged
    entry a one-line :class:`CacheError` instead of a build."""
    target = Path(target)
    problem = check_entry(target, required)
    if not problem:
        return target
    if problem == "no completion marker" and not os.access(target.parent, os.W_OK) \
            and not verify_unmarked(target, required):  # a colleague's read-only cache from before markers
        from sgpo.errors import note_once

        note_once(f"{what} at {target} has no completion marker and its folder is read-only; it passed the "
                  "completeness check and is used as it is")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(target.with_name(target.name + ".lock"), f"the build of {what}", wait=True):
        for stale in target.parent.glob(f".{target.name}.tmp-*"):  # a builder killed mid-build (it held this lock)
            shutil.rmtree(stale, ignore_errors=True)
        problem = check_entry(target, required)
        if not problem:
            return target  # another process built it while this one waited
        if problem == "no completion marker" and not verify_unmarked(target, required):
            write_marker(target)  # built before markers existed: verified, kept
            return target
        if target.exists():
            problem = verify_unmarked(target, required) if problem == "no completion marker" else problem
        if cannot_rebuild:
            state = f"damaged ({problem})" if target.exists() else "not built"
            raise CacheError(f"{what} at {target} is {state} and cannot be rebuilt: {cannot_rebuild}")
        if target.exists():
            print(f"sgpo: {what} at {target} is damaged ({problem}); rebuilding it", flush=True)
        _build(target, build, what)
    return target


def _honour_umask(folder: Path) -> None:
    """Give every file and folder the permissions the umask allows (safetensors writes its
    files 0600 whatever the umask, so a team cache would be unreadable to the team)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _build(target: Path, build: Callable[[Path], None], what: str) -> None:
    tmp = temp_name(target)
    try:
        tmp.mkdir()
        build(tmp)
        _honour_umask(tmp)
        write_marker(tmp)
        if target.exists():  # damaged: moved aside first, so the rename below cannot fail on it
            old = temp_name(target)
            os.rename(target, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, target)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        full = _is_disk_full(e)
        if full is not None:
            raise CacheError(f"{what}: could not write {tmp} ({full.strerror}); nothing was left in the cache, "
                             "free space and rerun") from None
        raise


__all__ = ["MARKER", "CacheError", "cached_entry", "check_entry", "temp_name", "verify_unmarked", "write_marker"]
