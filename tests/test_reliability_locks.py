"""One writer per run folder and eval folder: a second `sgpo train` or `sgpo eval` into a
folder another process is writing exits 2 at once naming the holder (host, pid, start
time); `--overwrite` of such a folder is refused and deletes nothing; a lock left by a dead
process is taken over. The other writers are real processes (flock is per process)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from sgpo.cli import main
from sgpo.locks import LOCK_NAME, exclusive_lock, read_holder
from tests.test_reliability_train import _sets

HOLD = textwrap.dedent("""
    import sys
    from sgpo.locks import folder_lock
    with folder_lock(sys.argv[1], "test holder"):
        print("held", flush=True)
        sys.stdin.read()
""")


PAUSED_TRAIN = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from sgpo.trainer import checkpoint
    from sgpo.cli import main

    log, go = checkpoint.RunFolder.log_metrics, Path(os.environ["GO_FILE"])

    def log_then_wait(self, record):  # the first run is mid-training while the second starts
        log(self, record)
        if record["step"] == 1:
            Path(str(go) + ".waiting").touch()
            while not go.exists():
                time.sleep(0.05)

    checkpoint.RunFolder.log_metrics = log_then_wait
    sys.exit(main(sys.argv[1:]))
""")


def _env():
    return {**os.environ, "PYTHONPATH": os.getcwd()}


def _hold(folder):
    """A second process holding ``folder``'s lock until its stdin closes."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _release(proc):
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0


def _train_argv(tmp_path, tiny_model_dir, *extra):
    return ["train"] + [a for s in _sets(tmp_path, tiny_model_dir, *extra) for a in ("--set", s)]


@pytest.mark.slow
def test_a_second_train_into_a_running_folder_exits_2_naming_the_holder(tmp_path, tiny_model_dir, capsys):
    argv = _train_argv(tmp_path, tiny_model_dir, "training.max_steps=3", "run.save_steps=1")
    go = tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", PAUSED_TRAIN, *argv], env={**_env(), "GO_FILE": str(go)},
                             stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "run" / LOCK_NAME
    deadline = time.monotonic() + 300
    while not (tmp_path / "go.waiting").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    capsys.readouterr()
    try:
        assert main(argv) == 2  # while the first one trains
    finally:
        go.touch()
    err = capsys.readouterr().err
    assert "being written by another sgpo train" in err and f"pid {first.pid}," in err and "since " in err
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # each step once
    with exclusive_lock(lock):  # released when the first run ended
        pass


@pytest.mark.slow
def test_overwrite_of_a_locked_run_folder_is_refused_and_deletes_nothing(tmp_path, tiny_model_dir, capsys):
    run = tmp_path / "run"
    (run / "checkpoint-1").mkdir(parents=True)
    (run / "checkpoint-1" / "trainer_state.json").write_text('{"step": 1}')
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    holder = _hold(run)
    try:
        capsys.readouterr()
        assert main(_train_argv(tmp_path, tiny_model_dir, "training.max_steps=1") + ["--overwrite"]) == 2
    finally:
        _release(holder)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"pid {holder.pid}," in err
    assert (run / "checkpoint-1" / "trainer_state.json").exists() and (run / "metrics.jsonl").exists()


@pytest.mark.slow
def test_a_second_eval_into_a_folder_being_written_exits_2(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "b.jsonl"
    data.write_text(json.dumps({"problem": "1 + 1?", "answer": "2"}) + "\n")
    out = tmp_path / "eval"
    holder = _hold(out)
    try:
        capsys.readouterr()
        assert main(["eval", "--model", str(tiny_model_dir), "--benchmarks", str(data), "--output-dir", str(out),
                     "--max-new-tokens", "2", "--no-progress"]) == 2
    finally:
        _release(holder)
    err = capsys.readouterr().err
    assert "being written by another test holder" in err and f"pid {holder.pid}," in err  # as it named itself
    assert not (out / "records").exists()  # nothing generated


@pytest.mark.slow
def test_the_lock_of_a_dead_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    holder = _hold(run)
    holder.send_signal(signal.SIGKILL)  # kill -9: the lock file stays, naming a dead process
    holder.wait(timeout=60)
    assert f"pid {holder.pid}," in read_holder(run / LOCK_NAME)
    from sgpo.locks import folder_lock

    with folder_lock(run, "sgpo train"):
        assert f"pid {os.getpid()}," in read_holder(run / LOCK_NAME)
