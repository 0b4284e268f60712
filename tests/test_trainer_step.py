"""Fast tests of one training step of the real trainer with a scripted generator: fixed
completions (a real model cannot be made to sample them, and sampling is not what is under
test here), rewards from the real grader, a tiny random model for every forward pass.

They check what the SGPO step feeds the loss: the prompt the student and the teacher see,
which guided trajectories are eligible, the instance weights, the normaliser, and a golden
loss for one step at the default settings computed by an independent full-vocabulary
reference written in this file (through the trainer and through sgpo.core.policy_objective
directly); then that the proximal constraint acts with several updates per rollout (C2's
mask; C1's and C3's terms against their definitions), that system knobs leave loss and gradients unchanged, and the multi-process
merges (batch std, W3 competence) on simulated ranks."""

import copy
import math

import pytest
import torch

from sgpo.data import build_problems
from sgpo.generation import Completion
from sgpo.trainer import methods
from sgpo.trainer.config import load_config
from sgpo.trainer.trainer import PhaseTimer, Trainer
from sgpo.trainer.update import accumulate_gradients

STRATEGY = "Add the ones digits, then the tens."
ROWS = [{"id": "a", "problem": "What is 2 + 3?", "answer": "5", "strategy": STRATEGY},
        {"id": "b", "problem": "What is 4 + 4?", "answer": "8", "strategy": STRATEGY},
        {"id": "c", "problem": "What is 1 + 6?", "answer": "7", "strategy": STRATEGY},
        {"id": "d", "problem": "What is 5 + 2?", "answer": "7"}]  # no strategy: RL term only


def _right(x, pad=""):
    return f"{pad}So the answer is \\boxed{{{x}}}."


def _wrong(x, pad=""):
    return f"{pad}I think it is \\boxed{{{x + 1}}}."


# (problem id, guided) -> completions; rewards from sgpo.rewards.score:
#   a: p_a = 1/4, p_g = 2/2 -> w = clip(1 - 0.25, 0, 1) = 0.75, both guided samples correct
#   b: p_a = 2/4, p_g = 1/2 -> w = 0: nothing distilled
#   c: p_a = 0/4, p_g = 1/2 -> w = 0.5, only the correct guided sample is distilled
#   d: p_a = 1/4, no strategy, no guided samples
SCRIPT = {
    ("a", False): [_right(5), _wrong(5), _wrong(5, "Hmm. "), _wrong(5, "Well, ")],
    ("a", True): [_right(5, "2 + 3 = 5. "), _right(5)],
    ("b", False): [_right(8), _right(8, "4 + 4 = 8. "), _wrong(8), _wrong(8, "Maybe ")],
    ("b", True): [_right(8), _wrong(8)],
    ("c", False): [_wrong(7), _wrong(7, "Um, "), _wrong(7, "1 + 6 is "), _wrong(7)],
    ("c", True): [_wrong(7), _right(7, "One plus six: ")],
    ("d", False): [_wrong(7), _right(7, "5 + 2 = 7. "), _wrong(7, "No, "), _wrong(7)],
}
W = {"a": 0.75, "b": 0.0, "c": 0.5, "d": 0.0}
ELIGIBLE = {("a", 0), ("a", 1), ("c", 1)}  # (problem, guided sample): correct, and w > 0
# advantages (r - mean) / (std + 1e-6), unbiased std: [1, 0, 0, 0] -> mean 1/4, std 1/2 ->
# [1.5, -0.5, -0.5, -0.5]; [1, 1, 0, 0] -> std sqrt(1/3) -> +-0.866; [0, 0, 0, 0] -> 0
ADV = {"a": [0.75, -0.25, -0.25, -0.25], "b": [0.5, 0.5, -0.5, -0.5], "c": [0.0] * 4,
       "d": [-0.25, 0.75, -0.25, -0.25]}
STD = {"a": 0.5, "b": math.sqrt(1 / 3), "c": 1.0, "d": 0.5}


class ScriptedGenerator:
    """Returns SCRIPT's completions for each prompt (token ids), recognising the problem and
    whether the prompt carries the strategy; records what it was asked."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.seen: dict[tuple[str, bool], list[int]] = {}

    def generate(self, prompts, sampling, n=1):
        out = []
        for ids, k in zip(prompts, [n] * len(prompts) if isinstance(n, int) else n):
            text = self.tok.decode(ids)
            (pid,) = [r["id"] for r in ROWS if r["problem"] in text]
            key = (pid, "<strategy>" in text)
            self.seen[key] = list(ids)
            texts = SCRIPT[key]
            assert len(texts) == k, (key, k)
            out.append([Completion(t, self.tok(t, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id],
                                   "stop") for t in texts])
        return out


@pytest.fixture(scope="module")
def peaky_model_dir(tmp_path_factory):
    """The tiny random Llama with larger initial weights: its next-token distributions are
    far from uniform and depend on the context, so the strategy block changes the teacher
    (with the default init the distillation term is ~1e-8, below float32 resolution)."""
    from sgpo.testing import tiny_model

    return tiny_model(tmp_path_factory.mktemp("peaky") / "model", initializer_range=0.5)


def _trainer(tmp_path, tiny_model_dir, *sets, name="run"):
    from sgpo.models import load_model, load_tokenizer

    cfg = load_config(None, ["data.path=unused", f"model.name_or_path={tiny_model_dir}", "model.dtype=float32",
                             "algorithm.samples_per_problem=6", "algorithm.group_guided=2", "training.prompts_per_step=4",
                             "run.progress=false", "run.save_steps=0", f"run.output_dir={tmp_path / name}", *sets])
    tok = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), dtype="float32")
    initial = copy.deepcopy(model)
    trainer = Trainer(cfg, problems=build_problems(ROWS, "test"), model=model, tokenizer=tok,
                      generator=ScriptedGenerator(tok))
    return trainer, initial


def _tokens(text, tok):
    return tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


@pytest.fixture(scope="module")
def default_step(tmp_path_factory, peaky_model_dir):
    """One SGPO step at the default settings (group sizes 4 and 2): the batch, the update's
    loss and metrics, the initial model and the generator's record."""
    trainer, initial = _trainer(tmp_path_factory.mktemp("step"), peaky_model_dir)
    timer = PhaseTimer()
    batch = trainer.rollout(timer)
    metrics, updates = trainer.update(batch.sequences)
    return dict(trainer=trainer, batch=batch, metrics=metrics, updates=updates, initial=initial, timer=timer)


def test_student_sees_the_unguided_prompt_and_the_teacher_the_guided_one(default_step):
    tr, batch = default_step["trainer"], default_step["batch"]
    seen, tok = tr.generator.seen, tr.tokenizer
    assert set(seen) == {(p, False) for p in "abcd"} | {(p, True) for p in "abc"}  # d has no strategy
    distill = [s for s in batch.sequences if s.role == "distill"]
    assert distill
    for s in distill:
        (pid,) = [p for p in "abc" if s.prompt_ids == seen[(p, False)]]
        assert s.teacher_prompt_ids == seen[(pid, True)]  # the context the trajectory was sampled in
        assert STRATEGY in tok.decode(s.teacher_prompt_ids) and STRATEGY not in tok.decode(s.prompt_ids)
        # everything before the user turn is the same: only the strategy block differs
        assert tok.decode(s.teacher_prompt_ids).startswith(tok.decode(s.prompt_ids).split("What is")[0])
    for s in batch.sequences:
        if s.role == "rl":
            assert STRATEGY not in tok.decode(s.prompt_ids)


def test_eligible_trajectories_and_weights(default_step):
    tr, batch = default_step["trainer"], default_step["batch"]
    seen, tok = tr.generator.seen, tr.tokenizer
    distill = {(next(p for p in "abc" if s.prompt_ids == seen[(p, False)]), tuple(s.completion_ids)): s.weight
               for s in batch.sequences if s.role == "distill"}
    expected = {("a", tuple(_tokens(SCRIPT[("a", True)][0], tok))): 0.75,
                ("a", tuple(_tokens(SCRIPT[("a", True)][1], tok))): 0.75,
                ("c", tuple(_tokens(SCRIPT[("c", True)][1], tok))): 0.5}  # b: w = 0; c: only the correct one
    assert distill == expected
    assert sum(s.role == "rl" for s in batch.sequences) == 16  # every autonomous sample, zero advantage included
    stats = batch.stats
    assert sorted(stats["weight"].tolist()) == sorted(W.values())
    assert sorted(stats["p_guided"].tolist()) == [0.5, 0.5, 1.0]
    assert float(stats["no_strategy"]) == 1.0


def test_advantages_by_hand(default_step):
    tr, batch = default_step["trainer"], default_step["batch"]
    seen = tr.generator.seen
    for pid in "abcd":
        got = [s.advantage for s in batch.sequences if s.role == "rl" and s.prompt_ids == seen[(pid, False)]]
        want = [a / (STD[pid] + 1e-6) if any(ADV[pid]) else 0.0 for a in ADV[pid]]
        assert got == pytest.approx(want, abs=1e-6), pid


def _bucket_kl(teacher_logits, student_logits, k):  # [T, V] each -> [T] forward KL over top-k + tail
    t_lp, s_lp = torch.log_softmax(teacher_logits, -1), torch.log_softmax(student_logits, -1)
    top = t_lp.topk(k, dim=-1).indices  # [T, K]
    rest = torch.ones_like(t_lp, dtype=torch.bool).scatter(-1, top, False)
    tail = lambda lp: torch.logsumexp(lp.masked_fill(~rest, -math.inf), -1, keepdim=True)  # noqa: E731
    p = torch.cat([t_lp.gather(-1, top), tail(t_lp)], -1)  # [T, K+1]
    q = torch.cat([s_lp.gather(-1, top), tail(s_lp)], -1)
    return (p.exp() * (p - q)).sum(-1)


def _reference_loss(model, tok, seen, normalizer="rl"):
    """The default SGPO objective from its definition, full logits in float64, nothing from
    sgpo's loss code: RL term at ratio 1 is -A per token; distillation is w * forward KL over
    the teacher's top-64 + tail, teacher = the same weights after the guided prompt; both
    divided by N = the autonomous tokens (normalizer rl) or all loss tokens (all)."""
    model = copy.deepcopy(model).double().eval()
    rl, distill, n_rl, n_distill = 0.0, 0.0, 0, 0
    with torch.no_grad():
        for pid in "abcd":
            for text, a in zip(SCRIPT[(pid, False)], ADV[pid]):
                t = len(_tokens(text, tok))
                rl += -(a / (STD[pid] + 1e-6)) * t
                n_rl += t
            for g, text in enumerate(SCRIPT.get((pid, True), [])):
                if (pid, g) not in ELIGIBLE:
                    continue
                ids = _tokens(text, tok)
                logits = {}
                for who, prompt in (("student", seen[(pid, False)]), ("teacher", seen[(pid, True)])):
                    out = model(torch.tensor([prompt + ids])).logits[0]  # [P + T, V]
                    logits[who] = out[len(prompt) - 1: len(prompt) + len(ids) - 1]  # [T, V]
                distill += W[pid] * float(_bucket_kl(logits["teacher"], logits["student"], 64).sum())
                n_distill += len(ids)
    n = n_rl if normalizer == "rl" else n_rl + n_distill
    return rl / n, distill / n, n_rl, n_distill


def _terms(metrics, key):
    return sum(float(m[key]) for m in metrics if key in m)


def test_golden_loss_of_one_default_sgpo_step(default_step):
    """Golden loss against the slow reference above (float32 trainer vs float64 reference)."""
    tr = default_step["trainer"]
    ref_rl, ref_distill, n_rl, n_distill = _reference_loss(default_step["initial"], tr.tokenizer, tr.generator.seen)
    assert n_distill > 0 and ref_distill > 0.01 * abs(ref_rl), (ref_distill, ref_rl)  # both terms matter
    metrics, [update] = default_step["metrics"], default_step["updates"]
    assert _terms(metrics, "loss/rl") == pytest.approx(ref_rl, rel=1e-6, abs=1e-7)
    assert _terms(metrics, "loss/distill") == pytest.approx(ref_distill, rel=1e-5)
    assert update.loss == pytest.approx(ref_rl + ref_distill, rel=1e-5)
    assert set(default_step["timer"].seconds) >= {f"time/{p}" for p in
                                                  ("sample", "score", "advantages", "weights", "teacher_targets")}


def test_golden_loss_of_the_core_objective(default_step):
    """The same golden values from sgpo.core.policy_objective itself, called on the step's
    sequences packed into one micro-batch and the initial model's hidden states."""
    from sgpo.core import policy_objective
    from sgpo.trainer.batch import collate
    from sgpo.trainer.forward import base_and_head, packed_hidden

    tr, model = default_step["trainer"], default_step["initial"]
    ref_rl, ref_distill, n_rl, _ = _reference_loss(model, tr.tokenizer, tr.generator.seen)
    mb = collate(default_step["batch"].sequences, tr.pad_id, torch.device("cpu"))
    base, head = base_and_head(model)
    with torch.no_grad():
        h = packed_hidden(base, mb.input_ids, mb.attention_mask, mb.rows, mb.positions)
        loss, metrics = policy_objective(h, head.weight, mb.tokens, tr.cfg.loss, normalizer=float(n_rl))
    assert float(metrics["loss/rl"]) == pytest.approx(ref_rl, rel=1e-6, abs=1e-7)
    assert float(metrics["loss/distill"]) == pytest.approx(ref_distill, rel=1e-5)
    assert float(loss) == pytest.approx(ref_rl + ref_distill, rel=1e-5)


def test_normalizer_all_divides_by_every_loss_token_and_rl_matches_grpo(tmp_path, peaky_model_dir, default_step):
    tr = default_step["trainer"]
    ref_rl, ref_distill, n_rl, n_distill = _reference_loss(default_step["initial"], tr.tokenizer, tr.generator.seen)
    every, _ = _trainer(tmp_path, peaky_model_dir, "loss.normalizer=all", name="all")
    metrics, _ = every.update(every.rollout(PhaseTimer()).sequences)
    scale = n_rl / (n_rl + n_distill)  # with 'all' SGPO's RL term shrinks by N_auto / N_tok
    assert _terms(metrics, "loss/rl") == pytest.approx(ref_rl * scale, rel=1e-6)
    assert _terms(metrics, "loss/distill") == pytest.approx(ref_distill * scale, rel=1e-5)
    # GRPO on the same 4 autonomous samples (its whole budget: the scripted groups have 4)
    grpo, _ = _trainer(tmp_path, peaky_model_dir, "algorithm.method=grpo", "algorithm.samples_per_problem=4",
                       name="grpo")
    g_metrics, _ = grpo.update(grpo.rollout(PhaseTimer()).sequences)
    assert _terms(g_metrics, "loss/rl") == pytest.approx(_terms(default_step["metrics"], "loss/rl"), rel=1e-6)


def _grads(trainer, seqs, micro_batch_size):
    loss, _ = accumulate_gradients(trainer.accelerator, trainer.module, seqs, micro_batch_size=micro_batch_size,
                                   pad_id=trainer.pad_id, normalizer=trainer.cfg.loss.normalizer,
                                   share_prompts=trainer.share_prompts)
    grads = {n: p.grad.clone() for n, p in trainer.module.named_parameters() if p.grad is not None}
    trainer.optimizer.zero_grad(set_to_none=True)
    return loss, grads


def test_system_knobs_leave_loss_and_gradients_unchanged(tmp_path, peaky_model_dir):
    big, _ = _trainer(tmp_path, peaky_model_dir, "system.micro_batch_size=64", "system.chunk_size=4096", name="big")
    small, _ = _trainer(tmp_path, peaky_model_dir, "system.micro_batch_size=3", "system.chunk_size=5",
                        "system.generation_batch_size=1", "system.share_prompt_forward=false", name="small")
    assert big.share_prompts and not small.share_prompts  # each prompt once (the default) vs every row whole
    loss_big, g_big = _grads(big, big.rollout(PhaseTimer()).sequences, 64)
    loss_small, g_small = _grads(small, small.rollout(PhaseTimer()).sequences, 3)
    assert loss_small == pytest.approx(loss_big, rel=1e-5)
    assert g_big.keys() == g_small.keys() and g_big
    for name in g_big:  # float32 sums in another order: agree to 1e-4 of each tensor's largest entry
        torch.testing.assert_close(g_small[name], g_big[name], rtol=0, atol=1e-4 * float(g_big[name].abs().max()))


def test_shared_prompt_forward_is_off_under_gradient_checkpointing(tmp_path, peaky_model_dir, capsys):
    trainer, _ = _trainer(tmp_path, peaky_model_dir, "model.gradient_checkpointing=true")
    assert not trainer.share_prompts
    assert "system.share_prompt_forward: every row runs its whole prompt (gradient checkpointing" in capsys.readouterr().out


@pytest.mark.parametrize("proximal", ["c2"])
def test_proximal_constraint_acts_with_several_updates_per_rollout(tmp_path, peaky_model_dir, proximal):
    """Two PPO epochs on one rollout: the first update starts at the rollout-time parameters
    (nothing masked, identical with and without the constraint); after it, C2 masks tokens
    whose log-prob moved more than tau toward the teacher, so the second update's distillation
    loss is the unconstrained one minus those tokens' (non-negative) KL."""
    runs = {}
    for mode in (proximal, "none"):
        tr, _ = _trainer(tmp_path, peaky_model_dir, "algorithm.ppo_epochs=2", f"loss.proximal={mode}",
                         "training.learning_rate=0.05", "training.max_grad_norm=0", name=mode)
        runs[mode] = tr.update(tr.rollout(PhaseTimer()).sequences)
    (m_c, u_c), (m_n, u_n) = runs[proximal], runs["none"]
    half = len(m_c) // 2  # metrics of the first update's micro-batches, then the second's
    assert u_c[0].loss == pytest.approx(u_n[0].loss, rel=1e-6)
    masked = [float(m["distill/masked_frac"]) for m in m_c[half:] if "distill/masked_frac" in m]
    assert max(masked) > 0, masked
    assert all(float(m.get("distill/masked_frac", 0)) == 0 for m in m_c[:half])
    d_c, d_n = _terms(m_c[half:], "loss/distill"), _terms(m_n[half:], "loss/distill")
    assert d_c < d_n - 1e-6, (d_c, d_n)
    assert _terms(m_c[half:], "loss/rl") == pytest.approx(_terms(m_n[half:], "loss/rl"), rel=1e-6)


def _buckets(lp, top):  # [T, V] log-probs, [T, K] ids -> [T, K+1] top-k + tail bucket log-probs
    rest = torch.ones_like(lp, dtype=torch.bool).scatter(-1, top, False)
    return torch.cat([lp.gather(-1, top), torch.logsumexp(lp.masked_fill(~rest, -math.inf), -1, keepdim=True)], -1)


def _proximal_reference(current, initial, seqs, proximal, s):
    """The C1 / C3 distillation term from its definition on the teacher's top-64 + tail, in
    float64: student q from ``current``, q_old and the teacher p from ``initial`` (the rollout-time
    parameters); C1 -sum_j p_j min(q_j / q_old_j, 1 + eps); C3 KL(p~ || q) with the clipped teacher
    p~ = softmax(log q_old + clip(log p - log q_old, -c, c)); w-weighted, divided by the RL tokens."""
    current, initial = copy.deepcopy(current).double().eval(), copy.deepcopy(initial).double().eval()
    n = sum(len(x.completion_ids) for x in seqs if x.role == "rl")
    total = 0.0
    with torch.no_grad():
        for x in (x for x in seqs if x.role == "distill"):
            def lp(model, prompt):
                out = model(torch.tensor([prompt + x.completion_ids])).logits[0]
                return torch.log_softmax(out[len(prompt) - 1: len(prompt) + len(x.completion_ids) - 1], -1)
            teacher = lp(initial, x.teacher_prompt_ids)
            top = teacher.topk(64, -1).indices
            p, q, old = (_buckets(t, top) for t in (teacher, lp(current, x.prompt_ids), lp(initial, x.prompt_ids)))
            if proximal == "c1":
                per_tok = -(p.exp() * (q - old).clamp(max=math.log1p(s.c1_eps)).exp()).sum(-1)
            else:
                target = torch.log_softmax(old + (p - old).clamp(-s.c3_clip, s.c3_clip), -1)
                per_tok = (target.exp() * (target - q)).sum(-1)
            total += x.weight * float(per_tok.sum())
    return total / n


@pytest.mark.parametrize("proximal", ["c1", "c3"])
def test_c1_and_c3_after_one_update_follow_their_definition(tmp_path, peaky_model_dir, proximal):
    """Two PPO epochs on one rollout: after the first update the student has moved, and the
    second update's distillation term is C1's clipped cross-entropy / C3's KL to the clipped
    teacher against the rollout-time student, not the plain KL (which the test also computes
    and requires to differ)."""
    from sgpo.trainer.update import optimizer_update

    tr, initial = _trainer(tmp_path, peaky_model_dir, "algorithm.ppo_epochs=2", f"loss.proximal={proximal}",
                           "training.learning_rate=0.05", "training.max_grad_norm=0", name=proximal)
    seqs = tr.rollout(PhaseTimer()).sequences
    assert all(x.old_support_logp is not None for x in seqs if x.role == "distill")
    kwargs = dict(micro_batch_size=8, pad_id=tr.pad_id, normalizer="rl")
    optimizer_update(tr.accelerator, tr.module, tr.optimizer, seqs, max_grad_norm=0, **kwargs)
    _, metrics = accumulate_gradients(tr.accelerator, tr.module, seqs, **kwargs)
    tr.optimizer.zero_grad(set_to_none=True)
    current = tr.accelerator.unwrap_model(tr.module).lm
    want = _proximal_reference(current, initial, seqs, proximal, tr.cfg.loss)
    assert _terms(metrics, "loss/distill") == pytest.approx(want, rel=1e-4)
    plain = _terms(accumulate_gradients(tr.accelerator, _with_proximal(tr, "none"), seqs, **kwargs)[1], "loss/distill")
    tr.optimizer.zero_grad(set_to_none=True)
    assert abs(plain - want) > 1e-3 * abs(want), (plain, want)


def _with_proximal(tr, mode):
    """The trainer's loss module with another proximal setting (same parameters)."""
    import dataclasses

    module = copy.copy(tr.accelerator.unwrap_model(tr.module))
    module.settings = dataclasses.replace(module.settings, proximal=mode)
    return module


# -- multi-process merges on simulated ranks --------------------------------------------------
def _ranks_gather(parts):
    """gather() of rank r when the ranks hold ``parts`` (lists in rank order)."""
    def make(rank):
        calls = iter(range(10**6))

        def gather(values):
            i = next(calls)
            return [x for j, part in enumerate(parts[i]) for x in (values if j == rank else part)]
        return gather
    return make


def test_batch_scaled_advantages_use_the_std_of_every_process():
    from sgpo.trainer.config import AlgorithmConfig

    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    algo = AlgorithmConfig(adv_scale="batch")
    whole = methods.advantages(methods.StepContext(None, None, None, None, algo, None, 0, 1, 1),
                               methods.Rewards(rewards, None, torch.ones(4, dtype=torch.bool))).auto
    halves = [rewards[:2], rewards[2:]]
    parts = [[h.flatten().tolist() for h in halves]]
    for rank in (0, 1):
        ctx = methods.StepContext(None, None, None, None, algo, None, 0, 1, 1, gather=_ranks_gather(parts)(rank))
        got = methods.advantages(ctx, methods.Rewards(halves[rank], None, torch.ones(2, dtype=torch.bool))).auto
        torch.testing.assert_close(got, whole[2 * rank: 2 * rank + 2], rtol=0, atol=1e-7)


def test_competence_is_merged_from_every_process():
    """W3: each rank weights its own problems by the competence so far, then folds in the p_a
    of every rank's problems; both ranks end with the same dict, equal to one process's."""
    from sgpo.core import LossSettings
    from sgpo.trainer.config import AlgorithmConfig

    algo = AlgorithmConfig(weight_mode="competence", competence_momentum=0.5)
    problems = build_problems(ROWS, "test").problems
    p_auto = [torch.tensor([0.25, 0.5]), torch.tensor([0.0, 1.0])]  # rank 0: a, b; rank 1: c, d
    shards = [problems[:2], problems[2:]]

    def step(ctx, shard, p_a, state):
        r = methods.StepRollouts(shard, None, None, torch.tensor([p.strategy is not None for p in shard]))
        rw = methods.Rewards(p_a[:, None].repeat(1, 4), torch.ones(len(shard), 2), r.has_strategy)
        return methods.weights(ctx, r, rw, state)

    single: dict[str, float] = {}
    one = methods.StepContext(None, None, None, None, algo, LossSettings(), 0, 1, 1)
    for _ in range(2):
        w_single = step(one, problems, torch.cat(p_auto), single)
    states = []
    for rank in (0, 1):
        state: dict[str, float] = {}
        parts = [[[p.id for p in s] for s in shards], [p.tolist() for p in p_auto]] * 2
        ctx = methods.StepContext(None, None, None, None, algo, LossSettings(), 0, 1, 1,
                                  gather=_ranks_gather(parts)(rank))
        for _ in range(2):
            w = step(ctx, shards[rank], p_auto[rank], state)
        torch.testing.assert_close(w, w_single[2 * rank: 2 * rank + 2])
        states.append(state)
    assert states[0] == states[1] == single and set(single) == {"a", "b", "c", "d"}
    # second visit: c = 0.5 * p_a + 0.5 * p_a = p_a, so w_a = clip((1 - 0.25) / 1, 0, 1) * (1 - 0.25)
    assert float(w_single[0]) == pytest.approx(0.75 * 0.75, abs=1e-5)


RATIO_KEYS = ("rl/ratio_min", "rl/ratio_p05", "rl/ratio_p50", "rl/ratio_p95", "rl/ratio_max")


def test_ratio_quantiles_are_one_on_policy_and_move_with_two_epochs(tmp_path, peaky_model_dir, default_step):
    """One update per rollout: pi_old is the current policy, every RL ratio is exactly 1. Two PPO
    epochs: the second update's ratios are the moved policy's; the quantiles are those of every
    RL token of both updates (torch.quantile's on the concatenated ratios)."""
    from sgpo.trainer.metrics import StepMetrics

    tr = default_step["trainer"]
    one = StepMetrics.build(tr.accelerator, 1, default_step["batch"], default_step["metrics"], updates=1)
    assert [one[k] for k in RATIO_KEYS] == [1.0] * 5
    two, _ = _trainer(tmp_path, peaky_model_dir, "algorithm.ppo_epochs=2", "training.learning_rate=0.05",
                      "training.max_grad_norm=0", name="epochs")
    batch = two.rollout(PhaseTimer())
    metrics, updates = two.update(batch.sequences)
    rec = StepMetrics.build(two.accelerator, 1, batch, metrics, updates=len(updates))
    ratios = torch.cat([m["rl/ratio_per_token"] for m in metrics if "rl/ratio_per_token" in m]).double()
    assert ratios.numel() == 2 * sum(len(s.completion_ids) for s in batch.sequences if s.role == "rl")
    assert rec["rl/ratio_min"] < 0.99 and rec["rl/ratio_max"] > 1.01, rec
    for key, q in zip(RATIO_KEYS[1:4], (0.05, 0.5, 0.95)):
        assert rec[key] == pytest.approx(float(torch.quantile(ratios, q)), rel=1e-12)
    assert (rec["rl/ratio_min"], rec["rl/ratio_max"]) == (float(ratios.min()), float(ratios.max()))
