"""The knobs of the training objective, defined once.

:class:`LossSettings` is the ``loss:`` section of the training config (``--set loss.tau=0.1``),
the object :class:`sgpo.trainer.loss.PolicyLoss` holds and what the objective of the core
(:func:`sgpo.core.objective.policy_objective`) and its distillation functions take. Every
default below is the only place that default is written down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

NORMALIZERS = ("rl", "all")


@dataclass(frozen=True)
class LossSettings:
    """The knobs of the objective (the ``loss:`` section of the training config)."""

    # RL term: DAPO clipped surrogate, ratio clipped to [1 - eps_low, 1 + eps_high]
    eps_low: float = 0.2  # lower clip of the importance ratio
    eps_high: float = 0.28  # upper clip of the importance ratio (DAPO's clip-higher)
    # weight of the clipped RL term (every RL token: autonomous rollouts, guided_rl's guided ones,
    # LUFFY's on-policy ones); 0 = RL off, the distillation-only control (the normaliser is unchanged)
    rl_coef: float = 1.0
    # distillation term: lambda * (1/N) * sum_i w_i sum_t m_t l_t
    distill_coef: float = 1.0  # lambda, the weight of the distillation term
    divergence: str = "forward"  # l_t: forward KL(p||q) | reverse KL(q||p) | jsd
    jsd_beta: float = 0.5  # JSD mixture weight beta (divergence: jsd); 0.5 is the symmetric JSD
    proximal: str = "c2"  # proximal constraint: c2 (trust-region mask) | c1 (PSFT clip) | c3 (clipped teacher) | none
    tau: float = math.log(1.28)  # C2: a token is masked once it moved more than tau (log-prob) toward the teacher
    c1_eps: float = 0.28  # C1: ratio cap 1 + c1_eps of the soft-target clip
    c3_clip: float = math.log(2.0)  # C3: clip c of the teacher/old log-ratio
    luffy_gamma: float = 0.1  # LUFFY: off-policy shaping f(p) = p / (p + gamma)
    # token normaliser N of every term: rl = tokens of the RL terms (autonomous rollouts, LUFFY's
    # traces), so the RL gradient is GRPO's whatever is distilled; all = every loss token (RL +
    # distilled guided). Updates without RL tokens (sft) use all tokens either way.
    normalizer: str = "rl"
    # how per-token losses become one number (sgpo.core.aggregate): token-mean (sum / tokens) |
    # seq-mean-token-mean (each sequence's token mean, summed / sequences) | seq-mean-token-sum
    # (each sequence's token sum, summed / (sequences x aggregation_length): Dr. GRPO, LUFFY's
    # on-policy script). Tokens and sequences are those loss.normalizer counts.
    aggregation: str = "token-mean"
    aggregation_length: int = 0  # seq-mean-token-sum: the fixed length L; 0 = algorithm.max_new_tokens
    # correction of the RL term for the rollout engine's mismatch (engines that report sampled-token
    # log-probs: vLLM), weight rho = pi_old / pi_rollout per token (sgpo.core.rollout_correction):
    # sequence_mask (TRL's default) | sequence_truncate | token_mask | token_truncate | none
    rollout_is: str = "sequence_mask"
    rollout_is_max: float = 3.0  # cap C_max on rho: *_truncate clamps to it, *_mask zeroes above it (TRL's 3)
    rollout_is_min: float = 0.0  # floor C_min on rho: clamped up to (*_truncate) or zeroed below (*_mask); 0 = none
