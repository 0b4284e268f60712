"""Losses computed from hidden states through the LM head, a chunk of tokens at a time.

The logits of a long batch are the largest tensor of a training step ([M, V] with V ~ 50k-150k
and M tens of thousands of tokens), and autograd keeps several copies of them. Memory must not
grow with T x V, so the two losses the trainer needs are
computed here from the hidden states [M, H] and the LM-head weight [V, H], never holding more
than [chunk_size, V] logits at once in forward or backward:

- :func:`distill_loss_from_hidden`: the distillation term over the teacher's top-k support plus
  a tail bucket. Its gradient is cheap to form while the chunk's logits exist, so the forward
  pass computes dL/dlogits chunk by chunk, turns it into gradients w.r.t. the hidden states and
  the weight (and bias) at once, and stores those; backward only scales them by grad_output.
  Same FLOPs as the naive path, nothing recomputed.
- :func:`token_logprobs_from_hidden`: sampled-token log-probs for the RL / SFT / LUFFY terms;
  it saves only its inputs and one logsumexp per row and recomputes each chunk's logits in
  backward (its output feeds several terms, so gradients are not formed early).
- :func:`head_logprobs`: the same chunked pass without gradient, for what the trainer freezes
  at rollout time: the teacher's top-k targets and the old student's log-probs.
- :func:`policy_kl_from_hidden`: the exact per-position KL of the policy to a reference model
  (the initial one) over the full vocabulary, without gradient, for the probe's drift measure.

Each has a plain full-logits autograd reference (``*_reference``) used by the equivalence tests.
Logits are produced by a matmul in the input dtype (bf16 on GPU, like the model's own LM head)
and all softmax math runs in float32 (float64 inputs stay float64).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from sgpo.core.distill import (
    DIVERGENCES,
    bucket_divergence,
    compute_dtype,
    support_logprobs,
    teacher_support,
    teacher_targets_from_logits,
)
from sgpo.core.proximal import PROXIMAL_MODES, c2_trust_mask, distill_token_loss
from sgpo.core.settings import LossSettings


@dataclass(frozen=True)
class _Pass:
    """What one distillation call needs besides tensors, passed as one object through autograd."""

    loss: LossSettings
    temperature: float
    chunk_size: int


@dataclass
class DistillTargets:
    """Per-token no-gradient inputs of the distillation term (M tokens)."""

    support_ids: torch.Tensor  # [M, K] teacher top-k ids
    teacher_logp: torch.Tensor  # [M, K] teacher log-probs on the support (normalised over V)
    coef: torch.Tensor  # [M] lambda * w_i / N_tok, 0 for ineligible tokens
    sampled_ids: torch.Tensor  # [M]
    old_logp: torch.Tensor | None  # [M] log q_old(y_t); None means q_old = q_theta (nothing masked)
    teacher_logp_sampled: torch.Tensor | None  # [M] log p(y_t)
    old_support_logp: torch.Tensor | None  # [M, K] log q_old on the support; None means q_old = q_theta

    def rows(self, sl: slice) -> DistillTargets:
        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[sl]

        return DistillTargets(self.support_ids[sl], self.teacher_logp[sl], self.coef[sl], self.sampled_ids[sl],
                              cut(self.old_logp), cut(self.teacher_logp_sampled), cut(self.old_support_logp))


def _chunks(m: int, chunk_size: int) -> Iterator[slice]:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    for start in range(0, m, chunk_size):
        yield slice(start, min(start + chunk_size, m))


def _head_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 temperature: float) -> torch.Tensor:  # [c, H] -> [c, V] in the compute dtype
    z = h @ weight.t()  # [c, V], input dtype (bf16 stays bf16 like the model's LM head)
    if bias is not None:
        z.add_(bias)  # in place: mm's backward does not need its output
    z = z.to(compute_dtype(z.dtype))
    return z.div_(temperature) if temperature != 1.0 else z


def _token_terms(student_lp: torch.Tensor, student_sampled: torch.Tensor, tg: DistillTargets, vocab: int,
                 s: LossSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From student bucket log-probs [c, K+1] and sampled log-probs [c]: the weighted loss
    sum_t coef_t m_t l_t (scalar), the plain divergence per token [c] (0 where coef is 0) and
    the proximal mask [c]. Shared by the fused path and the reference."""
    teacher = teacher_support(tg.teacher_logp, vocab_size=vocab)  # [c, K+1]
    old = None
    if s.proximal in ("c1", "c3"):
        old = student_lp.detach() if tg.old_support_logp is None else teacher_support(tg.old_support_logp, vocab_size=vocab)
    per_token = distill_token_loss(student_lp, teacher, s, old_lp=old)  # [c]
    if s.proximal == "c2" and tg.old_logp is not None:
        mask = c2_trust_mask(student_sampled, tg.old_logp, tg.teacher_logp_sampled, s.tau)  # [c]
    else:
        mask = torch.ones_like(per_token)
    active = tg.coef != 0
    coef = tg.coef.to(per_token.dtype)
    weighted = torch.where(active, coef * mask * per_token, torch.zeros_like(per_token)).sum()
    with torch.no_grad():
        plain = per_token if s.proximal in ("c2", "none") else bucket_divergence(
            student_lp, teacher, s.divergence, s.jsd_beta)
        plain = torch.where(active, plain.detach(), torch.zeros_like(plain))
    return weighted, plain, mask


def _check_distill_args(hidden: torch.Tensor, weight: torch.Tensor, tg: DistillTargets, s: LossSettings) -> None:
    if s.divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {s.divergence!r}; expected one of {DIVERGENCES}")
    if s.proximal not in PROXIMAL_MODES:
        raise ValueError(f"unknown proximal constraint {s.proximal!r}; expected one of {PROXIMAL_MODES}")
    if s.proximal == "c1" and s.divergence != "forward":
        raise ValueError(f"proximal 'c1' is a clipped forward KL; divergence {s.divergence!r} is not supported")
    if s.proximal == "c2" and tg.old_logp is not None and tg.teacher_logp_sampled is None:
        raise ValueError("proximal 'c2' with old_logp needs teacher_logp_sampled")
    m, k = tg.support_ids.shape
    if hidden.dim() != 2 or hidden.shape[0] != m or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"shape mismatch: hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)}, "
                         f"support_ids {tuple(tg.support_ids.shape)}")
    if tg.teacher_logp.shape != (m, k) or tg.coef.shape != (m,) or tg.sampled_ids.shape != (m,):
        raise ValueError("teacher_logp must be [M, K], coef and sampled_ids [M]")


def _fused_chunk(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tg: DistillTargets,
                 run: _Pass) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk of c tokens: (weighted loss, dL/dlogits [c, V], plain divergence [c], mask [c],
    sampled log-prob [c]). dL/dlogits uses s_j = log-mass of bucket j minus logsumexp:
    ds_j/dz_v = 1[v in j] exp(z_v - lse_j) - softmax_v, so with gamma = dL/ds [c, K+1]
    dL/dz_v = gamma_j(v) exp(z_v - lse_j(v)) - softmax_v sum_j gamma_j."""
    k = tg.support_ids.shape[1]
    z = _head_logits(h, weight, bias, run.temperature)  # [c, V]
    mx = z.amax(-1, keepdim=True)  # [c, 1]
    e = (z - mx).exp_()  # [c, V] unnormalised softmax
    se = e.sum(-1, keepdim=True)
    lse = mx + se.log()  # [c, 1]
    support = z.gather(-1, tg.support_ids) - lse  # [c, K]
    sampled = (z.gather(-1, tg.sampled_ids[:, None]) - lse)[:, 0]  # [c]
    rest = z.scatter_(-1, tg.support_ids, -math.inf)  # [c, V] reuses z: non-support logits
    mx_t = rest.amax(-1, keepdim=True)
    mx_t = torch.where(mx_t > -math.inf, mx_t, torch.zeros_like(mx_t))  # empty tail: keep exp finite
    et = rest.sub_(mx_t).exp_()  # [c, V] unnormalised tail distribution, 0 on the support
    st = et.sum(-1, keepdim=True)
    tail = mx_t + st.log() - lse  # [c, 1], -inf when the support covers the vocabulary
    student_lp = torch.cat([support, tail], dim=-1).requires_grad_()  # [c, K+1]
    with torch.enable_grad():
        weighted, plain, mask = _token_terms(student_lp, sampled, tg, weight.shape[0], run.loss)
        (gamma,) = torch.autograd.grad(weighted, student_lp)  # [c, K+1]
    g = e.mul_(-gamma.sum(-1, keepdim=True) / se)  # [c, V] -softmax * sum_j gamma_j
    tail_scale = torch.where(st > 0, gamma[:, k:] / torch.where(st > 0, st, torch.ones_like(st)), torch.zeros_like(st))
    g.add_(et.mul_(tail_scale))
    g.scatter_add_(-1, tg.support_ids, gamma[:, :k])
    if run.temperature != 1.0:
        g.div_(run.temperature)
    return weighted.detach(), g, plain, mask, sampled


class _FusedDistill(torch.autograd.Function):
    """Forward computes the loss and, chunk by chunk, its gradients; backward scales them."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,  # type: ignore[override]
                tg: DistillTargets, run: _Pass, grad_enabled: bool):
        m, dtype, dev = hidden.shape[0], compute_dtype(hidden.dtype), hidden.device
        need_h, need_w, need_b = (grad_enabled and n for n in ctx.needs_input_grad[:3])
        loss = torch.zeros((), dtype=dtype, device=dev)
        plain, sampled = torch.zeros(m, dtype=dtype, device=dev), torch.zeros(m, dtype=dtype, device=dev)
        mask = torch.ones(m, dtype=dtype, device=dev)
        grad_h = torch.zeros(m, hidden.shape[1], dtype=dtype, device=dev) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=dtype, device=bias.device) if need_b else None
        for sl in _chunks(m, run.chunk_size):
            part = tg.rows(sl)
            if not bool((part.coef != 0).any()):
                continue  # contributes nothing; its metrics stay 0 like every coef = 0 token
            h = hidden[sl]  # [c, H]
            chunk_loss, g, plain[sl], mask[sl], sampled[sl] = _fused_chunk(h, weight, bias, part, run)
            loss += chunk_loss
            g_in = g.to(weight.dtype)  # [c, V]
            if need_h:
                grad_h[sl] = g_in @ weight  # [c, H]
            if need_w and weight.dtype == dtype:
                grad_w.addmm_(g_in.t(), h)  # [V, H]
            elif need_w:
                grad_w += (g_in.t() @ h).to(dtype)  # low-precision matmul, float32 accumulation
            if need_b:
                grad_b += g.sum(0)
            del g, g_in
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        active = tg.coef != 0
        sampled = torch.where(active, sampled, torch.zeros_like(sampled))
        masked = (active & (mask == 0)).sum().to(dtype)
        ctx.mark_non_differentiable(plain, masked, sampled)
        return loss, plain, masked, sampled

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: torch.Tensor, *_unused: torch.Tensor):  # type: ignore[override]
        grad_h, grad_w, grad_b = ctx.saved_tensors
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        scale = lambda t, dt: None if t is None else (t * grad_loss.to(t.dtype)).to(dt)  # noqa: E731
        return scale(grad_h, h_dtype), scale(grad_w, w_dtype), scale(grad_b, b_dtype), None, None, None


def _targets(hidden: torch.Tensor, support_ids: torch.Tensor, teacher_logp: torch.Tensor, coef: torch.Tensor,
             sampled_ids: torch.Tensor, old_logp: torch.Tensor | None, teacher_logp_sampled: torch.Tensor | None,
             old_support_logp: torch.Tensor | None) -> DistillTargets:
    """Detached targets in the compute dtype of ``hidden`` (float32 for bf16, float64 for float64)."""
    dtype = compute_dtype(hidden.dtype)
    prep = lambda t: None if t is None else t.detach().to(dtype)  # noqa: E731
    return DistillTargets(support_ids, prep(teacher_logp), prep(coef), sampled_ids, prep(old_logp),
                          prep(teacher_logp_sampled), prep(old_support_logp))


def _metrics(plain: torch.Tensor, masked: torch.Tensor, sampled: torch.Tensor,
             coef: torch.Tensor) -> dict[str, torch.Tensor]:
    active = (coef != 0).sum().clamp(min=1).to(masked.dtype)
    return {"kl_per_token": plain.detach(), "masked_frac": (masked / active).detach(),
            "student_logp_sampled": sampled.detach()}


def distill_loss_from_hidden(
    hidden: torch.Tensor,  # [M, H]
    lm_head_weight: torch.Tensor,  # [V, H]
    support_ids: torch.Tensor,  # [M, K] teacher top-k ids
    teacher_logp: torch.Tensor,  # [M, K] teacher log-probs on the support, normalised over V
    coef: torch.Tensor,  # [M] lambda * w_i / N_tok, 0 for ineligible tokens
    *,
    sampled_ids: torch.Tensor,  # [M]
    old_logp: torch.Tensor | None = None,  # [M] log q_old(y_t); None: q_old = q_theta (C2 masks nothing)
    teacher_logp_sampled: torch.Tensor | None = None,  # [M] log p(y_t), needed by C2 with old_logp
    old_support_logp: torch.Tensor | None = None,  # [M, K] log q_old on the support (C1/C3); None: q_theta
    settings: LossSettings = LossSettings(),  # divergence, proximal variant and its parameters
    lm_head_bias: torch.Tensor | None = None,  # [V]
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Distillation loss ``sum_t coef_t m_t l_t`` from hidden states, in chunks of ``chunk_size``.

    l_t is the divergence over the K+1 buckets (teacher top-k + tail) for the proximal variant
    (C1/C3 change l_t, C2 sets the mask m_t, ones otherwise). Gradients w.r.t. ``hidden``,
    ``lm_head_weight`` and ``lm_head_bias`` are formed in the forward pass and scaled in backward;
    the targets and ``coef`` receive none. Memory: at most a few [chunk_size, V] buffers plus a
    gradient accumulator of the weight's shape in float32.

    Metrics (detached): ``kl_per_token`` [M] the plain divergence to the teacher, unweighted and
    before the proximal mask; ``masked_frac`` the fraction of coef != 0 tokens C2 masked;
    ``student_logp_sampled`` [M] log q_theta(y_t). Per-token metrics are 0 where coef is 0.
    """
    tg = _targets(hidden, support_ids, teacher_logp, coef, sampled_ids, old_logp, teacher_logp_sampled,
                  old_support_logp)
    _check_distill_args(hidden, lm_head_weight, tg, settings)
    loss, plain, masked, sampled = _FusedDistill.apply(hidden, lm_head_weight, lm_head_bias, tg,
                                                       _Pass(settings, temperature, chunk_size), torch.is_grad_enabled())
    return loss, _metrics(plain, masked, sampled, tg.coef)


def distill_loss_reference(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    support_ids: torch.Tensor,
    teacher_logp: torch.Tensor,
    coef: torch.Tensor,
    *,
    sampled_ids: torch.Tensor,
    old_logp: torch.Tensor | None = None,
    teacher_logp_sampled: torch.Tensor | None = None,
    old_support_logp: torch.Tensor | None = None,
    settings: LossSettings = LossSettings(),  # divergence, proximal variant and its parameters
    lm_head_bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reference for :func:`distill_loss_from_hidden`: full [M, V] logits and plain autograd.
    ``chunk_size`` is accepted for a drop-in signature and ignored."""
    tg = _targets(hidden, support_ids, teacher_logp, coef, sampled_ids, old_logp, teacher_logp_sampled,
                  old_support_logp)
    _check_distill_args(hidden, lm_head_weight, tg, settings)
    logits = _head_logits(hidden, lm_head_weight, lm_head_bias, temperature)  # [M, V]
    student_lp = support_logprobs(logits, tg.support_ids)  # [M, K+1]
    sampled = torch.log_softmax(logits, dim=-1).gather(-1, tg.sampled_ids[:, None])[:, 0]  # [M]
    loss, plain, mask = _token_terms(student_lp, sampled, tg, lm_head_weight.shape[0], settings)
    active = tg.coef != 0
    masked = (active & (mask == 0)).sum().to(plain.dtype)
    sampled = torch.where(active, sampled.detach(), torch.zeros_like(plain))
    return loss, _metrics(plain, masked, sampled, tg.coef)


class _TokenLogprobs(torch.autograd.Function):
    """Sampled-token log-probs; saves inputs and per-row logsumexp, recomputes logits in backward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,  # type: ignore[override]
                ids: torch.Tensor, temperature: float, chunk_size: int) -> torch.Tensor:
        m, dtype = hidden.shape[0], compute_dtype(hidden.dtype)
        out = torch.empty(m, dtype=dtype, device=hidden.device)  # [M]
        lse = torch.empty(m, dtype=dtype, device=hidden.device)  # [M]
        for sl in _chunks(m, chunk_size):
            z = _head_logits(hidden[sl], weight, bias, temperature)  # [c, V]
            lse[sl] = torch.logsumexp(z, dim=-1)
            out[sl] = z.gather(-1, ids[sl, None])[:, 0] - lse[sl]
            del z
        ctx.save_for_backward(hidden, weight, bias, ids, lse)
        ctx.settings = (temperature, chunk_size)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        hidden, weight, bias, ids, lse = ctx.saved_tensors
        temperature, chunk_size = ctx.settings
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=lse.dtype, device=bias.device) if need_b else None
        for sl in _chunks(hidden.shape[0], chunk_size):
            g = grad_out[sl].to(lse.dtype)  # [c]
            if not bool((g != 0).any()):
                continue
            z = _head_logits(hidden[sl], weight, bias, temperature)  # [c, V]
            dz = z.sub_(lse[sl, None]).exp_().mul_(-g[:, None])  # [c, V] -g * softmax
            dz.scatter_add_(-1, ids[sl, None], g[:, None])  # + g * onehot
            if temperature != 1.0:
                dz.div_(temperature)
            dz_in = dz.to(weight.dtype)
            if need_h:
                grad_h[sl] = (dz_in @ weight).to(hidden.dtype)  # [c, H]
            if need_w:
                grad_w += (dz_in.t() @ hidden[sl]).to(lse.dtype)  # [V, H]
            if need_b:
                grad_b += dz.sum(0)
        cast = lambda t, ref: None if t is None else t.to(ref.dtype)  # noqa: E731
        return grad_h, cast(grad_w, weight), cast(grad_b, bias) if bias is not None else None, None, None, None


def token_logprobs_from_hidden(
    hidden: torch.Tensor,  # [M, H]
    lm_head_weight: torch.Tensor,  # [V, H]
    ids: torch.Tensor,  # [M]
    lm_head_bias: torch.Tensor | None = None,  # [V]
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> torch.Tensor:  # [M], float32 (float64 for float64 inputs)
    """``log softmax(h W^T / temperature)[ids]`` without ever holding more than [chunk_size, V]
    logits; differentiable w.r.t. hidden, weight and bias (backward recomputes each chunk)."""
    if hidden.dim() != 2 or ids.shape != hidden.shape[:1] or lm_head_weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"shape mismatch: hidden {tuple(hidden.shape)}, weight {tuple(lm_head_weight.shape)}, "
                         f"ids {tuple(ids.shape)}")
    return _TokenLogprobs.apply(hidden, lm_head_weight, lm_head_bias, ids, temperature, chunk_size)


def token_logprobs_reference(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    ids: torch.Tensor,
    lm_head_bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> torch.Tensor:  # [M]
    """Reference for :func:`token_logprobs_from_hidden`: full logits, log_softmax, gather."""
    logits = _head_logits(hidden, lm_head_weight, lm_head_bias, temperature)  # [M, V]
    return torch.log_softmax(logits, dim=-1).gather(-1, ids[:, None])[:, 0]


@dataclass
class HeadLogprobs:
    """No-gradient log-probs of M tokens through the LM head (:func:`head_logprobs`)."""

    logp: torch.Tensor  # [M] log-prob of ``ids``
    support_ids: torch.Tensor | None  # [M, K] the top-k ids (top_k given) or the given support
    support_logp: torch.Tensor | None  # [M, K] log-probs on the support, normalised over V


@torch.no_grad()
def head_logprobs(
    hidden: torch.Tensor,  # [M, H]
    lm_head_weight: torch.Tensor,  # [V, H]
    ids: torch.Tensor,  # [M] the sampled tokens
    *,
    top_k: int | None = None,  # keep the top-k of each distribution (0 = all V): teacher targets
    support_ids: torch.Tensor | None = None,  # [M, K] log-probs on this support: old student on the teacher's
    lm_head_bias: torch.Tensor | None = None,  # [V]
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> HeadLogprobs:
    """The one chunked LM-head pass of everything frozen at rollout time: log-probs of ``ids``
    and, with ``top_k``, the top-k support and its log-probs (the teacher's targets), or, with
    ``support_ids``, the log-probs on that support (the old student, for C1/C3). At most
    [chunk_size, V] logits exist at once; the same logits and temperature as the losses."""
    if top_k is not None and support_ids is not None:
        raise ValueError("give top_k (teacher targets) or support_ids (old log-probs on a support), not both")
    m = hidden.shape[0]
    if ids.shape != (m,) or lm_head_weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"shape mismatch: hidden {tuple(hidden.shape)}, weight {tuple(lm_head_weight.shape)}, "
                         f"ids {tuple(ids.shape)}")
    logp, sup_ids, sup_lp = [], [], []
    for sl in _chunks(m, chunk_size):
        z = _head_logits(hidden[sl], lm_head_weight, lm_head_bias, temperature)  # [c, V]
        if top_k is not None:
            lp, top, sampled = teacher_targets_from_logits(z, top_k or z.shape[-1], ids[sl])  # [c, K], [c, K], [c]
            logp.append(sampled)
            sup_ids.append(top)
            sup_lp.append(lp)
            continue
        lse = torch.logsumexp(z, dim=-1, keepdim=True)  # [c, 1]
        logp.append((z.gather(-1, ids[sl, None]) - lse)[:, 0])
        if support_ids is not None:
            sup_lp.append(z.gather(-1, support_ids[sl]) - lse)
    cat = lambda parts: torch.cat(parts) if parts else None  # noqa: E731
    empty = hidden.new_zeros(0, dtype=compute_dtype(hidden.dtype))
    return HeadLogprobs(cat(logp) if logp else empty,
                        cat(sup_ids) if top_k is not None else support_ids, cat(sup_lp))


@torch.no_grad()
def policy_kl_from_hidden(
    hidden: torch.Tensor,  # [M, H] the policy's hidden states
    lm_head_weight: torch.Tensor,  # [V, H] the policy's LM head
    ref_hidden: torch.Tensor,  # [M, H] the reference model's hidden states at the same positions
    ref_lm_head_weight: torch.Tensor,  # [V, H]
    *,
    lm_head_bias: torch.Tensor | None = None,  # [V]
    ref_lm_head_bias: torch.Tensor | None = None,  # [V]
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> torch.Tensor:  # [M]
    """Per position the exact KL(pi || pi_ref) = sum_v pi(v) [log pi(v) - log pi_ref(v)] over
    the full vocabulary, pi = softmax(h W^T / temperature) the policy's next-token distribution
    and pi_ref the reference's (the initial model: the probe's drift measure), never holding
    more than two [chunk_size, V] logits at once. No gradient."""
    m = hidden.shape[0]
    if hidden.shape != ref_hidden.shape or lm_head_weight.shape != ref_lm_head_weight.shape \
            or lm_head_weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"shape mismatch: hidden {tuple(hidden.shape)}, ref_hidden {tuple(ref_hidden.shape)}, "
                         f"weight {tuple(lm_head_weight.shape)}, ref weight {tuple(ref_lm_head_weight.shape)}")
    out = [hidden.new_zeros(0, dtype=compute_dtype(hidden.dtype))]
    for sl in _chunks(m, chunk_size):
        lp = torch.log_softmax(_head_logits(hidden[sl], lm_head_weight, lm_head_bias, temperature), -1)  # [c, V]
        lr = torch.log_softmax(_head_logits(ref_hidden[sl], ref_lm_head_weight, ref_lm_head_bias, temperature), -1)
        out.append(bucket_divergence(student_lp=lr, teacher_lp=lp, kind="forward"))  # KL(pi || pi_ref) [c]
    return torch.cat(out)
