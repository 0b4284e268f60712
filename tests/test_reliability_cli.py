"""Every error a user can cause ends in one line naming the setting or the file and exit
status 2, before any model weights load: bad config files and values, bad paths, bad data,
sampling settings out of range, prompts longer than the model's context, a full disk."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from sgpo.cli import main

BIG = "What is 1 + 1? " * 350_000  # a 5 MB prompt


@pytest.fixture
def no_weights_load(monkeypatch):
    """Trip-wire: the error must come before any weights are read (tokenizers may load)."""
    import sgpo.models

    def refuse(*a, **k):
        raise AssertionError("model weights were loaded before the user error was reported")

    monkeypatch.setattr(sgpo.models, "load_model", refuse)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read_only_dir(tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits; /sys refuses new entries
        return "/sys/sgpo-reliability-test/run"
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return str(ro / "run")


@pytest.fixture
def files(tmp_path, tiny_model_dir):
    good = _jsonl(tmp_path / "d.jsonl", [{"problem": "1 + 1?", "answer": "2"}, {"problem": "2 + 2?", "answer": "4"}])
    (tmp_path / "bad.yaml").write_text("model:\n  name_or_path: [unclosed\n")
    (tmp_path / "types.yaml").write_text("training:\n  max_steps: ten\n")
    (tmp_path / "lr.yaml").write_text("training:\n  learning_rate: 1e-4\n")
    (tmp_path / "cfgdir").mkdir()
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"problem": "caf\xe9?", "answer": "1"}\n')
    _jsonl(tmp_path / "nan.jsonl", [{"problem": "1 + 1?", "answer": float("nan")}])
    _jsonl(tmp_path / "big.jsonl", [{"problem": "1 + 1?", "answer": "2"}, {"id": "huge", "problem": BIG, "answer": "2"}])
    return {"data": str(good), "dir": str(tmp_path), "model": str(tiny_model_dir), "ro": _read_only_dir(tmp_path)}


TRAIN_CASES = {
    # name: (extra argv, fragment of the one-line message)
    "yaml syntax": (["--config", "{dir}/bad.yaml"], "bad.yaml: invalid YAML at line "),
    "config is a folder": (["--config", "{dir}/cfgdir"], "cfgdir: config file not found (it is a folder)"),
    "config missing": (["--config", "{dir}/nope.yaml"], "nope.yaml: config file not found"),
    "wrong yaml type": (["--config", "{dir}/types.yaml"], "training.max_steps = 'ten': expected int, got str"),
    "1e-4 read as text": (["--config", "{dir}/lr.yaml"], "write 1.0e-4"),
    "max_new_tokens 0": (["--set", "algorithm.max_new_tokens=0"], "algorithm.max_new_tokens = 0: must be >= 1"),
    "lr nan": (["--set", "training.learning_rate=nan"], "training.learning_rate = nan: must be a finite number"),
    "dtype float33": (["--set", "model.dtype=float33"], "model.dtype = 'float33' is not one of"),
    "temperature -1": (["--set", "algorithm.temperature=-1"], "algorithm.temperature = -1.0: must be > 0"),
    "top_p 2": (["--set", "algorithm.top_p=2"], "algorithm.top_p = 2.0: must be > 0.0 and <= 1.0"),
    "save_total_limit -1": (["--set", "run.save_total_limit=-1"], "run.save_total_limit = -1: must be >= 0"),
    "output dir is a file": (["--output-dir", "{dir}/a_file"], "run.output_dir {dir}/a_file is a file"),
    "output dir read-only": (["--output-dir", "{ro}"], "run.output_dir {ro}: cannot write there"),
    "missing model": (["--set", "model.name_or_path={dir}/no/such/model"], "model.name_or_path {dir}/no/such/model: no "
                                                                           "such model folder"),
    "non-utf8 data": (["--set", "data.path={dir}/latin1.jsonl"], "latin1.jsonl, row 1: not UTF-8"),
    "nan answer": (["--set", "data.path={dir}/nan.jsonl"], "nan.jsonl, row 1, field 'answer': nan is not a usable value"),
    "demo path": (["--set", "data.path=demo"], "demo: not a local file"),
    "5 MB prompt": (["--set", "data.path={dir}/big.jsonl"], "problem 'huge': the prompt is about 5"),
}


def _assert_one_line_user_error(argv: list[str], fragment: str, capsys) -> None:
    """The CLI exits 2 with one line naming the fault, no traceback."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_user_errors(case, files, tmp_path, capsys, no_weights_load):
    extra, fragment = TRAIN_CASES[case]
    argv = ["train", "--output-dir", str(tmp_path / "run"), "--method", "grpo", "--set", f"data.path={files['data']}",
            "--set", f"model.name_or_path={files['model']}", "--set", "run.progress=false"]
    argv += [a.format(**files) for a in extra]
    _assert_one_line_user_error(argv, fragment.format(**files), capsys)


EVAL_CASES = {
    "temperature -1": (["--temperature", "-1"], "--temperature -1.0: must be >= 0"),
    "top-p 2": (["--top-p", "2"], "--top-p 2.0: must be in (0, 1]"),
    "limit -2": (["--limit", "-2"], "--limit -2: must be >= 0"),
    "dtype float33": (["--dtype", "float33"], "--dtype float33: must be one of"),
    "max-new-tokens 0": (["--max-new-tokens", "0"], "--max-new-tokens 0: must be >= 1"),
    "num-samples 0": (["--num-samples", "0"], "--num-samples 0: must be >= 1"),
    "missing model": (["--model", "{dir}/no/such/model"], "--model {dir}/no/such/model: no such model folder"),
    "output dir is a file": (["--output-dir", "{dir}/a_file"], "--output-dir {dir}/a_file is a file"),
    "output dir read-only": (["--output-dir", "{ro}"], "--output-dir {ro}: cannot write there"),
    "non-utf8 benchmark": (["--benchmarks", "{dir}/latin1.jsonl"], "latin1.jsonl, row 1: not UTF-8"),
    "nan answer": (["--benchmarks", "{dir}/nan.jsonl"], "field 'answer': nan is not a usable value"),
    "5 MB prompt": (["--benchmarks", "{dir}/big.jsonl"], "problem 'huge': the prompt is about 5"),
}


@pytest.mark.parametrize("case", list(EVAL_CASES))
def test_eval_user_errors(case, files, tmp_path, capsys, no_weights_load):
    extra, fragment = EVAL_CASES[case]
    extra = [a.format(**files) for a in extra]
    argv = ["eval", "--model", files["model"], "--benchmarks", files["data"], "--output-dir", str(tmp_path / "out"),
            "--max-new-tokens", "4", "--no-progress"]
    for i in range(0, len(extra), 2):  # later options win in argparse
        argv += extra[i:i + 2]
    _assert_one_line_user_error(argv, fragment.format(**files), capsys)


FULL_DISK_TRAIN = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))  # metrics fit, a checkpoint does not
    from sgpo.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_a_full_disk_stops_training_with_a_message(files, tmp_path):
    run = tmp_path / "run"
    argv = ["train", "--output-dir", str(run), "--method", "sft", "--set", f"data.path={files['dir']}/sft.jsonl",
            "--set", f"model.name_or_path={files['model']}", "--set", "run.progress=false",
            "--set", "training.max_steps=2", "--set", "run.save_steps=1", "--set", "training.prompts_per_step=1"]
    _jsonl(tmp_path / "sft.jsonl", [{"problem": "1 + 1?", "answer": "2", "teacher_response": "\\boxed{2}"}])
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_TRAIN, *argv], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "checkpoint-1: could not write" in proc.stderr
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert not (run / "checkpoint-1").exists()  # the partial checkpoint is removed, not left for resume to trip on


@pytest.mark.slow
def test_a_full_disk_stops_eval_and_keeps_finished_records(files, tmp_path):
    from sgpo.io import read_jsonl_tolerant

    bench = _jsonl(tmp_path / "b.jsonl", [{"id": f"q{i}", "problem": f"{i} + 1?", "answer": str(i + 1)} for i in range(4)])
    argv = ["eval", "--model", files["model"], "--benchmarks", str(bench), "--num-samples", "1", "--batch-size", "1",
            "--max-new-tokens", "4", "--no-progress", "--output-dir"]
    assert main(argv + [str(tmp_path / "probe")]) == 0
    size = len((tmp_path / "probe" / "records" / "b.jsonl").read_text().splitlines()[0].encode()) + 1
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    script = FULL_DISK_TRAIN.replace("1_000_000, 1_000_000", f"{int(2.5 * size)}, {int(2.5 * size)}")
    proc = subprocess.run([sys.executable, "-c", script, *argv, str(tmp_path / "out")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "b.jsonl: could not write" in proc.stderr
    assert len(read_jsonl_tolerant(tmp_path / "out" / "records" / "b.jsonl")) == 2  # finished problems stay readable
