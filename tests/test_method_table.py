"""The method table (sgpo.trainer.specs.METHODS): every method emits the roles, tensors and
trajectory counts its entry declares, and every method that samples spends the same
trajectories per problem.

The fast test runs one real rollout and update of the trainer per method on a tiny random
model with a scripted generator (fixed completions, alternately right and wrong, so every
group has a spread of rewards; a real model cannot be made to sample them); the slow test
trains every method for one step with the demo's own settings on the strategy world and
reads ``samples/*`` back from metrics.jsonl."""

import json

import pytest
import torch

from sgpo.data import build_problems
from sgpo.generation import Completion
from sgpo.trainer.config import TrainConfig, load_config
from sgpo.trainer.specs import METHODS
from sgpo.trainer.trainer import PhaseTimer, Trainer

ROWS = [{"id": f"p{i}", "problem": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1),
         "strategy": "Add the ones digits." if i < 3 else None,
         "teacher_response": f"{i} + {i + 1} = {2 * i + 1}. The answer is \\boxed{{{2 * i + 1}}}."}
        for i in range(4)]  # p3 has no strategy
N, G_G = 8, 3
# (autonomous, guided, strong-model trace) per problem with a strategy at N = 8, G_g = 3, written
# out here rather than derived from the table
SPLIT = {"sgpo": (5, 3, 0), "grpo": (8, 0, 0), "sft": (0, 0, 1), "luffy": (7, 0, 1), "imitation": (5, 3, 0),
         "guided_rl": (5, 3, 0)}


class AlternatingGenerator:
    """k completions per prompt, right and wrong in turn; records (problem id, guided) -> k."""

    def __init__(self, tokenizer):
        self.tok, self.asked = tokenizer, {}

    def generate(self, prompts, sampling, n=1):
        out = []
        for ids, k in zip(prompts, [n] * len(prompts) if isinstance(n, int) else n):
            text = self.tok.decode(ids)
            (row,) = [r for r in ROWS if r["problem"] in text]
            self.asked[(row["id"], "<strategy>" in text)] = k
            texts = [f"So \\boxed{{{row['answer'] if g % 2 == 0 else 'x'}}}." for g in range(k)]
            out.append([Completion(t, self.tok(t, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id],
                                   "stop") for t in texts])
        return out


def test_table_covers_every_method_and_the_split_is_the_one_written_here():
    assert set(METHODS) == set(SPLIT)
    for name, spec in METHODS.items():
        b = spec.budget(N, G_G)
        assert (b.auto, b.guided, b.reference) == SPLIT[name], name
        assert b.total == (N if spec.samples else 1)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_emits_what_its_entry_declares(method, tmp_path, tiny_model_dir):
    from sgpo.models import load_model, load_tokenizer

    spec = METHODS[method]
    cfg = TrainConfig.build(data={"path": "unused"}, model={"name_or_path": str(tiny_model_dir), "dtype": "float32"},
                            algorithm={"method": method, "samples_per_problem": N, "group_guided": G_G,
                                       "weight_mode": "constant", "distill_on": "all", "top_k": 4},
                            training={"prompts_per_step": 4},
                            run={"progress": False, "save_steps": 0, "output_dir": str(tmp_path)})
    tok = load_tokenizer(str(tiny_model_dir))
    gen = AlternatingGenerator(tok)
    trainer = Trainer(cfg, problems=build_problems(ROWS, "test", teacher_response_field="teacher_response"),
                      model=load_model(str(tiny_model_dir), dtype="float32"), tokenizer=tok, generator=gen)
    batch = trainer.rollout(PhaseTimer())
    n_auto, n_guided, n_ref = SPLIT[method]
    has = [r["strategy"] is not None for r in ROWS]

    # trajectory counts: what the generator was asked, and what metrics.jsonl reports
    want = {(r["id"], False): n_auto for r in ROWS} if n_auto else {}
    want |= {(r["id"], True): n_guided for r, h in zip(ROWS, has) if h and n_guided}
    assert gen.asked == want
    assert batch.stats["samples/auto"].tolist() == [float(n_auto)] * 4
    assert batch.stats["samples/guided"].tolist() == [float(n_guided * h) for h in has]
    if spec.samples:
        total = batch.stats["samples/auto"] + batch.stats["samples/guided"]
        total = total + batch.stats.get("samples/reference", torch.zeros(4))
        assert total[:3].tolist() == [float(N)] * 3  # problems with a strategy: the whole budget

    # roles and how many sequences each one gets
    seqs = batch.sequences
    counts = {role: sum(s.role == role for s in seqs) for role in ("rl", "offpolicy", "nll", "distill")}
    expect = {"rl": 0, "offpolicy": 0, "nll": 0, "distill": 0}
    if spec.auto:
        expect[spec.auto] += 4 * n_auto
    if spec.guided:  # distill_on: all, constant weights: every guided trajectory is trained
        expect[spec.guided] += sum(has) * n_guided
    if spec.reference:
        expect[spec.reference] += 4
    assert counts == expect
    assert {s.role for s in seqs} == spec.roles

    # tensors each role carries
    for s in seqs:
        if s.role == "distill":
            t = len(s.completion_ids)
            assert s.support_ids.shape == s.teacher_logp.shape == (t, 4) and s.teacher_logp_sampled.shape == (t,)
            assert s.teacher_prompt_ids is not None and s.teacher_prompt_ids != s.prompt_ids
        else:
            assert s.support_ids is None and s.teacher_logp is None
        if s.role in ("rl", "offpolicy"):
            assert s.advantage == s.advantage  # set (not NaN)
        assert s.old_logp is None  # one update per rollout: old = current
    if spec.guided == "rl":  # guided_rl: some RL sequences are sampled in the guided context
        assert sum("<strategy>" in tok.decode(s.prompt_ids) for s in seqs if s.role == "rl") == sum(has) * n_guided
    else:
        assert not any("<strategy>" in tok.decode(s.prompt_ids) for s in seqs)
    if spec.reference == "offpolicy":  # the strong-model trace is one member of the group
        assert any(s.advantage != 0 for s in seqs if s.role == "offpolicy")

    # weights exist exactly for the weighted methods; the update logs one loss term per role
    assert ("weight" in batch.stats) == spec.weighted
    metrics, _ = trainer.update(seqs)
    logged = {k for m in metrics for k in m if k.startswith("loss/")}
    assert logged == {f"loss/{r}" for r in spec.roles}


def test_old_budget_key_names_its_new_place():
    with pytest.raises(ValueError, match="'algorithm.group_auto': it moved to 'algorithm.samples_per_problem'"):
        load_config(None, ["algorithm.group_auto=8"])


@pytest.mark.parametrize("method, n, needle", [("sgpo", 5, "leaves a group of 1"), ("luffy", 1, "leaves a group of 1"),
                                               ("grpo", 1, "leaves a group of 1")])
def test_a_budget_too_small_for_a_group_is_refused(method, n, needle):
    with pytest.raises(ValueError, match=needle):
        TrainConfig.build(data={"path": "x"}, algorithm={"method": method, "samples_per_problem": n}).validate()


@pytest.mark.slow
def test_every_method_samples_the_same_trajectories_per_problem_in_the_demo_settings(tmp_path):
    """One step of every method with the settings `sgpo demo` and benchmarks/evidence.py train
    with (sgpo.demo.run._train_config) on the strategy world: samples/* from metrics.jsonl add
    up to the same budget for every method that samples (it did not for imitation and
    guided_rl, which sampled G_a + G_g autonomous plus G_g guided)."""
    from sgpo.data import load_problems
    from sgpo.demo.run import DemoSettings, Schedule, _train_config, prepare_world
    from sgpo.models import load_model, load_tokenizer
    from sgpo.trainer.trainer import train

    s = DemoSettings.for_model("world")
    s.schedules = {m: Schedule(1e-4, 1) for m in METHODS}  # the demo trains two of them
    s.prompts_per_step, s.train_problems, s.max_new_tokens = 2, 8, 8
    d = prepare_world(tmp_path, s)
    tok = load_tokenizer(d.model_path)
    totals = {}
    for method, spec in METHODS.items():
        cfg = _train_config(method, tmp_path, s, d.model_path, d.data_path)
        problems = load_problems(d.data_path, need_teacher_response=spec.needs_reference)
        res = train(cfg, problems=problems, model=load_model(d.model_path, dtype="float32"), tokenizer=tok)
        (line,) = [json.loads(x) for x in (res.output_dir / "metrics.jsonl").read_text().splitlines()]
        totals[method] = line["samples/auto"] + line["samples/guided"] + line.get("samples/reference", 0.0)
        assert line["samples/guided"] == (s.group_guided if spec.samples_guided else 0), method
    assert totals.pop("sft") == 0  # samples nothing: trains on the one strong-model trace
    assert totals == {m: float(s.samples_per_problem) for m in totals}, totals


def test_every_declared_role_is_a_term_of_the_core_objective():
    from sgpo.core import ROLES

    assert all(spec.roles <= set(ROLES) for spec in METHODS.values())
