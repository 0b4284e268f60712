"""End-to-end training runs of every method: finite loss, every trained parameter changed,
metrics logged, checkpoint and resume work, and the CLI drives the same code.

Methods whose gradient needs a correct answer among the samples (grpo, guided_rl) run the
real SmolLM2-135M-Instruct on one-digit additions with a short answer format, where it is
right about one time in ten; the others run a tiny random model with the same tokenizer
(their gradient exists whatever the rewards: distillation of all guided samples with constant
weights, NLL, LUFFY's always-correct off-policy trace)."""

import json
from pathlib import Path

import pytest
import torch

from sgpo.data import build_problems
from sgpo.trainer.config import load_config
from sgpo.trainer.trainer import train

STRATEGY = {"problem_type": "addition of small whole numbers",
            "key_insight": "Add the ones digits first, then the tens, carrying when needed.",
            "plan": ["Write both numbers one under the other", "Add digit by digit from the right",
                     "Carry when a column exceeds nine", "Put the result in a box"]}


SYSTEM = ("You are a careful math assistant. Solve the problem briefly and end with the final answer in "
          "\\boxed{}, for example: 3 + 4 = 7, so the answer is \\boxed{7}.")
REAL_MODEL_METHODS = ("grpo", "guided_rl")
REPO = Path(__file__).resolve().parents[1]


def _problems():
    rows = []
    for i, (a, b) in enumerate([(2, 3), (4, 4), (1, 6), (5, 2), (3, 3), (2, 6), (4, 1), (7, 2)]):
        rows.append({"id": f"p{i}", "problem": f"What is {a} + {b}?", "answer": str(a + b), "strategy": STRATEGY,
                     "teacher_response": f"We add {a} and {b}: {a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."})
    return build_problems(rows, "test")


def _cfg(tmp_path, method, model, *extra):
    sets = [f"algorithm.method={method}", "data.path=unused", f"run.output_dir={tmp_path / method}",
            f"model.name_or_path={model}", "model.dtype=float32", f"data.system_prompt={SYSTEM}",
            "data.instruction=Answer briefly and put the final answer in \\boxed{}.",
            "algorithm.samples_per_problem=6", "algorithm.group_guided=2", "algorithm.max_new_tokens=32", "algorithm.top_k=8",
            "algorithm.temperature=0.7", "training.max_steps=2", "training.prompts_per_step=4",
            "training.learning_rate=1e-4", "system.micro_batch_size=8", "training.seed=1", "run.save_steps=0",
            "run.progress=false", "algorithm.weight_mode=constant", "algorithm.distill_on=all", *extra]
    return load_config(None, sets)


def _model_for(method, smollm2_dir, tiny_model_dir):
    return str(smollm2_dir if method in REAL_MODEL_METHODS else tiny_model_dir)


def _state(path):
    from sgpo.models import load_model

    return {k: v.clone() for k, v in load_model(path, dtype="float32").state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sgpo", "grpo", "sft", "luffy", "imitation", "guided_rl"])
def test_method_learns(tmp_path, method, smollm2_dir, tiny_model_dir):
    model = _model_for(method, smollm2_dir, tiny_model_dir)
    initial = _state(model)
    res = train(_cfg(tmp_path, method, model), problems=_problems())
    assert len(res.history) == 2 and res.skipped_updates == 0
    for rec in res.history:
        assert torch.isfinite(torch.tensor(rec["loss"])), rec
    unchanged = [n for n, p in res.model.state_dict().items() if torch.equal(p, initial[n])]
    assert not unchanged, f"parameters not updated: {unchanged[:5]}"
    lines = [json.loads(x) for x in (res.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    expected = {"loss", "grad_norm", "lr", "time_rollout", "time_update"}
    expected |= {"sgpo": {"p_auto", "p_guided", "weight/mean", "loss/distill", "distill/kl_mean", "distill/top10_share"},
                 "grpo": {"p_auto", "reward/auto_mean", "loss/rl"}, "sft": {"loss/nll"},
                 "luffy": {"loss/offpolicy", "loss/rl"}, "imitation": {"loss/nll", "p_guided"},
                 "guided_rl": {"p_guided", "loss/rl"}}[method]
    assert expected <= set(lines[-1]), expected - set(lines[-1])
    assert (res.output_dir / "final" / "model.safetensors").exists()
    assert json.loads((res.output_dir / "config.json").read_text())["algorithm"]["method"] == method


@pytest.mark.slow
def test_resume_continues_from_checkpoint(tmp_path, tiny_model_dir):
    first = train(_cfg(tmp_path, "sgpo", tiny_model_dir, "training.max_steps=1", "run.save_steps=1"), problems=_problems())
    assert (first.output_dir / "checkpoint-1" / "trainer_state.json").exists()
    second = train(_cfg(tmp_path, "sgpo", tiny_model_dir, "training.max_steps=2"), problems=_problems())
    assert [h["step"] for h in second.history] == [1, 2]  # step 1 read back, only step 2 trained
    lines = (second.output_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("proximal", ["c1", "c2", "c3"])
def test_several_updates_per_rollout_use_the_proximal_terms(tmp_path, tiny_model_dir, proximal):
    res = train(_cfg(tmp_path, "sgpo", tiny_model_dir, "algorithm.mini_batches=2", f"loss.proximal={proximal}",
                     "training.max_steps=1"), problems=_problems())
    assert torch.isfinite(torch.tensor(res.history[0]["loss"]))
    assert "loss/distill" in res.history[0]


@pytest.mark.slow
def test_cli_train_on_a_jsonl_file(tmp_path, tiny_model_dir):
    from sgpo.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"problem": p.problem, "answer": p.answer}) + "\n" for p in _problems().problems))
    args = ["train", "--method", "grpo", "--output-dir", str(tmp_path / "cli"), "--set", f"data.path={data}",
            "--set", f"model.name_or_path={tiny_model_dir}"]
    for s in ["algorithm.samples_per_problem=2", "algorithm.max_new_tokens=8", "training.max_steps=1",
              "training.prompts_per_step=1", "run.progress=false", "run.save_final_model=false"]:
        args += ["--set", s]
    assert main(args) == 0
    assert json.loads((tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "x", "answer": "1"}\n{"problem": "y"}\n')
    assert main(["train", "--output-dir", str(tmp_path / "bad"), "--set", f"data.path={bad}",
                 "--set", f"model.name_or_path={tiny_model_dir}"]) == 2


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["sgpo", "sft"])
def test_method_learns_on_gpu_in_bf16(tmp_path, method, tiny_model_dir):
    """The CUDA path: accelerate places the model on the GPU, generation, teacher targets and
    the fused chunked loss run there in bfloat16 (lr 1e-3 so that updates exceed bf16's
    resolution of the weights)."""
    res = train(_cfg(tmp_path, method, tiny_model_dir, "model.dtype=bfloat16", "training.learning_rate=1e-3"),
                problems=_problems())
    assert next(res.model.parameters()).device.type == "cuda"
    assert next(res.model.parameters()).dtype == torch.bfloat16
    assert len(res.history) == 2 and res.skipped_updates == 0
    for rec in res.history:
        assert torch.isfinite(torch.tensor(rec["loss"])), rec
    initial = _state(tiny_model_dir)
    changed = [n for n, p in res.model.state_dict().items() if not torch.equal(p.float().cpu(), initial[n].bfloat16().float())]
    assert changed, "no parameter updated"
    assert {"sgpo": "loss/distill", "sft": "loss/nll"}[method] in res.history[-1]


@pytest.mark.slow
def test_teacher_initial_is_a_frozen_second_copy_of_the_starting_weights(tmp_path, tiny_model_dir):
    """`teacher: initial` loads its own copy from the model path (prepared like TRL's reference
    models; under ZeRO-3 the policy is partitioned and cannot be deep-copied, which the GPU
    check runs): after training the policy moved and the teacher still holds the start."""
    from sgpo.trainer.trainer import Trainer

    initial = _state(str(tiny_model_dir))
    trainer = Trainer(_cfg(tmp_path, "sgpo", tiny_model_dir, "algorithm.teacher=initial", "training.learning_rate=1e-2"),
                      problems=_problems())
    res = trainer.train()
    teacher = trainer.accelerator.unwrap_model(trainer.teacher)
    assert teacher is not res.model and not teacher.training
    assert all(torch.equal(p, initial[n]) and not p.requires_grad for n, p in teacher.state_dict(keep_vars=True).items())
    assert any(not torch.equal(p, initial[n]) for n, p in res.model.state_dict().items())
    assert res.history[-1]["distill/tokens"] > 0


@pytest.mark.slow
def test_default_sgpo_path_on_the_strategy_world(tmp_path):
    """SGPO as shipped (configs/cpu-tiny.yaml: weight_mode marginal, distill_on correct, C2),
    no setting forced: on the strategy world guided rollouts succeed where unguided ones fail,
    so the marginal weights are positive and correct guided trajectories are distilled, and
    the model moves. The other end-to-end runs force constant weights and distill_on: all."""
    from sgpo.models import load_model
    from sgpo.trainer.config import TrainConfig

    cfg = load_config(REPO / "configs" / "cpu-tiny.yaml", [f"data.path={REPO / 'data' / 'world' / 'train.jsonl'}",
                                                           "training.max_steps=3", "run.save_steps=0",
                                                           "run.progress=false", f"run.output_dir={tmp_path / 'run'}"])
    defaults = TrainConfig()
    assert (cfg.algorithm.method, cfg.algorithm.weight_mode, cfg.algorithm.distill_on, cfg.loss.proximal) == \
        ("sgpo", defaults.algorithm.weight_mode, defaults.algorithm.distill_on, defaults.loss.proximal) == \
        ("sgpo", "marginal", "correct", "c2")
    initial = {k: v.clone() for k, v in load_model(cfg.model.name_or_path, dtype="float32").state_dict().items()}
    res = train(cfg)
    assert len(res.history) == 3 and res.skipped_updates == 0
    assert all(rec["p_guided"] > rec["p_auto"] for rec in res.history), res.history
    assert all(rec["weight/nonzero_frac"] > 0 and rec["distill/tokens"] > 0 for rec in res.history)
    assert all(rec["samples/auto"] + rec["samples/guided"] == cfg.algorithm.samples_per_problem for rec in res.history)
    assert any(not torch.equal(p, initial[n]) for n, p in res.model.state_dict().items())
