"""SIGTERM (a scheduler preempting the job) and SIGINT (Ctrl-C) during `sgpo train` finish the
running step, save a checkpoint at it, say where in one line and exit 143 / 130; the rerun
resumes from that step. A resume also cuts TensorBoard's events back to the checkpoint, as
it cuts metrics.jsonl. The signals are real, sent to a training subprocess mid-step."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.test_reliability_train import _sets, _steps, _train, _train_and_kill

SIGNALLED = textwrap.dedent("""
    import os, signal, sys
    from sgpo.trainer import checkpoint
    from sgpo.cli import main

    at, signum = int(os.environ["SIGNAL_AT_STEP"]), int(os.environ["SIGNAL"])
    log = checkpoint.RunFolder.log_metrics

    def log_then_signal(self, record):  # inside the step: it must still finish and be saved
        if record["step"] == at:
            os.kill(os.getpid(), signum)
        log(self, record)

    checkpoint.RunFolder.log_metrics = log_then_signal
    sys.exit(main(["train"] + [a for s in sys.argv[1:] for a in ("--set", s)]))
""")


def _tb_steps(run):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = []
    for path in sorted(run.rglob("events.out.tfevents.*")):
        steps += [e.step for e in EventFileLoader(str(path)).Load()
                  if e.summary.value and e.summary.value[0].tag == "loss"]
    return sorted(steps)


@pytest.mark.slow
@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_step_saves_that_step_and_the_rerun_resumes_from_it(tmp_path, tiny_model_dir, signum, code):
    extra = ("training.max_steps=4", "run.save_steps=50")  # no checkpoint before the end otherwise
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "SIGNAL_AT_STEP": "2", "SIGNAL": str(int(signum))}
    proc = subprocess.run([sys.executable, "-c", SIGNALLED, *_sets(tmp_path, tiny_model_dir, *extra)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == code, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    ckpt = tmp_path / "run" / "checkpoint-2"
    assert last == (f"sgpo train: {signal.Signals(signum).name}: stopped after step 2; checkpoint saved to {ckpt}; "
                    "rerun the same command to resume from it")
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 2
    assert _steps(tmp_path) == [1, 2]
    res = _train(tmp_path, tiny_model_dir, *extra)
    assert [h["step"] for h in res.history] == [1, 2, 3, 4] and _steps(tmp_path) == [1, 2, 3, 4]


@pytest.mark.slow
def test_resume_cuts_tensorboard_events_to_the_checkpoint(tmp_path, tiny_model_dir):
    pytest.importorskip("tensorboard")
    extra = ("training.max_steps=5", "run.save_steps=2", "run.report_to=tensorboard")
    _train_and_kill(tmp_path, tiny_model_dir, 4, *extra)  # killed as step 4 is logged: TensorBoard has 1-3
    assert _tb_steps(tmp_path / "run") == [1, 2, 3]
    _train(tmp_path, tiny_model_dir, *extra)  # resumes from checkpoint-2
    assert _tb_steps(tmp_path / "run") == [1, 2, 3, 4, 5]  # step 3 once
    _train(tmp_path, tiny_model_dir, "training.max_steps=1", *extra[1:], "run.resume=false", "run.overwrite=true")
    assert _tb_steps(tmp_path / "run") == [1]  # --overwrite deletes the earlier run's events too
