"""Evaluation reuses a saved record only if everything that decided it is unchanged: the
problem text, the gold answer, the model's weights, the prompt and the sampling. Stale
records are generated again and the summary says how many were reused."""

import json
import time

import pytest

from sgpo.evaluation.runner import evaluate_records, records_path
from sgpo.generation import SamplingConfig
from tests.test_eval_runner import ANSWERS, PROBLEMS, PlainTokenizer, ScriptedGenerator

SAMPLING = SamplingConfig(temperature=0.6, top_p=0.95, max_new_tokens=16, seed=0)
KW = dict(batch_size=2, model_id="m", show_progress=False, grader_timeout_s=0.3)


def _run(tmp_path, problems, model=None):
    gen = ScriptedGenerator(ANSWERS)
    result, records = evaluate_records(model, PlainTokenizer(), problems, "toy", SAMPLING, 2, generator=gen,
                                       output_dir=tmp_path, **KW)
    return gen, result, records


def test_a_changed_gold_answer_is_graded_again(tmp_path):
    _run(tmp_path, PROBLEMS)
    fixed = [dict(p) for p in PROBLEMS]
    fixed[0]["answer"] = "3"  # the dataset's answer for p1 was corrected
    gen, result, records = _run(tmp_path, fixed)
    assert sum(gen.calls) == 1  # only p1 again
    assert records[0]["answer"] == "3" and records[0]["scores"] == [0.0, 0.0]
    assert result["reused"] == 2 and result["stale"] == 1


def test_a_changed_problem_text_is_generated_again(tmp_path):
    _run(tmp_path, PROBLEMS)
    edited = [dict(p) for p in PROBLEMS]
    edited[2]["problem"] = "Name the day after Sunday, please."
    gen, result, _ = _run(tmp_path, edited)
    assert sum(gen.calls) == 1 and result["reused"] == 2


def test_weights_retrained_in_the_same_folder_are_evaluated_again(tmp_path, tiny_model_dir):
    import shutil

    from sgpo.models import load_model

    folder = tmp_path / "final"
    shutil.copytree(tiny_model_dir, folder)
    _run(tmp_path / "eval", PROBLEMS, model=str(folder))
    gen, result, _ = _run(tmp_path / "eval", PROBLEMS, model=str(folder))
    assert gen.calls == [] and result["reused"] == 3  # same files: reused
    model = load_model(str(folder), dtype="float32")
    time.sleep(0.01)
    model.save_pretrained(folder)  # "retrained": the files are rewritten
    gen, result, _ = _run(tmp_path / "eval", PROBLEMS, model=str(folder))
    assert sum(gen.calls) == 3 and result["reused"] == 0 and result["stale"] == 3


def test_weights_changed_in_memory_are_evaluated_again(tmp_path, tiny_model_dir):
    import torch

    from sgpo.models import load_model

    model = load_model(str(tiny_model_dir), dtype="float32")
    _run(tmp_path, PROBLEMS, model=model)
    gen, _, _ = _run(tmp_path, PROBLEMS, model=model)
    assert gen.calls == []
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3)  # one optimiser step
    gen, result, _ = _run(tmp_path, PROBLEMS, model=model)
    assert sum(gen.calls) == 3 and result["reused"] == 0


def _retrain(folder):
    import torch

    from sgpo.models import load_model

    lm = load_model(str(folder), dtype="float32")
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(1e-3)
    lm.save_pretrained(folder)


@pytest.mark.slow
def test_cli_summary_says_how_many_were_reused(tmp_path, tiny_model_dir, capsys):
    import shutil

    from sgpo.cli import main

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    bench = tmp_path / "b.jsonl"
    bench.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    args = ["eval", "--model", str(model), "--benchmarks", str(bench), "--num-samples", "1",
            "--max-new-tokens", "4", "--output-dir", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 0
    assert main(args) == 0
    assert "3 reused from earlier records" in capsys.readouterr().out
    assert len(records_path(tmp_path / "out", "b").read_text().splitlines()) == 3
    _retrain(model)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "0 reused" in out and "3 regenerated" in out


def test_fingerprint_of_a_parameter_beyond_float32_index_precision():
    import torch

    from sgpo.models import weights_fingerprint

    big = torch.nn.Embedding(28_311_552 // 576, 576)  # SmolLM2's embedding size: 2^24 < numel
    before = weights_fingerprint(big)
    with torch.no_grad():
        big.weight[-1, -1] += 1.0  # the last value is sampled
    assert weights_fingerprint(big) != before
