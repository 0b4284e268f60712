"""The trainer's learning-curve probe (``eval.probe_every``) and run determinism, on the
strategy world's pre-trained model (built into the cache on first use): the probe scores
exactly what the evaluation scores, does not perturb training, and the same seed twice gives
identical runs."""

from __future__ import annotations

import json

import pytest
import torch

from sgpo.io import write_jsonl


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from sgpo.world.pretrain import world_model_path
    from sgpo.world.tasks import WorldSpec, make_problems

    root = tmp_path_factory.mktemp("probe")
    write_jsonl(root / "train.jsonl", make_problems(WorldSpec(), 16, seed=0, split="train"))
    write_jsonl(root / "probe.jsonl", make_problems(WorldSpec(), 8, seed=0, split="heldout"))
    return root, str(world_model_path())


def _run(world, name, *extra):
    from sgpo.trainer.config import load_config
    from sgpo.trainer.trainer import train

    root, model = world
    sets = ["algorithm.method=sgpo", f"data.path={root / 'train.jsonl'}", f"model.name_or_path={model}",
            "model.dtype=float32", "algorithm.samples_per_problem=6", "algorithm.group_guided=2", "algorithm.max_new_tokens=32",
            "algorithm.top_k=0", "training.max_steps=3", "training.prompts_per_step=4", "training.learning_rate=1e-3",
            "training.seed=3", "run.save_steps=0", "run.progress=false", "run.save_final_model=false",
            f"run.output_dir={root / name}", *extra]
    return train(load_config(None, sets))


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_probe_scores_like_the_evaluation_and_leaves_training_alone(world):
    from sgpo.evaluation.runner import evaluate_records
    from sgpo.generation import SamplingConfig

    root, _ = world
    probe = [f"eval.probe_file={root / 'probe.jsonl'}", "eval.probe_every=2", "eval.probe_samples=2"]
    a = _run(world, "with-probe", *probe)
    b = _run(world, "plain")
    c = _run(world, "plain-again")
    # the same seed twice on one machine: identical metrics and weights
    clock = ("time", "perf/throughput", "perf/tokens_per_s")  # wall-clock metrics differ run to run
    strip = lambda h: [{k: v for k, v in r.items() if not k.startswith(clock)} for r in h]  # noqa: E731
    assert strip(b.history) == strip(c.history)
    assert all(torch.equal(x, y) for x, y in zip(b.model.state_dict().values(), c.model.state_dict().values()))
    # probing does not change what is trained (its sampling seeds its own generator calls)
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    logged = _lines(root / "with-probe" / "metrics.jsonl")
    assert [r["step"] for r in logged if "probe/avg@k" in r] == [2, 3]  # every 2 steps and the last step
    assert "probe/avg@k" not in b.history[-1]
    # the last probe is the evaluation of the trained model with the probe's sampling
    rows = _lines(root / "probe.jsonl")
    sampling = SamplingConfig(temperature=0.6, top_p=0.95, max_new_tokens=32, seed=3)
    ref, _ = evaluate_records(a.model, a.tokenizer, [dict(r, strategy=None) for r in rows], "ref", sampling, 2,
                              batch_size=64, show_progress=False)
    assert logged[-1]["probe/avg@k"] == pytest.approx(ref["avg@k"]) and logged[-1]["probe/n"] == 8
    per_problem = _lines(root / "with-probe" / "probe.jsonl")
    assert sorted({r["step"] for r in per_problem}) == [2, 3] and len(per_problem) == 16
    assert {r["id"] for r in per_problem} == {r["id"] for r in rows}


def test_probe_needs_its_file():
    from sgpo.trainer.config import load_config

    with pytest.raises(ValueError, match="eval.probe_file"):
        load_config(None, ["data.path=x.jsonl", "eval.probe_every=5"]).validate()
    with pytest.raises(ValueError, match="eval.probe_samples"):
        load_config(None, ["data.path=x.jsonl", "eval.probe_samples=0"]).validate()
