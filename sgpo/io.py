"""Record I/O shared by every stage: reading JSONL / Parquet / Hugging Face datasets with
errors that name the file, row and field, and crash-safe appends of JSONL records.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from sgpo.errors import UserError
from sgpo.locks import exclusive_lock  # noqa: F401  (re-exported: the lock lived here)


class DataError(UserError):
    """Bad input data; the message names the source, the row (1-based) and the field."""

    def __init__(self, source: str, message: str, row: int | None = None, field: str | None = None):
        where = source
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")
        self.source, self.row, self.field = source, row, field


def _decode_lines(path: Path) -> list[str]:
    """The file's lines as text; bytes that are not UTF-8 are a DataError naming the line."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(str(path), f"cannot read ({e.strerror})") from None
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for lineno, line in enumerate(lines, start=1):
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(str(path), f"not UTF-8 (byte {line[e.start]:#04x} at column {e.start + 1}); "
                            "convert the file to UTF-8", row=lineno) from None
    return out


JSONL_EXPECTED = "expected JSON Lines (one JSON object per line) or a .json file holding an array of objects"


def _iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    lines = _decode_lines(path)
    if path.suffix.lower() == ".json":
        text = "\n".join(lines)
        if text.lstrip().startswith("["):
            yield from _json_array(path, text)
            return
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(str(path), f"invalid JSON ({e.msg} at column {e.colno}); {JSONL_EXPECTED}",
                            row=lineno) from None
        if not isinstance(rec, dict):
            raise DataError(str(path), f"expected a JSON object, got {type(rec).__name__}; {JSONL_EXPECTED}",
                            row=lineno)
        yield rec


def _json_array(path: Path, text: str) -> Iterator[dict[str, Any]]:
    """The rows of a ``.json`` file holding one array of objects (row N = the N-th element)."""
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(str(path), f"invalid JSON array ({e.msg} at line {e.lineno}, column {e.colno}); "
                        f"{JSONL_EXPECTED}") from None
    if not isinstance(rows, list):
        raise DataError(str(path), f"expected an array of objects, got {type(rows).__name__}; {JSONL_EXPECTED}")
    for row, rec in enumerate(rows, start=1):
        if not isinstance(rec, dict):
            raise DataError(str(path), f"array element is {type(rec).__name__}, expected a JSON object", row=row)
        yield rec


def read_records(source: str | os.PathLike, split: str = "train") -> list[dict[str, Any]]:
    """Read rows from a ``.jsonl``/``.json`` file, a ``.parquet`` file, or a Hugging Face
    dataset (a local ``save_to_disk`` folder or a Hub id). Returns plain dicts.

    A ``.json`` file may be JSON Lines or one array of objects. Row numbers in errors are
    1-based line numbers for JSONL and 1-based row indices otherwise (array elements included).
    """
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".parquet"):
        if not path.exists():
            raise DataError(str(path), "file not found")
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        return list(_iter_jsonl(path))
    if path.is_dir() and any((path / n).exists() for n in ("dataset_info.json", "dataset_dict.json")):
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(str(path), f"split '{split}' not found (have {sorted(ds)})")
            ds = ds[split]
        return [dict(r) for r in ds]
    if path.exists():
        raise DataError(str(path), "unsupported format: expected .jsonl, .json, .parquet or a dataset folder")
    try:
        import datasets

        ds = datasets.load_dataset(str(source), split=split)
    except Exception as e:  # the Hub is optional; say what was tried
        raise DataError(str(source), f"not a local file and could not be loaded from the Hugging Face Hub ({e})") from None
    return [dict(r) for r in ds]


class WriteError(UserError):
    """A write that could not complete (disk full, file too large, read-only folder). What
    was written before it is intact; the partial write itself has been undone."""

    def __init__(self, path: str | os.PathLike, err: OSError):
        reason = err.strerror or str(err)
        super().__init__(f"{path}: could not write ({reason}); earlier results are intact, "
                         "free space or fix the folder and rerun to continue")
        self.path = str(path)


def _write_all(fd: int, data: bytes) -> None:
    """os.write may write fewer bytes than asked (a full disk, a file-size limit, a signal):
    write the rest, and let the OSError the next call raises propagate."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # never seen on Linux for a regular file, but would loop forever
            raise OSError(errno.EIO, "write returned 0 bytes")
        view = view[n:]


def append_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Append records as complete lines followed by fsync, whole or not at all: a write that
    fails part-way (disk full) is cut back to the previous end of the file and raises
    :class:`WriteError`; a kill mid-write leaves at most one torn last line (skipped by
    :func:`read_jsonl_tolerant`, cut by :func:`repair_jsonl_tail`)."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if not data:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as e:
        raise WriteError(path, e) from None
    try:
        start = os.fstat(fd).st_size
        try:
            _write_all(fd, data.encode("utf-8"))
            os.fsync(fd)
        except OSError as e:
            os.ftruncate(fd, start)  # shrinking needs no space
            raise WriteError(path, e) from None
    finally:
        os.close(fd)


def ensure_writable_dir(path: str | os.PathLike, setting: str) -> None:
    """Create ``path`` if needed and prove a file can be written there, so a job fails at the
    start, in one line naming ``setting``, not after hours (a file in the way, a read-only
    mount, no permission)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{setting} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".sgpo-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{setting} {path}: cannot write there ({e.strerror or e})") from None


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True if two paths name one file (links and relative paths resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist yet
        return Path(a).resolve() == Path(b).resolve()


def read_jsonl_tolerant(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSONL file this project appends to, ignoring a torn final line left by a kill."""
    path = Path(path)
    if not path.exists():
        return []
    out: list[dict[str, Any]] = []
    lines = _decode_lines(path)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # torn last line from an interrupted append
            raise DataError(str(path), "invalid JSON", row=i + 1) from None
    return out


def repair_jsonl_tail(path: str | os.PathLike) -> bool:
    """Cut a torn final line (no trailing newline) left by a kill, before appending again.
    Returns True if something was cut."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return False
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return False
    cut = data.rfind(b"\n") + 1
    with path.open("r+b") as f:
        f.truncate(cut)
    return True


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write to a temp file in the same folder, fsync, rename, fsync the folder: readers see
    the old file or the new one, never a half-written one, and after a power loss the rename
    itself is on disk; on failure the old file is untouched and a :class:`WriteError` is raised."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """:func:`write_text_atomic` for bytes."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WriteError(path, e) from None


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be
    opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except (OSError, AttributeError):
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON whole or not at all (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Write ``records`` as a JSONL file whole or not at all (see :func:`write_text_atomic`)."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
