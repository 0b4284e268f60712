"""A run folder holds one run: checkpoint rotation never deletes what resume needs, a
killed run's rerun logs no step twice, resume survives a torn metrics line or an emptied
trainer_state.json, and a run with other settings or --no-resume is refused instead of
mixed into the folder. Kills are real SIGKILLs of a training subprocess at a chosen point."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from sgpo.errors import UserError
from sgpo.trainer.checkpoint import RunFolder, RunFolderError
from sgpo.trainer.config import load_config

ROWS = [{"id": f"p{i}", "problem": f"What is {a} + {b}?", "answer": str(a + b),
         "teacher_response": f"{a} + {b} = {a + b}, so the answer is \\boxed{{{a + b}}}."}
        for i, (a, b) in enumerate([(2, 3), (4, 4), (1, 6), (5, 2)])]


def _sets(tmp_path, tiny_model_dir, *extra):
    data = tmp_path / "d.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return [f"data.path={data}", f"model.name_or_path={tiny_model_dir}", f"run.output_dir={tmp_path / 'run'}",
            "model.dtype=float32", "algorithm.method=sft", "algorithm.max_new_tokens=4", "training.prompts_per_step=1",
            "training.learning_rate=1e-3", "run.progress=false", "run.save_final_model=false", *extra]


def _train(tmp_path, tiny_model_dir, *extra):
    from sgpo.trainer.trainer import train

    return train(load_config(None, _sets(tmp_path, tiny_model_dir, *extra)))


def _steps(tmp_path):
    return [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


KILLER = textwrap.dedent("""
    import os, signal, sys
    from sgpo.trainer import checkpoint
    from sgpo.trainer.config import load_config
    from sgpo.trainer.trainer import train

    kill_after = int(os.environ["KILL_AFTER_STEP"])
    log = checkpoint.RunFolder.log_metrics

    def log_then_die(self, record):
        log(self, record)
        if record["step"] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # as `kill -9` between logging and the next checkpoint

    checkpoint.RunFolder.log_metrics = log_then_die
    train(load_config(None, sys.argv[1:]))
""")


def _train_and_kill(tmp_path, tiny_model_dir, kill_after, *extra):
    env = {**os.environ, "KILL_AFTER_STEP": str(kill_after), "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-c", KILLER, *_sets(tmp_path, tiny_model_dir, *extra)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


@pytest.mark.parametrize("limit", [-1, -5])
def test_negative_save_total_limit_is_rejected(limit):
    with pytest.raises(ValueError, match="run.save_total_limit"):
        load_config(None, ["data.path=demo", f"run.save_total_limit={limit}"]).validate()


@pytest.mark.parametrize("limit,kept", [(0, [1, 2, 3]), (1, [3]), (2, [2, 3])])
def test_rotation_keeps_the_newest_and_zero_keeps_all(tmp_path, limit, kept):
    from accelerate import Accelerator

    folder, acc = RunFolder(tmp_path, limit), Accelerator(cpu=True)
    for step in (1, 2, 3):
        folder.save(acc, step, {"step": step}, {"algorithm": {"method": "sgpo"}})
    assert [int(p.name.split("-")[1]) for p in folder.checkpoints()] == kept


@pytest.mark.slow
def test_kill_before_the_first_checkpoint_logs_no_step_twice(tmp_path, tiny_model_dir):
    # killed after step 1 was logged, no checkpoint yet (save_steps=50): the rerun starts at step 1 again
    _train_and_kill(tmp_path, tiny_model_dir, 1, "training.max_steps=2", "run.save_steps=50")
    assert _steps(tmp_path) == [1]
    _train(tmp_path, tiny_model_dir, "training.max_steps=2", "run.save_steps=50")
    assert _steps(tmp_path) == [1, 2]


@pytest.mark.slow
def test_kill_after_a_checkpoint_cuts_metrics_on_disk_before_training(tmp_path, tiny_model_dir):
    _train_and_kill(tmp_path, tiny_model_dir, 2, "training.max_steps=3", "run.save_steps=1")
    assert _steps(tmp_path) == [1, 2]  # checkpoint-1 exists, step 2 logged but not saved
    folder = RunFolder(tmp_path / "run", 2)
    assert [p.name for p in folder.checkpoints()] == ["checkpoint-1"]
    res = _train(tmp_path, tiny_model_dir, "training.max_steps=3", "run.save_steps=1")
    assert _steps(tmp_path) == [1, 2, 3]
    assert [h["step"] for h in res.history] == [1, 2, 3]


@pytest.mark.slow
def test_resume_survives_a_torn_metrics_line_and_an_empty_trainer_state(tmp_path, tiny_model_dir):
    _train(tmp_path, tiny_model_dir, "training.max_steps=2", "run.save_steps=1")
    run = tmp_path / "run"
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "lo')  # a kill in the middle of an append
    (run / "checkpoint-2" / "trainer_state.json").write_text("")  # a crash on a full disk
    res = _train(tmp_path, tiny_model_dir, "training.max_steps=3", "run.save_steps=1")
    assert [h["step"] for h in res.history] == [1, 2, 3]  # resumed from checkpoint-1
    assert _steps(tmp_path) == [1, 2, 3]


@pytest.mark.slow
def test_no_resume_into_a_run_folder_is_refused_unless_overwrite(tmp_path, tiny_model_dir):
    _train(tmp_path, tiny_model_dir, "training.max_steps=2", "run.save_steps=1")
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(RunFolderError, match="already holds a run.*--overwrite"):
        _train(tmp_path, tiny_model_dir, "training.max_steps=1", "run.resume=false")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    assert _steps(tmp_path) == [1, 2]
    res = _train(tmp_path, tiny_model_dir, "training.max_steps=1", "run.resume=false", "run.overwrite=true")
    assert [h["step"] for h in res.history] == [1]
    assert _steps(tmp_path) == [1]
    assert [p.name for p in RunFolder(tmp_path / "run", 2).checkpoints()] == ["checkpoint-1"]


@pytest.mark.slow
def test_resume_with_another_method_or_math_setting_is_refused(tmp_path, tiny_model_dir):
    _train(tmp_path, tiny_model_dir, "training.max_steps=1", "run.save_steps=1")
    with pytest.raises(RunFolderError, match="algorithm.method='sft' \\(now 'luffy'\\)"):
        _train(tmp_path, tiny_model_dir, "training.max_steps=2", "algorithm.method=luffy")
    with pytest.raises(RunFolderError, match="training.learning_rate"):
        _train(tmp_path, tiny_model_dir, "training.max_steps=2", "training.learning_rate=1e-4")
    assert _steps(tmp_path) == [1]
    # a system knob and a longer run are the same run: it resumes
    res = _train(tmp_path, tiny_model_dir, "training.max_steps=2", "system.micro_batch_size=2")
    assert [h["step"] for h in res.history] == [1, 2]


@pytest.mark.slow
def test_cli_refusal_is_one_line_exit_2(tmp_path, tiny_model_dir, capsys):
    from sgpo.cli import main

    _train(tmp_path, tiny_model_dir, "training.max_steps=1", "run.save_steps=1")
    args = ["train", "--no-resume"] + [a for s in _sets(tmp_path, tiny_model_dir, "training.max_steps=1")
                                        for a in ("--set", s)]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds a run" in err and "Traceback" not in err
    assert issubclass(RunFolderError, UserError)
