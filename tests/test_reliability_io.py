"""Writes are whole or absent: a short os.write is completed, a write that cannot complete
(a full disk, simulated with a file-size limit in a subprocess) is undone and stops with a
clear error, and what was written before stays readable. Unreadable input is a DataError."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from sgpo import io
from sgpo.io import DataError, append_jsonl, read_jsonl_tolerant, read_records, write_json_atomic


def test_short_writes_are_completed(tmp_path, monkeypatch):
    real_write = os.write

    def short_write(fd, data):  # what a nearly full disk or a signal does: fewer bytes than asked
        return real_write(fd, bytes(data[:100]))

    monkeypatch.setattr(io.os, "write", short_write)
    recs = [{"id": i, "text": "x" * 1000} for i in range(3)]
    append_jsonl(tmp_path / "r.jsonl", recs)
    write_json_atomic(tmp_path / "r.json", recs)
    monkeypatch.undo()
    assert read_jsonl_tolerant(tmp_path / "r.jsonl") == recs
    assert json.loads((tmp_path / "r.json").read_text()) == recs


def test_an_atomic_write_flushes_the_folder_after_the_rename(tmp_path, monkeypatch):
    """The rename is a change of the folder: without fsyncing the folder a power loss can lose
    it even though the file's bytes were flushed."""
    import stat

    real_fsync, real_replace, events = os.fsync, os.replace, []
    monkeypatch.setattr(io.os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b))[1])
    monkeypatch.setattr(io.os, "fsync", lambda fd: (events.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode)
                                                                  else "file"), real_fsync(fd))[1])
    write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert events == ["file", "rename", "dir"]


FULL_DISK = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))  # the disk is full at 10 kB
    from sgpo.io import append_jsonl, write_json_atomic
    path, out = sys.argv[1], []
    for rec in ({"id": 1, "text": "a" * 6000}, {"id": 2, "text": "b" * 6000}, {"id": 3, "text": "c"}):
        try:
            append_jsonl(path, [rec])
            out.append("ok")
        except Exception as e:
            out.append(f"{type(e).__name__}: {e}")
    try:
        write_json_atomic(path + ".json", {"big": "d" * 20000})
        out.append("ok")
    except Exception as e:
        out.append(f"{type(e).__name__}: {e}")
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_a_full_disk_undoes_the_partial_write_and_says_so(tmp_path):
    path = tmp_path / "records.jsonl"
    (tmp_path / "records.jsonl.json").write_text('{"old": true}\n')
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    first, second, third, atomic = json.loads(proc.stdout)
    assert first == "ok"
    assert second.startswith("WriteError") and "File too large" in second and "earlier results are intact" in second
    assert third == "ok"  # a small record still fits, on its own line
    assert [r["id"] for r in read_jsonl_tolerant(path)] == [1, 3]
    assert atomic.startswith("WriteError")
    assert json.loads((tmp_path / "records.jsonl.json").read_text()) == {"old": True}  # old file untouched
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_write_error_is_a_user_error():
    from sgpo.errors import UserError

    assert issubclass(io.WriteError, UserError) and issubclass(DataError, UserError)


@pytest.mark.parametrize("name", ["bad.jsonl", "bad.json"])
def test_non_utf8_input_names_file_and_row(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b'{"problem": "ok", "answer": "1"}\n{"problem": "caf\xe9", "answer": "2"}\n')
    with pytest.raises(DataError, match=f"{name}, row 2: not UTF-8"):
        read_records(path)
    with pytest.raises(DataError, match="row 2: not UTF-8"):
        read_jsonl_tolerant(path)


def test_a_json_file_holding_an_array_of_objects_is_read_as_rows(tmp_path):
    rows = [{"problem": "1 + 1?", "answer": "2"}, {"problem": "2 + 2?", "answer": "4"}]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(rows, indent=2))  # pretty-printed, as `json.dump` users write it
    assert read_records(path) == rows
    path.write_text(json.dumps([rows[0], "text"]))
    with pytest.raises(DataError, match="data.json, row 2: array element is str, expected a JSON object"):
        read_records(path)


@pytest.mark.parametrize("name,text", [("one.json", '{\n  "problem": "1 + 1?",\n  "answer": "2"\n}\n'),
                                       ("rows.jsonl", '[1, 2]\n'), ("cut.json", '[{"problem": "x"}\n')])
def test_anything_else_that_is_not_json_lines_says_so(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match=f"{name}.*expected JSON Lines \\(one JSON object per line\\)"):
        read_records(path)
