"""Token-level divergences between the strategy-conditioned teacher p and the student q.

The distillation term of SGPO is a per-token divergence, by default the
forward KL(p || q), over either the full vocabulary or the teacher's top-k support plus one
"tail" bucket holding the remaining mass. This module holds both forms and the helpers that
build the K+1 buckets; the full-vocabulary form is also the reference the top-k form is
tested against (with K = V the tail bucket is empty and the two agree exactly).

Conventions:
- ``p`` is always the teacher, ``q`` the student; all divergences sum over the last dim.
- Terms with zero weight (``a(v) = 0`` in ``sum_v a(v) [log a(v) - log b(v)]``) contribute
  exactly 0, and their inputs are replaced before any arithmetic so empty buckets
  (log-prob -inf) give no NaN in values or gradients.
- Softmax math runs in at least float32 (float64 stays float64).
"""

from __future__ import annotations

import math

import torch

DIVERGENCES = ("forward", "reverse", "jsd")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def _kl_terms(lp_a: torch.Tensor, lp_b: torch.Tensor) -> torch.Tensor:
    """Elementwise ``a (log a - log b)``, exactly 0 where ``a == 0``, NaN-free gradients."""
    present = lp_a > -math.inf
    zero = torch.zeros_like(lp_a)
    la = torch.where(present, lp_a, zero)
    lb = torch.where(present, lp_b, zero)
    return torch.where(present, la.exp() * (la - lb), zero)


def _mixture_logprobs(lp_p: torch.Tensor, lp_q: torch.Tensor, beta: float) -> torch.Tensor:
    """``log(beta p + (1 - beta) q)``; buckets empty in both get an arbitrary finite value
    (never used: both KL terms skip them), which keeps logaddexp's gradient finite."""
    both_empty = (lp_p == -math.inf) & (lp_q == -math.inf)
    zero = torch.zeros_like(lp_p)
    lp_p = torch.where(both_empty, zero, lp_p)
    lp_q = torch.where(both_empty, zero, lp_q)
    return torch.logaddexp(lp_p + math.log(beta), lp_q + math.log1p(-beta))


def bucket_divergence(
    student_lp: torch.Tensor,  # [..., K+1] (or [..., V]) student log-probs, normalised
    teacher_lp: torch.Tensor,  # [..., K+1] (or [..., V]) teacher log-probs, normalised
    kind: str = "forward",
    beta: float = 0.5,
) -> torch.Tensor:  # [...]
    """Divergence between two distributions given as log-probs over the last dim.

    - ``forward``: KL(p || q) = sum_v p(v) [log p(v) - log q(v)]  (SGPO's default).
    - ``reverse``: KL(q || p) = sum_v q(v) [log q(v) - log p(v)].
    - ``jsd``: generalised Jensen-Shannon with mixture m = beta p + (1 - beta) q:
      ``beta KL(p || m) + (1 - beta) KL(q || m)``; beta = 0.5 is the symmetric JSD (<= log 2).
      beta must lie strictly in (0, 1) (both limits give 0).
    """
    if kind == "forward":
        return _kl_terms(teacher_lp, student_lp).sum(-1)
    if kind == "reverse":
        return _kl_terms(student_lp, teacher_lp).sum(-1)
    if kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd beta must lie strictly between 0 and 1, got {beta}")
        lm = _mixture_logprobs(teacher_lp, student_lp, beta)
        return beta * _kl_terms(teacher_lp, lm).sum(-1) + (1.0 - beta) * _kl_terms(student_lp, lm).sum(-1)
    raise ValueError(f"unknown divergence {kind!r}; expected one of {DIVERGENCES}")


def _full_vocab_divergence(
    student_logits: torch.Tensor,  # [N, T, V]
    teacher_logits: torch.Tensor,  # [N, T, V]
    mask: torch.Tensor | None,  # [N, T]
    kind: str,
    beta: float = 0.5,
) -> torch.Tensor:  # [N, T]
    dtype = compute_dtype(student_logits.dtype)
    lq = torch.log_softmax(student_logits.to(dtype), dim=-1)
    lp = torch.log_softmax(teacher_logits.to(dtype), dim=-1)
    div = bucket_divergence(lq, lp, kind, beta)
    if mask is None:
        return div
    return torch.where(mask != 0, div, torch.zeros_like(div))


def forward_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:  # [N, T]
    """Exact per-token KL(softmax(teacher) || softmax(student)) over the full vocabulary,
    zero where ``mask == 0``. Its gradient w.r.t. the student logits is ``q - p``."""
    return _full_vocab_divergence(student_logits, teacher_logits, mask, "forward")


def reverse_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:  # [N, T]
    """Exact per-token KL(softmax(student) || softmax(teacher)), zero where ``mask == 0``."""
    return _full_vocab_divergence(student_logits, teacher_logits, mask, "reverse")


def jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    beta: float = 0.5,
) -> torch.Tensor:  # [N, T]
    """Per-token generalised JSD ``beta KL(p||m) + (1-beta) KL(q||m)``, ``m = beta p + (1-beta) q``
    (p teacher, q student), zero where ``mask == 0``."""
    return _full_vocab_divergence(student_logits, teacher_logits, mask, "jsd", beta)


def teacher_topk(teacher_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's k most likely tokens: (log-probs [..., K], ids [..., K]), sorted descending.

    Log-probs are normalised over the full vocabulary, so the tail mass is ``1 - sum exp``.
    """
    vocab = teacher_logits.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(f"k must lie in [1, V={vocab}], got {k}")
    logprobs = torch.log_softmax(teacher_logits.to(compute_dtype(teacher_logits.dtype)), dim=-1)
    values, ids = logprobs.topk(k, dim=-1)
    return values, ids


def teacher_targets_from_logits(
    teacher_logits: torch.Tensor,  # [..., V]
    k: int,
    sampled_ids: torch.Tensor,  # [...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the trainer keeps of the teacher per token, with one log-sum-exp over V: top-k
    log-probs [..., K], their ids [..., K] and the log-prob of the sampled token [...].
    Equals :func:`teacher_topk` plus a gather from ``log_softmax`` (the reference in the tests)."""
    vocab = teacher_logits.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(f"k must lie in [1, V={vocab}], got {k}")
    z = teacher_logits.to(compute_dtype(teacher_logits.dtype))
    lse = torch.logsumexp(z, dim=-1, keepdim=True)  # [..., 1]
    top, ids = z.topk(k, dim=-1)  # [..., K], same order as the log-probs
    sampled = (z.gather(-1, sampled_ids.unsqueeze(-1)) - lse).squeeze(-1)  # [...]
    return top - lse, ids, sampled


def support_logprobs(student_logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Student log-probs on the support ``ids`` [..., K] plus a tail bucket: [..., K+1].

    The tail is ``logsumexp`` over the non-support logits minus the full ``logsumexp`` (stable
    for tiny tails, unlike ``log(1 - sum)``). With every id in the support the tail is empty:
    log-prob -inf with zero, finite gradient. ``ids`` must not repeat within a row.
    """
    z = student_logits.to(compute_dtype(student_logits.dtype))  # [..., V]
    lse = torch.logsumexp(z, dim=-1, keepdim=True)  # [..., 1]
    support = z.gather(-1, ids) - lse  # [..., K]
    rest = z.scatter(-1, ids, -math.inf)  # [..., V]
    empty = (rest == -math.inf).all(dim=-1, keepdim=True)  # [..., 1]
    rest = torch.where(empty, torch.zeros_like(rest), rest)
    tail = torch.where(empty, torch.full_like(lse, -math.inf), torch.logsumexp(rest, dim=-1, keepdim=True) - lse)
    return torch.cat([support, tail], dim=-1)


def teacher_support(
    logprobs: torch.Tensor,  # [..., K] log-probs normalised over the full vocabulary
    *,
    vocab_size: int | None = None,
    min_tail_mass: float | None = None,
) -> torch.Tensor:  # [..., K+1]
    """Append the tail bucket ``log(1 - sum_k exp(logprobs))`` to a no-gradient top-k distribution
    (the teacher's, or the rollout-time student's on the same support).

    The tail mass is floored at ``min_tail_mass`` (default: the machine epsilon of the input
    dtype, the rounding level of the sum) so it is never NaN or -inf when the top-k sums to
    ~1; a -inf teacher tail would make reverse KL and JSD infinite. When ``vocab_size`` says
    the support covers the whole vocabulary the tail is empty: exactly -inf, matching
    :func:`support_logprobs`.
    """
    dtype = compute_dtype(logprobs.dtype)
    lp = logprobs.to(dtype)
    if vocab_size is not None and lp.shape[-1] >= vocab_size:
        tail = torch.full_like(lp[..., :1], -math.inf)
    else:
        floor = torch.finfo(logprobs.dtype).eps if min_tail_mass is None else min_tail_mass
        covered = torch.logsumexp(lp, dim=-1, keepdim=True).clamp(max=0.0)  # log sum_k p_k
        tail = torch.log(-torch.expm1(covered)).clamp(min=math.log(floor))  # log(1 - sum_k p_k)
    return torch.cat([lp, tail], dim=-1)
