"""Chunked LM-head losses against their full-logits references: values, gradients, metrics,
memory (largest tensor ever created), tied weights and low precision."""

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sgpo.core import (
    DIVERGENCES,
    LossSettings,
    PROXIMAL_MODES,
    distill_loss_from_hidden,
    distill_loss_reference,
    forward_kl,
    policy_kl_from_hidden,
    teacher_topk,
    token_logprobs_from_hidden,
    token_logprobs_reference,
)

F64 = torch.float64
M, H, V, K = 10, 6, 13, 4
TEMPERATURE = 0.7
COMBOS = [(d, p) for d, p in itertools.product(DIVERGENCES, PROXIMAL_MODES) if not (p == "c1" and d != "forward")]


def _problem(dtype=F64, device="cpu", seed=0):
    """Inputs of the distillation term; C2 masks some tokens, one chunk-sized run has coef 0."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(M, H, dtype=F64, generator=gen)
    w = torch.randn(V, H, dtype=F64, generator=gen)
    b = torch.randn(V, dtype=F64, generator=gen)
    logits = (h @ w.T + b) / TEMPERATURE  # [M, V]
    teacher_lp, ids = teacher_topk(logits + torch.randn(M, V, dtype=F64, generator=gen) * 2, K)  # [M, K]
    sampled = torch.randint(V, (M,), generator=gen)
    current = torch.log_softmax(logits, -1).gather(-1, sampled[:, None])[:, 0]  # [M]
    delta = torch.tensor([0.5, -0.5, 0.0, 0.1, 0.5, -0.5, 0.3, 0.0, -0.4, 0.2], dtype=F64)  # d_t
    old_logp = current - delta
    direction = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -1.0, 1.0], dtype=F64)  # sign(D_t)
    teacher_sampled = old_logp + direction
    old_support = torch.log_softmax(logits + 0.5 * torch.randn(M, V, dtype=F64, generator=gen), -1).gather(-1, ids)
    coef = torch.rand(M, dtype=F64, generator=gen) + 0.1
    coef[4:8] = 0.0  # a whole chunk of size 4 is skipped
    coef[1] = 0.0
    cast = lambda t: t.to(dtype=dtype, device=device).requires_grad_()  # noqa: E731
    tensors = dict(support_ids=ids.to(device), teacher_logp=teacher_lp.to(device), coef=coef.to(device))
    kwargs = dict(sampled_ids=sampled.to(device), old_logp=old_logp.to(device),
                  teacher_logp_sampled=teacher_sampled.to(device), old_support_logp=old_support.to(device),
                  temperature=TEMPERATURE)
    return cast(h), cast(w), cast(b), tensors, kwargs


def _run(fn, h, w, b, tensors, kwargs, divergence="forward", proximal="c2", **extra):
    settings = LossSettings(divergence=divergence, proximal=proximal)
    loss, metrics = fn(h, w, tensors["support_ids"], tensors["teacher_logp"], tensors["coef"],
                       lm_head_bias=b, settings=settings, **kwargs, **extra)
    grads = torch.autograd.grad(loss, (h, w, b))
    return loss, grads, metrics


@pytest.mark.parametrize("divergence,proximal", COMBOS)
@pytest.mark.parametrize("chunk_size", [3, 4, M, 64])
def test_fused_matches_reference(divergence, proximal, chunk_size):
    h, w, b, tensors, kwargs = _problem()
    ref = _run(distill_loss_reference, h, w, b, tensors, kwargs, divergence=divergence, proximal=proximal)
    out = _run(distill_loss_from_hidden, h, w, b, tensors, kwargs, divergence=divergence, proximal=proximal,
               chunk_size=chunk_size)
    torch.testing.assert_close(out[0], ref[0], rtol=0, atol=1e-12)
    for g_out, g_ref in zip(out[1], ref[1]):
        torch.testing.assert_close(g_out, g_ref, rtol=0, atol=1e-12)
    for key in ("kl_per_token", "masked_frac", "student_logp_sampled"):
        torch.testing.assert_close(out[2][key], ref[2][key], rtol=0, atol=1e-12)
    assert not any(v.requires_grad for v in out[2].values())
    # tokens 0 and 5 move past tau toward the teacher (coef > 0), token 1 too but has coef 0:
    # 2 of the 5 active tokens -> 0.4
    assert float(out[2]["masked_frac"]) == (0.4 if proximal == "c2" else 0.0)
    assert (out[2]["kl_per_token"][4:8] == 0).all() and (out[2]["kl_per_token"][[0, 2, 3, 8, 9]] > 0).all()


@pytest.mark.parametrize("proximal", ["c2", "c1", "c3"])
def test_missing_old_quantities_mean_theta_equals_old(proximal):
    h, w, b, tensors, kwargs = _problem()
    kwargs.update(old_logp=None, teacher_logp_sampled=None, old_support_logp=None)
    ref = _run(distill_loss_reference, h, w, b, tensors, kwargs, proximal=proximal)
    out = _run(distill_loss_from_hidden, h, w, b, tensors, kwargs, proximal=proximal, chunk_size=3)
    torch.testing.assert_close(out[0], ref[0], rtol=0, atol=1e-12)
    for g_out, g_ref in zip(out[1], ref[1]):
        torch.testing.assert_close(g_out, g_ref, rtol=0, atol=1e-12)
    assert float(out[2]["masked_frac"]) == 0.0
    # at theta = old, C1's gradient is the forward-KL gradient
    if proximal == "c1":
        kl = _run(distill_loss_from_hidden, h, w, b, tensors, kwargs, proximal="none", chunk_size=3)
        for g_out, g_kl in zip(out[1], kl[1]):
            torch.testing.assert_close(g_out, g_kl, rtol=0, atol=1e-12)


def test_k_equal_v_matches_full_forward_kl():
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(M, H, dtype=F64, generator=gen, requires_grad=True)
    w = torch.randn(V, H, dtype=F64, generator=gen, requires_grad=True)
    teacher_logits = torch.randn(M, V, dtype=F64, generator=gen) * 2
    lp, ids = teacher_topk(teacher_logits, V)
    loss, metrics = distill_loss_from_hidden(h, w, ids, lp, torch.ones(M, dtype=F64), sampled_ids=ids[:, 0],
                                             settings=LossSettings(proximal="none"), chunk_size=4)
    full = forward_kl((h @ w.T)[None], teacher_logits[None])[0]  # [M]
    torch.testing.assert_close(loss, full.sum(), rtol=0, atol=1e-12)
    torch.testing.assert_close(metrics["kl_per_token"], full.detach(), rtol=0, atol=1e-12)
    g_fused = torch.autograd.grad(loss, (h, w))
    g_full = torch.autograd.grad(full.sum(), (h, w))
    for a, c in zip(g_fused, g_full):
        assert a.isfinite().all()
        torch.testing.assert_close(a, c, rtol=0, atol=1e-12)


def test_tied_embedding_gradients_accumulate():
    gen = torch.Generator().manual_seed(4)
    emb = torch.randn(V, H, dtype=F64, generator=gen, requires_grad=True)  # input embedding == LM head
    mix = torch.randn(H, H, dtype=F64, generator=gen)
    tokens = torch.randint(V, (M,), generator=gen)
    teacher_lp, ids = teacher_topk(torch.randn(M, V, dtype=F64, generator=gen), K)
    coef = torch.full((M,), 0.1, dtype=F64)
    grads = []
    for fn in (distill_loss_reference, distill_loss_from_hidden):
        hidden = torch.tanh(emb[tokens] @ mix)  # [M, H]
        loss, _ = fn(hidden, emb, ids, teacher_lp, coef, sampled_ids=tokens, settings=LossSettings(proximal="none"),
                     chunk_size=3)
        grads.append(torch.autograd.grad(loss, emb)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-12)


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_materialises_more_than_a_chunk_of_logits():
    gen = torch.Generator().manual_seed(5)
    m, v, h_dim, k, chunk = 64, 50, 3, 2, 4  # [V, H], [M, H] and [M, K] all stay below [chunk, V]
    h = torch.randn(m, h_dim, generator=gen, requires_grad=True)
    w = torch.randn(v, h_dim, generator=gen, requires_grad=True)
    lp, ids = teacher_topk(torch.randn(m, v, generator=gen), k)
    sampled = torch.randint(v, (m,), generator=gen)
    for fn in (distill_loss_from_hidden, distill_loss_reference):
        with _LargestTensor() as probe:
            loss, _ = fn(h, w, ids, lp, torch.ones(m), sampled_ids=sampled, old_logp=lp[:, 0],
                         teacher_logp_sampled=lp[:, 1], chunk_size=chunk)
            torch.autograd.grad(loss, (h, w))
        assert probe.largest == (chunk * v if fn is distill_loss_from_hidden else m * v)
    for fn in (token_logprobs_from_hidden, token_logprobs_reference):
        with _LargestTensor() as probe:
            torch.autograd.grad(fn(h, w, sampled, chunk_size=chunk).sum(), (h, w))
        assert probe.largest == (chunk * v if fn is token_logprobs_from_hidden else m * v)


def test_fused_gradient_for_the_weight_only():
    h, w, b, tensors, kwargs = _problem()
    frozen = h.detach()
    args = (tensors["support_ids"], tensors["teacher_logp"], tensors["coef"])
    (g_out,) = torch.autograd.grad(distill_loss_from_hidden(frozen, w, *args, **kwargs, chunk_size=3)[0], w)
    (g_ref,) = torch.autograd.grad(distill_loss_reference(frozen, w, *args, **kwargs)[0], w)
    torch.testing.assert_close(g_out, g_ref, rtol=0, atol=1e-12)


def test_no_grad_and_argument_errors():
    h, w, b, tensors, kwargs = _problem()
    with torch.no_grad():
        loss, _ = distill_loss_from_hidden(h, w, tensors["support_ids"], tensors["teacher_logp"],
                                           tensors["coef"], lm_head_bias=b, **kwargs)
    assert not loss.requires_grad and loss.isfinite()
    with pytest.raises(ValueError, match="forward"):
        distill_loss_from_hidden(h, w, tensors["support_ids"], tensors["teacher_logp"], tensors["coef"],
                                 **kwargs, settings=LossSettings(divergence="reverse", proximal="c1"))
    with pytest.raises(ValueError, match="shape"):
        distill_loss_from_hidden(h[:3], w, tensors["support_ids"], tensors["teacher_logp"], tensors["coef"],
                                 **kwargs)


@pytest.mark.parametrize("chunk_size", [3, 5, 64])
def test_token_logprobs_match_reference(chunk_size):
    h, w, b, tensors, kwargs = _problem()
    ids = kwargs["sampled_ids"]
    grad_out = torch.randn(M, dtype=F64, generator=torch.Generator().manual_seed(6))
    grad_out[:5] = 0.0  # chunks with no incoming gradient are skipped
    ref = token_logprobs_reference(h, w, ids, b, TEMPERATURE)
    out = token_logprobs_from_hidden(h, w, ids, b, TEMPERATURE, chunk_size=chunk_size)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g_ref = torch.autograd.grad(ref, (h, w, b), grad_out)
    g_out = torch.autograd.grad(out, (h, w, b), grad_out)
    for a, c in zip(g_out, g_ref):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-12)


def test_token_logprobs_hidden_only_and_tied():
    gen = torch.Generator().manual_seed(7)
    emb = torch.randn(V, H, dtype=F64, generator=gen, requires_grad=True)
    tokens = torch.randint(V, (M,), generator=gen)
    grads = []
    for fn in (token_logprobs_reference, token_logprobs_from_hidden):
        hidden = torch.sin(emb[tokens])  # [M, H], tied with the head
        grads.append(torch.autograd.grad(fn(hidden, emb, tokens.roll(1), chunk_size=3).sum(), emb)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-12)
    frozen = emb.detach()
    hidden = torch.randn(M, H, dtype=F64, generator=gen, requires_grad=True)
    (g,) = torch.autograd.grad(token_logprobs_from_hidden(hidden, frozen, tokens, chunk_size=4).sum(), hidden)
    (g_ref,) = torch.autograd.grad(token_logprobs_reference(hidden, frozen, tokens).sum(), hidden)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)


def _low_precision_check(device: str) -> None:
    """bf16 hidden/weight: the chunked paths agree with the full-logits references run on the same
    bf16 tensors up to bf16 rounding of the outputs (2 ulp = 2^-7 relative to the largest entry),
    and with float64 on the same values up to the bf16 rounding of the logits matmul."""
    h, w, b, tensors, kwargs = _problem(dtype=torch.bfloat16, device=device)
    out = _run(distill_loss_from_hidden, h, w, b, tensors, kwargs, chunk_size=3)
    same = _run(distill_loss_reference, h, w, b, tensors, kwargs)
    up = [t.detach().double().requires_grad_() for t in (h, w, b)]
    exact = _run(distill_loss_reference, *up, tensors, kwargs)
    assert out[0].dtype == torch.float32 and [g.dtype for g in out[1]] == [torch.bfloat16] * 3
    torch.testing.assert_close(out[0], same[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(out[0].double(), exact[0], rtol=2e-2, atol=0)
    for a, c in zip(out[1], same[1]):
        torch.testing.assert_close(a, c, rtol=0, atol=2**-7 * float(c.abs().max()))
    ids = kwargs["sampled_ids"]
    lp = token_logprobs_from_hidden(h, w, ids, b, TEMPERATURE, chunk_size=3)
    lp_same = token_logprobs_reference(h, w, ids, b, TEMPERATURE)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, lp_same, rtol=0, atol=1e-5)
    torch.testing.assert_close(lp.double(), token_logprobs_reference(up[0], up[1], ids, up[2], TEMPERATURE),
                               rtol=0, atol=0.1)
    for a, c in zip(torch.autograd.grad(lp.sum(), (h, w, b)), torch.autograd.grad(lp_same.sum(), (h, w, b))):
        torch.testing.assert_close(a, c, rtol=0, atol=2**-7 * float(c.abs().max()))


def test_bf16_on_cpu():
    _low_precision_check("cpu")


@pytest.mark.gpu
def test_bf16_on_gpu():
    _low_precision_check("cuda")


def test_policy_kl_by_hand_and_against_full_logits():
    """KL(pi || pi_ref) per position: by hand on two tokens, then chunked against the full-logits
    reference (forward_kl with the policy as the first distribution), zero for identical models."""
    # pi = softmax([ln 3, 0]) = (3/4, 1/4), pi_ref uniform: 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308...
    import math

    h = torch.ones(1, 1, dtype=F64)
    kl = policy_kl_from_hidden(h, torch.tensor([[math.log(3.0)], [0.0]], dtype=F64), h, torch.zeros(2, 1, dtype=F64))
    assert float(kl) == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-12)
    gen = torch.Generator().manual_seed(8)
    h, h_ref = torch.randn(M, H, dtype=F64, generator=gen), torch.randn(M, H, dtype=F64, generator=gen)
    w, w_ref = torch.randn(V, H, dtype=F64, generator=gen), torch.randn(V, H, dtype=F64, generator=gen)
    b = torch.randn(V, dtype=F64, generator=gen)
    ref = forward_kl(student_logits=(h_ref @ w_ref.T) / TEMPERATURE, teacher_logits=(h @ w.T + b) / TEMPERATURE)
    for chunk in (3, 64):
        out = policy_kl_from_hidden(h, w, h_ref, w_ref, lm_head_bias=b, temperature=TEMPERATURE, chunk_size=chunk)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    assert (ref > 0).all()
    same = policy_kl_from_hidden(h, w, h, w, temperature=TEMPERATURE, chunk_size=4)
    assert same.shape == (M,) and float(same.abs().max()) < 1e-12
    assert policy_kl_from_hidden(h[:0], w, h_ref[:0], w_ref).shape == (0,)
    with pytest.raises(ValueError, match="shape"):
        policy_kl_from_hidden(h[:3], w, h_ref, w_ref)
