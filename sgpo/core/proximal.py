"""Proximal constraints on the distillation term.

The teacher can sit far from the student on strategy-critical tokens; following it without
a limit destabilises training. Each variant bounds how far one update moves the student
toward the teacher, measured against the rollout-time student q_old:

- ``c2`` (default): a one-sided trust-region *mask*; a token stops contributing once the
  student's sampled-token log-prob moved by more than tau in the teacher's direction.
- ``c1``: Proximal-SFT soft-target clip, ``-sum_v p(v) min(q(v) / q_old(v), 1 + eps)``.
- ``c3``: a clipped teacher, target ``∝ q_old(v) exp(clip(log p(v) - log q_old(v), -c, c))``.
- ``none``: the plain divergence.

All functions act on K+1 bucket log-probs (see :mod:`sgpo.core.distill`) and return
per-token values.
"""

from __future__ import annotations

import math

import torch

from sgpo.core.distill import bucket_divergence, compute_dtype
from sgpo.core.settings import LossSettings

PROXIMAL_MODES = ("c2", "c1", "c3", "none")


@torch.no_grad()
def c2_trust_mask(
    logp: torch.Tensor,  # [...] log q_theta(y_t), current student
    old_logp: torch.Tensor,  # [...] log q_old(y_t), rollout-time student
    teacher_logp_sampled: torch.Tensor,  # [...] log p(y_t)
    tau: float,
) -> torch.Tensor:  # [...] 1.0 keeps the token, 0.0 drops it
    """C2 one-sided trust region: ``m_t = 0`` once ``sign(D_t) * d_t > tau`` with
    ``d_t = log q_theta(y_t) - log q_old(y_t)`` and ``D_t = log p(y_t) - log q_old(y_t)``.

    Moving *away* from the teacher never masks (the divergence pulls the token back); tokens
    where the teacher agrees with q_old (D_t = 0) are never masked. No gradient flows.
    """
    d = logp.detach() - old_logp
    direction = torch.sign(teacher_logp_sampled - old_logp)
    keep = direction * d <= tau
    return keep.to(compute_dtype(logp.dtype))


def psft_clip_loss(
    student_lp: torch.Tensor,  # [..., K+1] log q_theta
    old_lp: torch.Tensor,  # [..., K+1] log q_old (no gradient)
    teacher_lp: torch.Tensor,  # [..., K+1] log p (no gradient)
    eps: float,
) -> torch.Tensor:  # [...]
    """C1: ``-sum_v p(v) min(q_theta(v) / q_old(v), 1 + eps)``.

    At q_theta = q_old its gradient is the forward-KL gradient; once a bucket's ratio exceeds
    1 + eps it stops pulling. Its value is -1 (not 0) at q_theta = q_old.
    """
    present = teacher_lp > -math.inf
    zero = torch.zeros_like(student_lp)
    log_ratio = torch.where(present, student_lp, zero) - torch.where(present, old_lp, zero)
    capped = log_ratio.clamp(max=math.log1p(eps)).exp()  # min(ratio, 1 + eps)
    p = torch.where(present, teacher_lp, zero).exp()
    return -torch.where(present, p * capped, zero).sum(-1)


def clipped_teacher(
    teacher_lp: torch.Tensor,  # [..., K+1] log p
    old_lp: torch.Tensor,  # [..., K+1] log q_old
    clip: float,
) -> torch.Tensor:  # [..., K+1] log-probs of the C3 target
    """C3 target ``∝ q_old(v) exp(clip(log p(v) - log q_old(v), -c, c))``, renormalised.

    A bucket q_old gives no mass keeps none; one p gives no mass keeps q_old(v) e^{-c}.
    """
    old_empty = old_lp == -math.inf
    diff = torch.where(old_empty, torch.zeros_like(old_lp), teacher_lp - old_lp).clamp(-clip, clip)
    return torch.log_softmax(old_lp + diff, dim=-1)


def distill_token_loss(
    student_lp: torch.Tensor,  # [..., K+1]
    teacher_lp: torch.Tensor,  # [..., K+1]
    settings: LossSettings,  # divergence, proximal variant, c1_eps, c3_clip, jsd_beta
    old_lp: torch.Tensor | None = None,  # [..., K+1], needed by c1 / c3
) -> torch.Tensor:  # [...]
    """Per-token distillation loss l_t for one proximal variant (C2's mask is applied by the
    caller: here c2 and none are the plain divergence). C1 is defined for the forward
    direction only (it is a clipped cross-entropy)."""
    divergence, proximal = settings.divergence, settings.proximal
    if proximal not in PROXIMAL_MODES:
        raise ValueError(f"unknown proximal constraint {proximal!r}; expected one of {PROXIMAL_MODES}")
    if proximal in ("c1", "c3") and old_lp is None:
        raise ValueError(f"proximal {proximal!r} needs the rollout-time student log-probs old_lp")
    if proximal == "c1":
        if divergence != "forward":
            raise ValueError(f"proximal 'c1' is a clipped forward KL; divergence {divergence!r} is not supported")
        return psft_clip_loss(student_lp, old_lp, teacher_lp, settings.c1_eps)
    target = clipped_teacher(teacher_lp, old_lp, settings.c3_clip) if proximal == "c3" else teacher_lp
    return bucket_divergence(student_lp, target, divergence, settings.jsd_beta)
