"""docs/python-api.md: the typed config reads exactly as YAML does, and the runnable example
in the page trains a few steps and evaluates, as written."""

import re
import shutil
from pathlib import Path

import pytest
import yaml

from sgpo.trainer.config import TrainConfig, load_config

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {"model": {"name_or_path": "strategy-world", "dtype": "float32"},
            "data": {"path": "train.jsonl", "fewshot": [{"problem": "1 + 1?", "response": "\\boxed{2}"}]},
            "algorithm": {"method": "luffy", "samples_per_problem": 6, "temperature": 0.7},
            "loss": {"aggregation": "seq-mean-token-sum", "aggregation_length": 64},
            "training": {"learning_rate": 3e-5, "max_steps": 4}}


def test_typed_config_equals_the_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(SECTIONS))
    assert TrainConfig.build(**SECTIONS).validate().to_dict() == load_config(path).validate().to_dict()
    changed = TrainConfig.build(**SECTIONS).replace(algorithm={"method": "grpo"})
    assert changed.algorithm.method == "grpo" and changed.algorithm.samples_per_problem == 6
    assert TrainConfig.build(**SECTIONS).algorithm.method == "luffy"  # replace returned a copy


@pytest.mark.parametrize("sections, needle", [
    ({"algorithm": {"group_auto": 8}}, "'algorithm.group_auto': it moved to 'algorithm.samples_per_problem'"),
    ({"algorithm": {"nope": 1}}, "unknown config key 'algorithm.nope'"),
    ({"nope": {"x": 1}}, "unknown config section 'nope'"),
    ({"algorithm": {"samples_per_problem": "8"}, "data": {"path": "x"}}, "algorithm.samples_per_problem"),
    ({"loss": {"aggregation": "mean"}, "data": {"path": "x"}}, "loss.aggregation"),
])
def test_typed_config_fails_as_the_yaml_file_does(tmp_path, sections, needle):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(sections))
    errors = []
    for make in (lambda: TrainConfig.build(**sections).validate(), lambda: load_config(path).validate()):
        with pytest.raises(ValueError, match=re.escape(needle)) as e:
            make()
        errors.append(str(e.value).replace(f"{path}: ", ""))
    assert errors[0] == errors[1]


@pytest.mark.slow
def test_the_python_api_page_runs_as_written(tmp_path, monkeypatch, capsys):
    text = (REPO / "docs" / "python-api.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    shutil.copytree(REPO / "data" / "world", tmp_path / "data" / "world")
    monkeypatch.chdir(tmp_path)  # the page runs from the repository root; its files are copied here
    exec(compile(code, "docs/python-api.md", "exec"), {})
    out = capsys.readouterr().out
    assert "step 3:" in out and "4 + 4 trajectories per problem" in out and "held-out avg@2" in out
    assert (tmp_path / "runs" / "python-api" / "metrics.jsonl").is_file()
