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
    load_config(None, ["data.path=x.jsonl", "eval.probe_every=5", "eval.probe_guided_problems=4"]).validate()
    with pytest.raises(ValueError, match="eval.probe_kl_initial is measured on the unguided probe"):
        load_config(None, ["data.path=x.jsonl", "eval.probe_every=5", "eval.probe_guided_problems=4",
                           "eval.probe_kl_initial=true"]).validate()
    with pytest.raises(ValueError, match="eval.probe_guided_problems = -1: must be >= 0"):
        load_config(None, ["data.path=x.jsonl", "eval.probe_guided_problems=-1"]).validate()
    with pytest.raises(ValueError, match="eval.probe_samples"):
        load_config(None, ["data.path=x.jsonl", "eval.probe_samples=0"]).validate()


class _Recorded:
    """The probe's generators, recording every prompt text they are asked to complete and the
    completions they return (the guided probe's context; the KL's tokens)."""

    calls: list = []

    def __init__(self, inner):
        self.inner = inner

    def generate(self, prompts, sampling, n=1, **kw):
        out = self.inner.generate(prompts, sampling, n=n, **kw)
        _Recorded.calls.append((list(prompts), out))
        return out


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_guided_probe_and_kl_to_the_initial_model(tmp_path, tiny_model_dir, monkeypatch, lora_rank):
    """The guided probe asks for the guided rollouts' prompts of the first training problems with
    a strategy (sgpo.trainer.rollouts.render_prompts); probe/kl_initial is the mean over the
    unguided probe's completion tokens of the full-vocabulary KL(policy || initial) from full
    logits, the initial model a frozen copy (kept only for it) or, under LoRA, the adapter off."""
    import copy

    from sgpo.data import build_problems
    from sgpo.evaluation import runner
    from sgpo.generation import make_generator
    from sgpo.models import load_model, load_tokenizer
    from sgpo.trainer.config import load_config
    from sgpo.trainer.rollouts import render_prompts
    from sgpo.trainer.trainer import Trainer
    from tests.test_trainer_step import ROWS, ScriptedGenerator

    _Recorded.calls = []
    wrap = lambda *a, **kw: _Recorded(make_generator(*a, **kw))  # noqa: E731
    monkeypatch.setattr(runner, "make_generator", wrap)
    monkeypatch.setattr("sgpo.generation.make_generator", wrap)
    write_jsonl(tmp_path / "probe.jsonl", [{"id": "p1", "problem": "What is 3 + 3?", "answer": "6"},
                                           {"id": "p2", "problem": "What is 9 - 4?", "answer": "5"}])
    cfg = load_config(None, ["data.path=unused", f"model.name_or_path={tiny_model_dir}", "model.dtype=float32",
                             "algorithm.samples_per_problem=6", "algorithm.group_guided=2", "algorithm.max_new_tokens=6",
                             "training.prompts_per_step=4", "training.max_steps=2", "training.learning_rate=0.05",
                             "run.progress=false", "run.save_steps=0", "run.save_final_model=false",
                             f"run.output_dir={tmp_path / 'run'}", f"model.lora.rank={lora_rank}",
                             "eval.probe_every=1", f"eval.probe_file={tmp_path / 'probe.jsonl'}",
                             "eval.probe_guided_problems=2", "eval.probe_kl_initial=true"])
    tok = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), dtype="float32")
    initial = copy.deepcopy(model).double().eval()
    problems = build_problems(ROWS, "test")
    trainer = Trainer(cfg, problems=problems, model=model, tokenizer=tok, generator=ScriptedGenerator(tok))
    assert (trainer.initial is None) == bool(lora_rank) and trainer.teacher is None
    result = trainer.train()
    last = result.history[-1]
    assert [r.get("probe/guided_n") for r in result.history] == [2.0, 2.0]
    assert 0.0 <= last["probe/guided_accuracy"] <= 1.0 and "probe/avg@k" in last
    guided = [prompts for prompts, _ in _Recorded.calls if "<strategy>" in prompts[0]]
    want = render_prompts(tok, problems.problems[:2], guided=True, style=cfg.data.style())  # ids a, b
    assert len(guided) == 2 and all(sorted(g) == sorted(want) for g in guided)
    (prompts, outs), = [c for c in _Recorded.calls if "<strategy>" not in c[0][0]][-1:]
    policy = copy.deepcopy(result.model)
    policy = (policy.merge_and_unload() if lora_rank else policy).double().eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for prompt, group in zip(prompts, outs):
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            for c in group:
                ids = torch.tensor([p + c.token_ids])
                at = slice(len(p) - 1, len(p) + len(c.token_ids) - 1)
                lp, lr = (torch.log_softmax(m(ids).logits[0, at], -1) for m in (policy, initial))  # [T, V]
                total += float((lp.exp() * (lp - lr)).sum())
                count += len(c.token_ids)
    assert count > 0 and total > 0
    # float32 trainer vs float64 reference; the reverse KL is 4e-3 away without LoRA (lr 0.05)
    assert last["probe/kl_initial"] == pytest.approx(total / count, rel=1e-4)
    lines = _lines(tmp_path / "run" / "probe.jsonl")
    assert sorted(r["id"] for r in lines if r.get("guided")) == ["a", "a", "b", "b"]
