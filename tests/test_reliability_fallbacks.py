"""No silent fallbacks: a model folder copied without its chat template is an error for
training and evaluation unless the prompt format is set (data.prompt_format / --prompt-format
plain), and what sgpo chooses on the user's behalf (the dtype, the plain-text prompt, the pad
token) is said once."""

import json
import shutil

import pytest

from sgpo.cli import main
from sgpo.prompts import PromptStyle
from tests.test_reliability_cli import no_weights_load  # noqa: F401  (fixture)
from tests.test_reliability_train import _sets


@pytest.fixture
def no_template_model(tmp_path, tiny_model_dir):
    """The tiny model copied without its chat template (chat_template.jinja left behind)."""
    model = tmp_path / "copied"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    return model


def test_training_a_model_without_a_chat_template_is_an_error(tmp_path, no_template_model, capsys, no_weights_load):
    argv = ["train"] + [a for s in _sets(tmp_path, no_template_model, "training.max_steps=1") for a in ("--set", s)]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the tokenizer has no chat template" in err
    assert "data.prompt_format plain" in err


def test_evaluating_a_model_without_a_chat_template_is_an_error(tmp_path, no_template_model, capsys, no_weights_load):
    data = tmp_path / "b.jsonl"
    data.write_text(json.dumps({"problem": "1 + 1?", "answer": "2"}) + "\n")
    capsys.readouterr()
    assert main(["eval", "--model", str(no_template_model), "--benchmarks", str(data), "--output-dir",
                 str(tmp_path / "eval"), "--max-new-tokens", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no chat template" in err and "--prompt-format plain" in err


@pytest.mark.slow
def test_the_plain_format_set_explicitly_trains_and_evaluates(tmp_path, no_template_model, capsys):
    sets = _sets(tmp_path, no_template_model, "training.max_steps=1", "data.prompt_format=plain")
    assert main(["train"] + [a for s in sets for a in ("--set", s)]) == 0
    data = tmp_path / "b.jsonl"
    data.write_text(json.dumps({"problem": "1 + 1?", "answer": "2"}) + "\n")
    assert main(["eval", "--model", str(no_template_model), "--benchmarks", str(data), "--output-dir",
                 str(tmp_path / "eval"), "--max-new-tokens", "2", "--num-samples", "1", "--no-progress",
                 "--prompt-format", "plain"]) == 0
    record = json.loads((tmp_path / "eval" / "records" / "b.jsonl").read_text().splitlines()[0])
    assert json.dumps(record)  # evaluated


def test_the_plain_prompt_fallback_and_the_auto_dtype_are_said_once(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import sgpo.errors
    from sgpo.models import load_model

    monkeypatch.setattr(sgpo.errors, "_NOTED", set())  # as in a fresh process

    class NoTemplate:
        chat_template = None

    capsys.readouterr()
    PromptStyle().render(NoTemplate(), "1 + 1?")
    PromptStyle().render(NoTemplate(), "2 + 2?")
    assert PromptStyle(format="plain").render(NoTemplate(), "1 + 1?").startswith("user: 1 + 1?")
    load_model(str(tiny_model_dir), dtype="auto")
    load_model(str(tiny_model_dir), dtype="auto")
    err = capsys.readouterr().err
    assert err.count("sgpo: note: the tokenizer has no chat template") == 1
    assert err.count("sgpo: note: dtype auto: loading models in float32 (no bf16-capable GPU)") == 1
