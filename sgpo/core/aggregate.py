"""Turning per-token losses into one scalar.

Every loss in sgpo.core returns per-token values; how they are averaged is a separate,
explicit choice. The trainer passes a *global* normalizer (the token or sequence count of
the whole update across micro-batches and processes), so summing the micro-batch losses
reproduces the whole-batch loss exactly, whatever the micro-batch size.
"""

from __future__ import annotations

import torch

AGGREGATION_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``mask`` is non-zero (``mask`` acts as weights).

    An empty selection gives 0 rather than NaN.
    """
    mask = mask.to(x.dtype)
    if dim is None:
        num, den = (x * mask).sum(), mask.sum()
    else:
        num, den = (x * mask).sum(dim), mask.sum(dim)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def aggregate(
    per_token: torch.Tensor,  # [N, T]
    mask: torch.Tensor,  # [N, T]
    mode: str = "token-mean",
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:  # scalar
    """Reduce per-token losses to a scalar.

    - ``token-mean``: ``sum(l * m) / normalizer``; the normalizer counts tokens and defaults
      to ``mask.sum()`` (clamped to at least 1).
    - ``seq-mean-token-mean``: each sequence's masked token mean, summed over sequences and
      divided by the normalizer.
    - ``seq-mean-token-sum``: each sequence's masked token sum, summed over sequences and
      divided by the normalizer.

    For the two ``seq-`` modes the normalizer counts sequences; by default the sequences with
    at least one loss token (empty sequences would otherwise dilute the mean).
    """
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {AGGREGATION_MODES}")
    mask = mask.to(per_token.dtype)
    masked = per_token * mask  # [N, T]
    if mode == "token-mean":
        total = masked.sum()
        default = mask.sum()
    else:
        tokens = mask.sum(dim=-1)  # [N]
        per_seq = masked.sum(dim=-1)  # [N]
        if mode == "seq-mean-token-mean":
            per_seq = per_seq / tokens.clamp(min=1.0)
        total = per_seq.sum()
        default = (tokens > 0).sum().to(per_token.dtype)
    if normalizer is None:
        normalizer = default.clamp(min=1.0)
    return total / normalizer
