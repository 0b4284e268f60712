"""Turning per-token losses into one scalar: the one aggregator of every term of the objective.

Every loss in sgpo.core returns per-token values over the packed tokens of a batch ([M], the
completion tokens of several sequences laid end to end, ``seq`` [M] naming each token's
sequence); how they are averaged is a separate, explicit choice (``loss.aggregation``):

- ``token-mean``: ``sum_t l_t / N``, N the number of tokens (GRPO/DAPO's token mean).
- ``seq-mean-token-mean``: ``sum_i (sum_{t in i} l_t / |i|) / N``, N the number of sequences
  (the original GRPO).
- ``seq-mean-token-sum``: ``sum_i (sum_{t in i} l_t) / (N L)``, N the number of sequences and L a
  fixed length (Dr. GRPO; LUFFY's on-policy script): no division by a sequence's own length.

Each mode is a per-token weight a_t (:func:`aggregation_weights`) and every term is
``sum_t a_t c_t l_t``. The trainer passes a *global* N (the count over the whole update,
every micro-batch and process), so summing micro-batch losses reproduces the whole-batch loss
exactly, whatever the micro-batch size.
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


def check_aggregation(mode: str, fixed_length: int) -> None:
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {AGGREGATION_MODES}")
    if mode == "seq-mean-token-sum" and fixed_length < 1:
        raise ValueError(f"aggregation 'seq-mean-token-sum' needs a fixed length L >= 1, got {fixed_length}")


def aggregation_weights(
    seq: torch.Tensor,  # [M] sequence index of each token (any integers; equal = same sequence)
    mode: str = "token-mean",
    normalizer: float | torch.Tensor | None = None,
    fixed_length: int = 0,  # L of seq-mean-token-sum
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:  # [M] a_t
    """Per-token weights a_t with ``sum_t a_t l_t`` the aggregated loss (see the module).

    ``normalizer`` counts tokens (token-mean) or sequences (the seq- modes); by default this
    batch's own count (at least 1)."""
    check_aggregation(mode, fixed_length)
    m = seq.shape[0]
    if mode == "token-mean":
        n = float(m) if normalizer is None else normalizer
        return torch.full((m,), 1.0, dtype=dtype, device=seq.device) / max_one(n)
    _, inverse, counts = torch.unique(seq, return_inverse=True, return_counts=True)  # [S] tokens per sequence
    n = float(counts.numel()) if normalizer is None else normalizer
    if mode == "seq-mean-token-mean":
        per_token = 1.0 / counts.to(dtype)[inverse]  # [M] 1 / |i|
    else:
        per_token = torch.full((m,), 1.0 / fixed_length, dtype=dtype, device=seq.device)
    return per_token / max_one(n)


def max_one(n: float | torch.Tensor) -> float | torch.Tensor:
    return n.clamp(min=1.0) if torch.is_tensor(n) else max(float(n), 1.0)


def aggregate(
    per_token: torch.Tensor,  # [M]
    seq: torch.Tensor,  # [M]
    mode: str = "token-mean",
    normalizer: float | torch.Tensor | None = None,
    fixed_length: int = 0,
) -> torch.Tensor:  # scalar
    """``sum_t a_t l_t`` with a_t from :func:`aggregation_weights`."""
    a = aggregation_weights(seq, mode, normalizer, fixed_length, dtype=per_token.dtype)
    return (per_token * a).sum()
