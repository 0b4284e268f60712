"""Per-token policy losses on sampled-token log-probabilities: the RL term (GRPO/DAPO clipped
surrogate), SFT's negative log-likelihood and LUFFY's off-policy shaping.

All functions take tokens of any shape: packed [M] (what :func:`sgpo.core.objective.policy_objective`
passes, no mask) or padded [N, T] with a mask. They return per-token losses (zero where the mask
is 0) and leave aggregation to :mod:`sgpo.core.aggregate`.
Masked positions are neutralised *before* any arithmetic (``torch.where`` on inputs), so
padding log-probs such as -inf never leak NaN into values or gradients.
"""

from __future__ import annotations

import torch

from sgpo.core.aggregate import masked_mean


def _mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(like) if mask is None else mask


def _expand_advantages(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[N] -> [N, 1] so a per-sequence advantage broadcasts over the T tokens (packed [M]
    advantages, one per token, pass through)."""
    if advantages.dim() == like.dim():
        return advantages
    return advantages.reshape(advantages.shape + (1,) * (like.dim() - advantages.dim()))


def clipped_policy_loss(
    logp: torch.Tensor,  # [M] or [N, T] log pi_theta(y_t) of the sampled tokens
    old_logp: torch.Tensor,  # like logp: log pi_old(y_t) at rollout time
    advantages: torch.Tensor,  # [M], or [N] broadcast over T
    mask: torch.Tensor | None,  # like logp, 1 for loss tokens; None: every token
    eps_low: float,
    eps_high: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DAPO/GRPO clipped surrogate ``-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)`` per token.

    Metrics (detached, masked means over loss tokens): ``clip_frac_low`` counts tokens with
    A < 0 and r < 1 - eps_low, ``clip_frac_high`` tokens with A > 0 and r > 1 + eps_high
    (exactly the tokens whose gradient the clip removes); ``ratio_mean`` is the mean ratio and
    ``ratio_per_token`` the ratio of every loss token ([M_loss], for the step's quantiles).
    """
    mask = _mask(mask, logp)
    keep = mask != 0
    log_ratio = torch.where(keep, logp - old_logp, torch.zeros_like(logp))  # [N, T]
    ratio = log_ratio.exp()
    adv = _expand_advantages(advantages, ratio).to(ratio.dtype)  # [N, 1]
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    per_token = torch.where(keep, torch.maximum(unclipped, clipped) * mask, torch.zeros_like(unclipped))
    with torch.no_grad():
        r = ratio.detach()
        low = ((r < 1.0 - eps_low) & (adv < 0)).to(r.dtype)
        high = ((r > 1.0 + eps_high) & (adv > 0)).to(r.dtype)
        metrics = {
            "clip_frac_low": masked_mean(low, keep),
            "clip_frac_high": masked_mean(high, keep),
            "ratio_mean": masked_mean(r, keep),
            "ratio_per_token": r[keep],  # [M_loss]
        }
    return per_token, metrics


def nll_loss(logp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # like logp
    """SFT's per-token negative log-likelihood ``-log pi_theta(y_t)``, zero where mask is 0."""
    mask = _mask(mask, logp)
    keep = mask != 0
    return torch.where(keep, -logp * mask, torch.zeros_like(logp))


def luffy_offpolicy_loss(
    logp: torch.Tensor,  # [M] or [N, T] log pi_theta(y_t) of off-policy (strong-model) tokens
    advantages: torch.Tensor,  # [M], or [N] broadcast over T
    mask: torch.Tensor | None,  # like logp; None: every token
    gamma: float,
) -> torch.Tensor:  # like logp
    """LUFFY's shaped off-policy term ``-A * f(pi_theta(y_t))`` with ``f(p) = p / (p + gamma)``.

    Unclipped: the shaping ``f`` already bounds the term, and it up-weights the gradient of
    low-probability tokens (``f'(p) = gamma / (p + gamma)^2``) that plain importance sampling
    would ignore.
    """
    mask = _mask(mask, logp)
    keep = mask != 0
    p = torch.where(keep, logp, torch.zeros_like(logp)).exp()
    adv = _expand_advantages(advantages, p).to(p.dtype)
    shaped = p / (p + gamma)
    return torch.where(keep, -adv * shaped * mask, torch.zeros_like(shaped))
