"""Divergences, teacher top-k and the K+1 bucket helpers."""

import math

import pytest
import torch

from sgpo.core import (
    bucket_divergence,
    forward_kl,
    jsd,
    reverse_kl,
    support_logprobs,
    teacher_support,
    teacher_topk,
)

F64 = torch.float64
# teacher p = [0.5, 0.5], student q = [0.75, 0.25]
TEACHER = torch.tensor([[[0.0, 0.0]]], dtype=F64)
STUDENT = torch.tensor([[[math.log(3.0), 0.0]]], dtype=F64)


def test_forward_kl_by_hand_and_gradient():
    # KL(p||q) = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.5 ln(4/3) = 0.1438410
    student = STUDENT.clone().requires_grad_()
    kl = forward_kl(student, TEACHER)
    torch.testing.assert_close(kl, torch.tensor([[0.5 * math.log(4 / 3)]], dtype=F64), rtol=0, atol=1e-12)
    # d KL / d student logits = q - p = [0.25, -0.25]
    (grad,) = torch.autograd.grad(kl.sum(), student)
    torch.testing.assert_close(grad, torch.tensor([[[0.25, -0.25]]], dtype=F64), rtol=0, atol=1e-12)


def test_reverse_kl_and_jsd_by_hand():
    # KL(q||p) = 0.75 ln(0.75/0.5) + 0.25 ln(0.25/0.5) = 0.75 ln 1.5 - 0.25 ln 2 = 0.1308120
    rev = 0.75 * math.log(1.5) - 0.25 * math.log(2.0)
    torch.testing.assert_close(reverse_kl(STUDENT, TEACHER), torch.tensor([[rev]], dtype=F64), rtol=0, atol=1e-12)
    # m = 0.5 p + 0.5 q = [0.625, 0.375]
    # KL(p||m) = 0.5 ln(0.5/0.625) + 0.5 ln(0.5/0.375) = 0.5 ln(16/15)
    # KL(q||m) = 0.75 ln(0.75/0.625) + 0.25 ln(0.25/0.375) = 0.75 ln 1.2 + 0.25 ln(2/3)
    kl_pm = 0.5 * math.log(16 / 15)
    kl_qm = 0.75 * math.log(1.2) + 0.25 * math.log(2 / 3)
    torch.testing.assert_close(jsd(STUDENT, TEACHER), torch.tensor([[0.5 * kl_pm + 0.5 * kl_qm]], dtype=F64),
                               rtol=0, atol=1e-12)
    # beta = 0.25: m = 0.25 p + 0.75 q = [0.6875, 0.3125]; 0.25 KL(p||m) + 0.75 KL(q||m)
    m = [0.6875, 0.3125]
    expect = 0.25 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])) + 0.75 * (
        0.75 * math.log(0.75 / m[0]) + 0.25 * math.log(0.25 / m[1]))
    torch.testing.assert_close(jsd(STUDENT, TEACHER, beta=0.25), torch.tensor([[expect]], dtype=F64),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("fn", [forward_kl, reverse_kl, jsd])
def test_self_divergence_zero_nonnegative_and_masked(fn):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, 7, dtype=F64, generator=gen) * 3
    b = torch.randn(3, 4, 7, dtype=F64, generator=gen) * 3
    torch.testing.assert_close(fn(a, a), torch.zeros(3, 4, dtype=F64), rtol=0, atol=1e-12)
    assert (fn(a, b) >= 0).all()
    mask = torch.zeros(3, 4)
    mask[1, 2] = 1
    out = fn(a, b, mask)
    assert out[1, 2] > 0 and float(out.sum()) == float(out[1, 2])
    assert torch.equal(fn(a, b, torch.zeros(3, 4)), torch.zeros(3, 4, dtype=F64))


@pytest.mark.parametrize("fn", [forward_kl, reverse_kl, jsd])
def test_teacher_zero_probability_tokens_are_finite(fn):
    teacher = torch.tensor([[[0.0, 1.0, -math.inf]]], dtype=F64)  # p(v2) = 0
    student = torch.tensor([[[0.5, 0.0, -math.inf]]], dtype=F64, requires_grad=True)
    out = fn(student, teacher)
    (grad,) = torch.autograd.grad(out.sum(), student)
    assert out.isfinite().all() and grad.isfinite().all()


def test_teacher_topk_normalised_over_full_vocab():
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0]], dtype=F64)
    lp, ids = teacher_topk(logits, 2)
    assert ids.tolist() == [[0, 2]]
    full = torch.log_softmax(logits, -1)
    torch.testing.assert_close(lp, full[:, [0, 2]], rtol=0, atol=1e-12)
    # tail bucket = log(p1 + p3)
    tail = teacher_support(lp)[:, -1]
    torch.testing.assert_close(tail, torch.logaddexp(full[:, 1], full[:, 3]), rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        teacher_topk(logits, 5)


def test_teacher_support_never_nan():
    # top-k mass 0.5 + 0.25 -> tail log 0.25
    lp = torch.tensor([[math.log(0.5), math.log(0.25)]], dtype=F64)
    torch.testing.assert_close(teacher_support(lp)[0, -1], torch.tensor(math.log(0.25), dtype=F64), rtol=0, atol=1e-12)
    # sums to 1 (or a rounding hair above): floored at eps, finite, no NaN
    full = torch.tensor([[math.log(0.5), math.log(0.5) + 1e-7]], dtype=torch.float32)
    tail = teacher_support(full)[0, -1]
    assert tail.isfinite() and float(tail) == pytest.approx(math.log(torch.finfo(torch.float32).eps))
    # covering the vocabulary: the tail is empty
    assert teacher_support(full, vocab_size=2)[0, -1] == -math.inf


def test_support_logprobs_tail_is_stable_and_normalised():
    # logits [0, -200, -200], support {0}: tail = log(2 e^-200) - lse = ln 2 - 200 - ln(1 + 2e^-200)
    z = torch.tensor([[0.0, -200.0, -200.0]])
    lp = support_logprobs(z, torch.tensor([[0]]))
    torch.testing.assert_close(lp[0, 1], torch.tensor(math.log(2.0) - 200.0), rtol=0, atol=1e-4)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(4, 9, dtype=F64, generator=gen)
    ids = torch.randperm(9, generator=gen)[:3].expand(4, 3)
    lp = support_logprobs(z, ids)
    torch.testing.assert_close(lp.logsumexp(-1), torch.zeros(4, dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd"])
def test_topk_with_k_equal_v_matches_full_vocab(kind):
    gen = torch.Generator().manual_seed(2)
    teacher = torch.randn(3, 11, dtype=F64, generator=gen) * 2
    student = torch.randn(3, 11, dtype=F64, generator=gen, requires_grad=True)
    lp, ids = teacher_topk(teacher, 11)
    s_lp = support_logprobs(student, ids)
    assert (s_lp[:, -1] == -math.inf).all()
    buckets = bucket_divergence(s_lp, teacher_support(lp, vocab_size=11), kind)
    full = {"forward": forward_kl, "reverse": reverse_kl, "jsd": jsd}[kind](student[None], teacher[None])[0]
    torch.testing.assert_close(buckets, full, rtol=0, atol=1e-12)
    g_b = torch.autograd.grad(buckets.sum(), student)[0]
    g_f = torch.autograd.grad(full.sum(), student)[0]
    assert g_b.isfinite().all()
    torch.testing.assert_close(g_b, g_f, rtol=0, atol=1e-12)


def test_bucket_divergence_errors():
    x = torch.zeros(2).log_softmax(-1)
    with pytest.raises(ValueError, match="forward"):
        bucket_divergence(x, x, "cross")
    with pytest.raises(ValueError, match="beta"):
        bucket_divergence(x, x, "jsd", beta=1.0)


def test_teacher_targets_from_logits_matches_topk_and_log_softmax():
    from sgpo.core import teacher_targets_from_logits, teacher_topk

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 7, 50, generator=g, dtype=torch.float64)  # [N, T, V]
    sampled = torch.randint(0, 50, (5, 7), generator=g)
    lp, ids, lp_sampled = teacher_targets_from_logits(logits, 6, sampled)
    ref_lp, ref_ids = teacher_topk(logits, 6)
    torch.testing.assert_close(lp, ref_lp, rtol=0, atol=1e-12)
    assert torch.equal(ids, ref_ids)
    ref_sampled = torch.log_softmax(logits, -1).gather(-1, sampled[..., None])[..., 0]
    torch.testing.assert_close(lp_sampled, ref_sampled, rtol=0, atol=1e-12)
