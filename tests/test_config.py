"""The training configuration: every shipped YAML loads and validates, every field is
documented (docs/config.md is generated from the field comments and up to date), moved or
misspelt keys fail with a message naming them."""

import dataclasses
import json
from pathlib import Path

import pytest

from sgpo.trainer.config import MOVED, TrainConfig, field_docs, load_config, reference_markdown

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_there_are_shipped_configs():
    assert {p.name for p in CONFIGS} >= {"cpu-tiny.yaml", "qwen2.5-7b-instruct.yaml", "llama-3.1-8b-instruct.yaml",
                                           "qwen2.5-7b-instruct-lora.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path, monkeypatch):
    monkeypatch.chdir(REPO)  # relative data paths are relative to the repository root, where the commands run
    cfg = load_config(path, ["data.path=x.jsonl"] if "path: \"\"" in path.read_text() else [])
    cfg.validate()
    if not cfg.data.path.endswith("x.jsonl"):
        assert Path(cfg.data.path).exists(), cfg.data.path


def test_every_field_is_documented_and_docs_config_md_is_current():
    for section in dataclasses.fields(TrainConfig):
        cls = section.default_factory
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{section.name}: undocumented fields {missing}"
    assert (REPO / "docs" / "config.md").read_text() == reference_markdown(), (
        "docs/config.md is stale; regenerate it with the command at its top")


def test_moved_keys_name_their_new_place_and_the_new_place_exists():
    cfg = TrainConfig()
    for old, new in MOVED.items():
        section, key = new.split(".")
        assert key in {f.name for f in dataclasses.fields(getattr(cfg, section))}, new
        with pytest.raises(ValueError, match=f"'{old}': it moved to '{new}'"):
            load_config(None, [f"{old}=1"])


def test_yaml_unknown_key_names_file_and_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("loss:\n  tua: 0.1\n")
    with pytest.raises(ValueError, match=r"c\.yaml: unknown config key 'loss\.tua'"):
        load_config(p)
    p.write_text("losses:\n  tau: 0.1\n")
    with pytest.raises(ValueError, match="unknown config section 'losses'"):
        load_config(p)


def test_loss_section_is_the_frozen_core_object():
    from sgpo.core import LossSettings

    cfg = load_config(None, ["loss.tau=0.5", "loss.proximal=none"])
    assert isinstance(cfg.loss, LossSettings) and cfg.loss.tau == 0.5 and cfg.loss.proximal == "none"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.loss.tau = 1.0  # type: ignore[misc]
    assert LossSettings() == TrainConfig().loss  # one definition of every default
    assert json.loads(json.dumps(cfg.to_dict()))["loss"]["tau"] == 0.5


def test_demo_problem_file_of_cpu_tiny_is_the_procedural_set():
    """configs/data/demo-train-64.jsonl is make_problems(64, seed=0); regenerate it with
    python -c "import json; from sgpo.arithmetic import make_problems as m;
    print(''.join(json.dumps(r) + '\\n' for r in m(64, seed=0)), end='')" > configs/data/demo-train-64.jsonl"""
    from sgpo.arithmetic import make_problems

    rows = [json.loads(x) for x in (REPO / "configs" / "data" / "demo-train-64.jsonl").read_text().splitlines()]
    assert rows == make_problems(64, seed=0)
