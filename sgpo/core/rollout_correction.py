"""Truncated importance sampling for the rollout engine's mismatch.

An inference engine (vLLM) samples from pi_rollout, its own numerics of the policy, while the
loss takes the trainer's log-probs pi_old of the same tokens at rollout time as the behaviour
policy. The two differ (kernels, precision, batch shapes), so "on-policy" RL on engine rollouts
is quietly off-policy. The correction weights each loss token by the ratio
rho = pi_old / pi_rollout, truncated or masked where it is large (TRL's
``vllm_importance_sampling_*``, verl's rollout correction):

- granularity: ``token_*`` rho_t = exp(log pi_old(y_t) - log pi_rollout(y_t)) per token;
  ``sequence_*`` one rho = exp(sum_t ...) over the sequence's loss tokens, on all of them;
- constraint: ``*_truncate`` clamps rho to [min, max]; ``*_mask`` sets it to 0 outside;
- ``none``: weight 1 (the mismatch is still measured).

A token the engine could not score (log-prob NaN) counts as no mismatch (log-ratio 0), as in TRL.
"""

from __future__ import annotations

import torch

ROLLOUT_IS_MODES = ("sequence_mask", "sequence_truncate", "token_mask", "token_truncate", "none")


@torch.no_grad()
def rollout_is_weights(
    old_logp: torch.Tensor,  # [M] log pi_old(y_t) of the packed loss tokens: the trainer's, at rollout time
    rollout_logp: torch.Tensor,  # [M] log pi_rollout(y_t): the engine's, NaN where it gave none
    seq: torch.Tensor,  # [M] each token's sequence (equal = same sequence), as in sgpo.core.aggregate
    mode: str,
    max_ratio: float,
    min_ratio: float = 0.0,  # 0: no lower bound (rho >= 0)
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token weights rho_t [M] of the policy-gradient term (``PackedTokens.pg_weight``) and
    per-token metrics (detached; their means are logged): ``is_ratio`` [M] the weight applied,
    ``is_masked`` [M] 1 where rho fell outside [min, max] (zeroed by ``*_mask``, clamped by
    ``*_truncate``), ``logprob_abs_diff`` [M_scored] |log pi_old - log pi_rollout| at the tokens
    the engine scored."""
    if mode not in ROLLOUT_IS_MODES:
        raise ValueError(f"unknown rollout correction '{mode}' (expected one of {', '.join(ROLLOUT_IS_MODES)})")
    scored = ~torch.isnan(rollout_logp)  # [M]
    diff = torch.where(scored, old_logp.float() - rollout_logp.float(), torch.zeros_like(old_logp, dtype=torch.float32))
    if mode == "none":
        ratio, outside = torch.ones_like(diff), torch.zeros_like(scored)
    else:
        log_ratio = diff
        if mode.startswith("sequence") and seq.numel():  # one log-ratio per sequence, on all its tokens
            _, inverse = torch.unique(seq, return_inverse=True)
            log_ratio = torch.zeros(int(inverse.max()) + 1, dtype=diff.dtype, device=diff.device).index_add_(
                0, inverse, diff)[inverse]
        ratio = log_ratio.exp()
        outside = (ratio < min_ratio) | (ratio > max_ratio)
        ratio = ratio.clamp(min_ratio, max_ratio) if mode.endswith("truncate") else ratio.masked_fill(outside, 0.0)
    return ratio, {"is_ratio": ratio, "is_masked": outside.float(), "logprob_abs_diff": diff[scored].abs()}
