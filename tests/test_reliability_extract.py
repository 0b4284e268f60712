"""`sgpo extract` keeps secrets out of its output, fails loudly when nothing succeeded, never
writes into its input, and refuses a second run on the same output; a full disk stops it
with a message and leaves the records already written readable. Against real loopback
HTTP servers, one of which echoes the API key back as some providers do."""

import json
import os
import resource
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from sgpo.cli import main
from sgpo.io import exclusive_lock, read_jsonl_tolerant
from sgpo.strategies.extract import lock_path
from sgpo.testing import LoopbackChatServer, Reply, strategy_reply
from tests.test_extract import extract_argv, write_input

KEY = "sk-test-Zq81b4F0c2d9E7a6B5c4D3e2F1a0"


class EchoKey:
    """A provider that rejects the key and quotes it back, like 'Incorrect API key provided: sk-...'."""

    def __call__(self, body):
        return Reply(status=401, body=json.dumps({"error": {
            "message": f"Incorrect API key provided: {KEY}. You can find your API key at https://example.invalid",
            "type": "invalid_request_error", "code": "invalid_api_key"}}))


def _all_text(tmp_path):
    return "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())


def test_an_echoed_key_never_reaches_a_file_and_the_run_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TEACHER_KEY", KEY)
    inp, out = write_input(tmp_path / "in.jsonl", ["a", "b"]), tmp_path / "out.jsonl"
    with LoopbackChatServer(EchoKey()) as server:
        code = main(extract_argv(inp, out, server.base_url, "--api-key-env", "TEACHER_KEY"))
    captured = capsys.readouterr()
    assert code == 1  # `extract && train` stops
    assert "no request succeeded: 2 problems failed" in captured.err
    assert [r["error"] for r in read_jsonl_tolerant(out)] == ["HTTP 401 Unauthorized (invalid_api_key)"] * 2
    assert KEY not in _all_text(tmp_path) and KEY not in captured.err + captured.out


def test_a_server_that_is_down_or_failing_exits_non_zero(tmp_path, capsys):
    inp = write_input(tmp_path / "in.jsonl", ["a"])
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    assert main(extract_argv(inp, tmp_path / "o1.jsonl", dead)) == 1
    with LoopbackChatServer(lambda body: Reply(status=500, body="Internal error for key " + KEY)) as server:
        assert main(extract_argv(inp, tmp_path / "o2.jsonl", server.base_url)) == 1
    err = capsys.readouterr().err
    assert "ConnectError" in err and "HTTP 500 Internal Server Error" in err and KEY not in err
    # one success is enough for exit 0 (the summary asks for a rerun of the rest)
    replies = iter([Reply(status=500), Reply(status=500), Reply(status=500)] + [Reply(texts=[strategy_reply()] * 2)] * 9)
    inp2 = write_input(tmp_path / "in2.jsonl", ["a", "b"])
    with LoopbackChatServer(lambda body: next(replies)) as server:
        assert main(extract_argv(inp2, tmp_path / "o3.jsonl", server.base_url, "--concurrency", "1")) == 0


def test_an_unset_api_key_variable_is_warned_about(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    inp = write_input(tmp_path / "in.jsonl", ["a"])
    with LoopbackChatServer(lambda body: Reply(texts=[strategy_reply()] * 2)) as server:
        assert main(extract_argv(inp, tmp_path / "o.jsonl", server.base_url, "--api-key-env", "NO_SUCH_KEY_VAR")) == 0
    assert "$NO_SUCH_KEY_VAR (--api-key-env) is not set" in capsys.readouterr().err


def test_output_equal_to_input_is_refused(tmp_path, monkeypatch, capsys):
    inp = write_input(tmp_path / "in.jsonl", ["a"])
    before = inp.read_bytes()
    os.symlink(inp, tmp_path / "link.jsonl")
    monkeypatch.chdir(tmp_path)
    with LoopbackChatServer(lambda body: Reply(texts=[strategy_reply()] * 2)) as server:
        for output in ("in.jsonl", "./sub/../in.jsonl", "link.jsonl"):
            (tmp_path / "sub").mkdir(exist_ok=True)
            assert main(extract_argv(inp, tmp_path / output, server.base_url)) == 2
        assert server.requests == []
    assert "is the input file" in capsys.readouterr().err
    assert inp.read_bytes() == before


SLOW_EXTRACT = textwrap.dedent("""
    import sys
    from sgpo.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_a_second_run_on_the_same_output_is_refused(tmp_path, capsys):
    inp, out = write_input(tmp_path / "in.jsonl", ["a", "b"]), tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    with LoopbackChatServer(lambda body: Reply(texts=[strategy_reply()] * 2, delay_s=1.0)) as server:
        argv = extract_argv(inp, out, server.base_url, "--concurrency", "1", "--timeout", "10")
        first = subprocess.Popen([sys.executable, "-c", SLOW_EXTRACT, *argv], env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert main(argv) == 2  # while the first run is in flight
        assert first.wait(timeout=60) == 0, first.stderr.read()
        assert len(server.requests) == 2  # each problem asked once
    err = capsys.readouterr().err
    assert "being written by another sgpo extract" in err and f"pid {first.pid}," in err  # names the holder
    assert sorted(r["id"] for r in read_jsonl_tolerant(out)) == ["a", "b"]
    with exclusive_lock(lock_path(out)):  # released when the first run ended
        pass


FULL_DISK = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
    from sgpo.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.slow
def test_a_full_disk_stops_extract_with_a_message_and_keeps_earlier_records(tmp_path):
    ids = [f"p{i}" for i in range(6)]
    inp, out = write_input(tmp_path / "in.jsonl", ids), tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    with LoopbackChatServer(lambda body: Reply(texts=[strategy_reply()] * 2)) as server:
        argv = extract_argv(inp, out, server.base_url, "--concurrency", "1")
        probe = tmp_path / "probe.jsonl"
        assert main(extract_argv(inp, probe, server.base_url, "--concurrency", "1")) == 0
        size = len(probe.read_text().splitlines()[0].encode()) + 1  # one record's bytes
        limit = int(2.5 * size)  # two records fit, the third is cut
        proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(limit), *argv], env=env, capture_output=True,
                              text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "out.jsonl: could not write (File too large)" in proc.stderr
    assert [r["id"] for r in read_jsonl_tolerant(out)] == ["p0", "p1"]
    assert out.read_bytes().endswith(b"\n")
    assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] != limit  # only the child was limited
