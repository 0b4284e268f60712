"""A strategies file that is missing, misspelt or belongs to other problems stops a
strategy-guided run before the model loads (it used to train as GRPO with exit 0); a
partial match above data.min_strategy_coverage trains with a warning."""

import json

import pytest

from sgpo.cli import main
from sgpo.io import DataError
from sgpo.trainer.config import load_config
from sgpo.trainer.trainer import load_training_problems

STRATEGY = {"problem_type": "addition", "key_insight": "Add the ones digits first.",
            "plan": ["Write the numbers", "Add the digits", "Box the sum"]}


@pytest.fixture
def no_model_loads(monkeypatch):
    """Trip-wire: the checks must run before any weights are read."""
    import sgpo.models

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the user error was reported")

    monkeypatch.setattr(sgpo.models, "load_model", refuse)
    monkeypatch.setattr(sgpo.models, "load_tokenizer", refuse)


def _files(tmp_path, ids_in_file, n=4):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"{i} + 1?", "answer": str(i + 1)}) + "\n"
                            for i in range(n)))
    strategies = tmp_path / "s.jsonl"
    strategies.write_text("".join(json.dumps({"id": i, "status": "ok", "strategy": STRATEGY}) + "\n"
                                  for i in ids_in_file))
    return data, strategies


def _cfg(data, strategies, method="sgpo", *extra):
    return load_config(None, [f"data.path={data}", f"data.strategies_path={strategies}",
                              f"algorithm.method={method}", *extra])


def test_missing_strategies_file_names_it(tmp_path):
    data, strategies = _files(tmp_path, ["p0"])
    with pytest.raises(DataError, match="s-typo.jsonl: strategies file not found"):
        load_training_problems(_cfg(data, tmp_path / "s-typo.jsonl"))


def test_strategies_matching_no_id_is_an_error_with_counts(tmp_path):
    data, strategies = _files(tmp_path, ["row-1", "row-2", "row-3", "row-4"])  # extracted without --id-field
    with pytest.raises(DataError, match=r"s.jsonl: 0 of 4 problem ids of .*d.jsonl have a record here.*"
                                        r"\['row-1', 'row-2'\].*\['p0', 'p1'\]"):
        load_training_problems(_cfg(data, strategies))


def test_partial_match_below_threshold_is_an_error_above_it_a_warning(tmp_path, capsys):
    data, strategies = _files(tmp_path, ["p0", "p1", "p2"])  # 3 of 4
    with pytest.raises(DataError, match="3 of 4.*data.min_strategy_coverage=0.9"):
        load_training_problems(_cfg(data, strategies, "sgpo", "data.min_strategy_coverage=0.9"))
    ps = load_training_problems(_cfg(data, strategies))  # default 0.5
    assert ps.without_strategy == 1
    assert "1 of 4 problems have no record in" in capsys.readouterr().err


def test_ok_records_needed_and_methods_without_strategies_are_not_checked(tmp_path):
    data, strategies = _files(tmp_path, [])
    strategies.write_text("".join(json.dumps({"id": f"p{i}", "status": "leaked"}) + "\n" for i in range(4)))
    with pytest.raises(DataError, match="0 of 4 problems have a strategy with status ok"):
        load_training_problems(_cfg(data, strategies, "guided_rl"))
    assert load_training_problems(_cfg(data, strategies, "grpo")).without_strategy == 4


def test_sgpo_on_data_without_any_strategy_is_an_error(tmp_path):
    data, _ = _files(tmp_path, [])
    cfg = load_config(None, [f"data.path={data}", "algorithm.method=sgpo"])
    with pytest.raises(DataError, match=r"d.jsonl \(data.strategy_field\): 0 of 4 problems have a strategy"):
        load_training_problems(cfg)


def test_cli_exits_2_before_the_model_loads(tmp_path, capsys, no_model_loads):
    data, _ = _files(tmp_path, ["p0"])
    code = main(["train", "--output-dir", str(tmp_path / "run"), "--set", f"data.path={data}",
                 "--set", f"data.strategies_path={tmp_path / 'missing.jsonl'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "missing.jsonl: strategies file not found" in err
