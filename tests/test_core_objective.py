"""The objective as one function (sgpo.core.policy_objective) against the definitions written
here: full float64 logits, every term and every loss.aggregation mode, the instance weight and
lambda of guided trajectories, the per-token weight of the policy-gradient term; and the
LM-head engine of rollout-time quantities (sgpo.core.head_logprobs) against full logits."""

import dataclasses

import pytest
import torch

from sgpo.core import AGGREGATION_MODES, LossSettings, PackedTokens, head_logprobs, policy_objective

F64 = torch.float64
H, V, T = 5, 11, 0.8
LENGTHS = [3, 2, 4, 2, 3]  # one sequence per role + a second rl one: rl, offpolicy, nll (imitation), distill, rl
ROLES = ["rl", "offpolicy", "nll", "distill", "rl"]
ADV = [0.7, -0.4, 0.0, 0.0, -1.2]
W = [1.0, 1.0, 0.6, 0.5, 1.0]  # instance weights (the imitation nll and the distill sequence)
GUIDED = [False, False, True, True, False]
L_FIXED = 6


def _batch(seed=0, pg_weight=None, old_shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    m = sum(LENGTHS)
    h = torch.randn(m, H, dtype=F64, generator=gen, requires_grad=True)
    w = torch.randn(V, H, dtype=F64, generator=gen, requires_grad=True)
    targets = torch.randint(V, (m,), generator=gen)
    seq = torch.cat([torch.full((n,), i) for i, n in enumerate(LENGTHS)])
    per = lambda vals, dt=F64: torch.cat([torch.full((n,), v, dtype=dt) for n, v in zip(LENGTHS, vals)])  # noqa: E731
    index = {r: torch.tensor([k for k in range(m) if ROLES[int(seq[k])] == r]) for r in set(ROLES)}
    d = index["distill"]
    teacher = torch.log_softmax(torch.randn(len(d), V, dtype=F64, generator=gen) * 2, -1)  # [M_d, V]
    support = teacher.argsort(-1, descending=True)  # K = V: the whole vocabulary
    with torch.no_grad():
        current = torch.log_softmax(h @ w.T / T, -1).gather(-1, targets[:, None])[:, 0]
    old = current - old_shift * torch.linspace(-1, 1, m, dtype=F64) if old_shift else None
    tokens = PackedTokens(targets, seq, index, advantage=per(ADV), weight=per(W),
                          guided=per(GUIDED, torch.bool), old_logp=old, pg_weight=pg_weight,
                          support_ids=support, teacher_logp=teacher.gather(-1, support),
                          teacher_logp_sampled=teacher.gather(-1, targets[d, None])[:, 0])
    return h, w, tokens, teacher


def _reference(h, w, tokens, teacher, s: LossSettings, mode, normalizer):
    """The objective from its definition, one sequence at a time."""
    logp_all = torch.log_softmax(h @ w.T / T, -1)  # [M, V]
    lp = logp_all.gather(-1, tokens.targets[:, None])[:, 0]
    old = lp.detach() if tokens.old_logp is None else tokens.old_logp
    terms = {}
    start = 0
    for i, (n, role) in enumerate(zip(LENGTHS, ROLES)):
        sl = slice(start, start + n)
        start += n
        a, weight = ADV[i], W[i] * (s.distill_coef if GUIDED[i] else 1.0)
        if role == "rl":
            ratio = (lp[sl] - old[sl]).exp()
            per_tok = -torch.minimum(ratio * a, ratio.clamp(1 - s.eps_low, 1 + s.eps_high) * a)
            if tokens.pg_weight is not None:
                per_tok = per_tok * tokens.pg_weight[sl]
        elif role == "offpolicy":
            p = lp[sl].exp()
            per_tok = -a * p / (p + s.luffy_gamma)
        elif role == "nll":
            per_tok = -lp[sl] * weight
        else:  # forward KL(p || q) over the full vocabulary
            per_tok = weight * (teacher.exp() * (teacher - logp_all[sl])).sum(-1)
        if mode == "token-mean":
            value = per_tok.sum() / normalizer
        elif mode == "seq-mean-token-mean":
            value = per_tok.mean() / normalizer
        else:
            value = per_tok.sum() / (L_FIXED * normalizer)
        terms[role] = terms.get(role, 0.0) + value
    return terms


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_every_term_and_aggregation_matches_the_definition(mode):
    s = LossSettings(aggregation=mode, proximal="none", distill_coef=0.3, luffy_gamma=0.2)
    h, w, tokens, teacher = _batch(old_shift=0.3)  # ratios away from 1: the clip acts on some tokens
    n = 9.0
    loss, metrics = policy_objective(h, w, tokens, s, normalizer=n, temperature=T, chunk_size=4, fixed_length=L_FIXED)
    ref = _reference(h, w, tokens, teacher, s, mode, n)
    for role, value in ref.items():
        assert float(metrics[f"loss/{role}"]) == pytest.approx(float(value.detach()), rel=1e-10, abs=1e-12), role
    total = sum(ref.values())
    assert float(loss.detach()) == pytest.approx(float(total.detach()), rel=1e-10)
    for got, want in zip(torch.autograd.grad(loss, (h, w)), torch.autograd.grad(total, (h, w))):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_pg_weight_scales_and_masks_policy_gradient_tokens():
    """The per-token weight of the RL term (for a rollout importance-sampling correction): a
    weight of 0 removes the token, others scale it; no other term moves."""
    s = LossSettings(proximal="none")
    m = sum(LENGTHS)
    rho = torch.linspace(0.0, 2.0, m, dtype=F64)
    rho[:2] = 0.0
    h, w, tokens, teacher = _batch(pg_weight=rho)
    _, metrics = policy_objective(h, w, tokens, s, normalizer=7.0, temperature=T)
    ref = _reference(h, w, tokens, teacher, s, "token-mean", 7.0)
    assert float(metrics["loss/rl"]) == pytest.approx(float(ref["rl"].detach()), rel=1e-10)
    _, plain = policy_objective(h, w, dataclasses.replace(tokens, pg_weight=None), s, normalizer=7.0, temperature=T)
    assert float(plain["loss/rl"]) != pytest.approx(float(metrics["loss/rl"]))
    for key in ("loss/offpolicy", "loss/nll", "loss/distill"):
        assert float(plain[key]) == float(metrics[key])


def test_lambda_scales_guided_trajectories_only():
    h, w, tokens, _ = _batch()
    one = policy_objective(h, w, tokens, LossSettings(distill_coef=1.0), normalizer=5.0, temperature=T)[1]
    two = policy_objective(h, w, tokens, LossSettings(distill_coef=2.0), normalizer=5.0, temperature=T)[1]
    assert float(two["loss/distill"]) == pytest.approx(2 * float(one["loss/distill"]), rel=1e-12)
    assert float(two["loss/nll"]) == pytest.approx(2 * float(one["loss/nll"]), rel=1e-12)  # imitation is guided
    assert float(two["loss/rl"]) == float(one["loss/rl"]) and float(two["loss/offpolicy"]) == float(one["loss/offpolicy"])


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_head_logprobs_match_full_logits(chunk):
    gen = torch.Generator().manual_seed(3)
    h, w, b = torch.randn(7, H, dtype=F64, generator=gen), torch.randn(V, H, dtype=F64, generator=gen), \
        torch.randn(V, dtype=F64, generator=gen)
    ids = torch.randint(V, (7,), generator=gen)
    full = torch.log_softmax((h @ w.T + b) / T, -1)  # [7, V]
    top = head_logprobs(h, w, ids, top_k=4, lm_head_bias=b, temperature=T, chunk_size=chunk)
    torch.testing.assert_close(top.logp, full.gather(-1, ids[:, None])[:, 0])
    want_lp, want_ids = full.topk(4, -1)
    assert torch.equal(top.support_ids, want_ids)
    torch.testing.assert_close(top.support_logp, want_lp)
    on = head_logprobs(h, w, ids, support_ids=want_ids, lm_head_bias=b, temperature=T, chunk_size=chunk)
    torch.testing.assert_close(on.support_logp, want_lp)
    assert head_logprobs(h, w, ids, top_k=0, lm_head_bias=b, temperature=T).support_ids.shape == (7, V)


def test_rl_coef_scales_the_rl_term_and_zero_leaves_the_other_terms_gradient():
    """loss.rl_coef = 0 (the distillation-only control): the loss and its gradient are those of
    the off-policy, NLL and distillation terms of the reference alone; 2 doubles the RL term only."""
    n = 9.0
    h, w, tokens, teacher = _batch(old_shift=0.3)
    ref = _reference(h, w, tokens, teacher, LossSettings(proximal="none"), "token-mean", n)
    rest = ref["offpolicy"] + ref["nll"] + ref["distill"]
    loss, metrics = policy_objective(h, w, tokens, LossSettings(proximal="none", rl_coef=0.0), normalizer=n,
                                     temperature=T, chunk_size=4)
    assert float(ref["rl"].detach()) != 0 and float(metrics["loss/rl"]) == 0.0
    assert float(loss.detach()) == pytest.approx(float(rest.detach()), rel=1e-10)
    for got, want in zip(torch.autograd.grad(loss, (h, w)), torch.autograd.grad(rest, (h, w))):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    one = policy_objective(h, w, tokens, LossSettings(proximal="none"), normalizer=n, temperature=T)[1]
    two = policy_objective(h, w, tokens, LossSettings(proximal="none", rl_coef=2.0), normalizer=n, temperature=T)[1]
    assert float(two["loss/rl"]) == pytest.approx(2 * float(one["loss/rl"]), rel=1e-12)
    for key in ("loss/offpolicy", "loss/nll", "loss/distill", "rl/ratio_mean"):
        assert float(two[key]) == float(one[key]), key


def test_rl_coef_must_not_be_negative():
    from sgpo.trainer.config import load_config

    with pytest.raises(ValueError, match="loss.rl_coef = -0.5: must be >= 0"):
        load_config(None, ["data.path=x.jsonl", "loss.rl_coef=-0.5"]).validate()
