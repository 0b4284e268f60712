"""Runs know their data, and strategies that give the answer away never reach a
strategy-guided method: a resume on a changed problems or strategies file is refused naming
the file (unless run.allow_data_change); leaking strategies from a file or a column are
dropped with a warning naming ids, counted in run-data.json, and above data.max_leak_share the
run stops before the model loads."""

import json

import pytest

from sgpo.cli import main
from sgpo.io import DataError
from sgpo.trainer.checkpoint import DATA_FILE, RunFolder, RunFolderError
from sgpo.trainer.config import load_config
from sgpo.trainer.trainer import load_training_problems
from tests.test_reliability_strategies import STRATEGY, no_model_loads  # noqa: F401  (fixture)
from tests.test_reliability_train import ROWS, _sets, _steps, _train

LEAKY = {**STRATEGY, "key_insight": "The sum is {answer}."}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _strategy_files(tmp_path, n=12, leaky=()):
    rows = [{"id": f"p{i}", "problem": f"What is {i} + 100?", "answer": str(i + 100)} for i in range(n)]
    data = _write(tmp_path / "d.jsonl", rows)
    strategies = _write(tmp_path / "s.jsonl", [
        {"id": r["id"], "status": "ok",
         "strategy": {**LEAKY, "key_insight": LEAKY["key_insight"].format(answer=r["answer"])} if i in leaky else STRATEGY}
        for i, r in enumerate(rows)])
    return data, strategies


@pytest.mark.slow
def test_resume_on_a_changed_problems_file_is_refused_naming_it(tmp_path, tiny_model_dir):
    _train(tmp_path, tiny_model_dir, "training.max_steps=1", "run.save_steps=1")
    changed = [dict(r) for r in ROWS]
    changed[2]["answer"] = "99"  # same path, same size class: another data set
    _write(tmp_path / "d.jsonl", changed)
    with pytest.raises(RunFolderError, match=r"d.jsonl: the problems changed since the run in .* started .*"
                                             r"run.allow_data_change=true"):
        _train(tmp_path, tiny_model_dir, "training.max_steps=2", "run.save_steps=1")
    assert _steps(tmp_path) == [1]
    res = _train(tmp_path, tiny_model_dir, "training.max_steps=2", "run.save_steps=1", "run.allow_data_change=true")
    assert [h["step"] for h in res.history] == [1, 2]
    stored = json.loads((tmp_path / "run" / DATA_FILE).read_text())
    assert stored["problems"]["rows"] == 4 and "strategies" not in stored  # sft does not use strategies


def test_a_changed_strategies_file_is_a_changed_run(tmp_path):
    data, strategies = _strategy_files(tmp_path)
    cfg = load_config(None, [f"data.path={data}", f"data.strategies_path={strategies}", "algorithm.method=sgpo",
                             f"run.output_dir={tmp_path / 'run'}"])
    folder = RunFolder(tmp_path / "run", 2)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1}\n')  # the folder holds a run
    folder.check_data(load_training_problems(cfg).fingerprints(True), allow_change=False, is_main_process=True)
    folder.check_data(load_training_problems(cfg).fingerprints(True), allow_change=False, is_main_process=True)
    lines = strategies.read_text().splitlines()
    rec = json.loads(lines[3])
    rec["strategy"] = {**STRATEGY, "key_insight": "Count on from the larger number."}
    strategies.write_text("\n".join(lines[:3] + [json.dumps(rec)] + lines[4:]) + "\n")
    with pytest.raises(RunFolderError, match=r"s.jsonl: the strategies changed since the run"):
        folder.check_data(load_training_problems(cfg).fingerprints(True), allow_change=False, is_main_process=True)


@pytest.mark.slow
def test_leaking_strategies_are_dropped_with_a_warning_and_counted(tmp_path, tiny_model_dir, capsys):
    from sgpo.trainer.trainer import Trainer

    data, strategies = _strategy_files(tmp_path, n=12, leaky=(5,))  # 1 of 12: under 10%
    cfg = load_config(None, [*_sets(tmp_path, tiny_model_dir), f"data.path={data}",
                             f"data.strategies_path={strategies}", "algorithm.method=sgpo"])
    trainer = Trainer(cfg)
    trainer.run_folder.release()
    err = capsys.readouterr().err
    assert "1 of 12 strategies from" in err and "'p5' (string leak: the gold answer '105'" in err
    assert [p.strategy is None for p in trainer.problems.problems].count(True) == 1
    assert trainer.problems.problems[5].strategy is None
    record = json.loads((tmp_path / "run" / DATA_FILE).read_text())
    assert record["leaked_strategies"] == 1 and record["leaked_ids"] == ["p5"]


@pytest.mark.parametrize("source", ["file", "column"])
def test_above_the_leak_share_the_run_stops_before_the_model_loads(tmp_path, capsys, no_model_loads, source):
    data, strategies = _strategy_files(tmp_path, n=4, leaky=(1, 2))
    sets = [f"data.path={data}", "algorithm.method=sgpo", f"run.output_dir={tmp_path / 'run'}"]
    if source == "file":
        sets.append(f"data.strategies_path={strategies}")
    else:  # the strategies as a column of the problems file
        _write(data, [{**json.loads(d), "strategy": json.loads(s)["strategy"]}
                      for d, s in zip(data.read_text().splitlines(), strategies.read_text().splitlines())])
    capsys.readouterr()
    assert main(["train"] + [a for s in sets for a in ("--set", s)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2 of 4 strategies (50%) give the gold answer away" in err
    assert "data.max_leak_share=0.1" in err and "'p1'" in err


def test_strategies_extraction_judged_against_the_same_gold_skip_only_the_costly_filter():
    from sgpo.data import Problem, ProblemSet
    from sgpo.strategies.leaks import drop_leaking_strategies

    def problems():
        return ProblemSet([Problem("a", "What is 10 / 2?", "5", "Halve: $\\frac{10}{2}$."),  # symbolic leak only
                           Problem("b", "What is 3 + 3?", "6", "The answer is 6.")]  # string leak
                          + [Problem(f"c{i}", "x?", "7", "Count carefully.") for i in range(18)], "mem", 0)

    ps = problems()
    assert drop_leaking_strategies(ps, 0.5, warn=False) == ["a", "b"]
    ps = problems()  # extraction judged 'a' and 'b' against these golds: 'b' is still caught by the string filter
    assert drop_leaking_strategies(ps, 0.5, warn=False, checked={"a": "5", "b": "6"}) == ["b"]
    ps = problems()  # judged against another gold: both filters again
    assert drop_leaking_strategies(ps, 0.5, warn=False, checked={"a": "4"}) == ["a", "b"]
