"""The pure algorithmic core of SGPO: advantages, instance weights, policy losses, divergences,
proximal constraints, loss aggregation, the rollout-engine importance-sampling correction, the chunked LM-head engine, the objective as one
function (:func:`policy_objective`) and the one definition of its knobs (:class:`LossSettings`).

Imports only torch and the standard library; trainers, CLIs and I/O call into it, never the
other way round (tests/test_core_imports.py checks this in a fresh interpreter)."""

from sgpo.core.advantages import ADVANTAGE_SCALES, group_advantages
from sgpo.core.aggregate import AGGREGATION_MODES, aggregate, aggregation_weights, masked_mean
from sgpo.core.chunked import (
    HeadLogprobs,
    distill_loss_from_hidden,
    distill_loss_reference,
    head_logprobs,
    policy_kl_from_hidden,
    token_logprobs_from_hidden,
    token_logprobs_reference,
)
from sgpo.core.distill import (
    DIVERGENCES,
    bucket_divergence,
    compute_dtype,
    forward_kl,
    jsd,
    reverse_kl,
    support_logprobs,
    teacher_support,
    teacher_targets_from_logits,
    teacher_topk,
)
from sgpo.core.objective import ROLES, PackedTokens, policy_objective
from sgpo.core.policy import clipped_policy_loss, luffy_offpolicy_loss, nll_loss
from sgpo.core.proximal import (
    PROXIMAL_MODES,
    c2_trust_mask,
    clipped_teacher,
    distill_token_loss,
    psft_clip_loss,
)
from sgpo.core.rollout_correction import ROLLOUT_IS_MODES, rollout_is_weights
from sgpo.core.settings import NORMALIZERS, LossSettings
from sgpo.core.weights import WEIGHT_MODES, instance_weights, update_competence

__all__ = [
    "ADVANTAGE_SCALES",
    "AGGREGATION_MODES",
    "HeadLogprobs",
    "PackedTokens",
    "ROLES",
    "DIVERGENCES",
    "PROXIMAL_MODES",
    "ROLLOUT_IS_MODES",
    "WEIGHT_MODES",
    "LossSettings",
    "NORMALIZERS",
    "aggregate",
    "aggregation_weights",
    "bucket_divergence",
    "c2_trust_mask",
    "clipped_policy_loss",
    "clipped_teacher",
    "compute_dtype",
    "distill_loss_from_hidden",
    "distill_loss_reference",
    "distill_token_loss",
    "forward_kl",
    "group_advantages",
    "head_logprobs",
    "instance_weights",
    "jsd",
    "luffy_offpolicy_loss",
    "masked_mean",
    "nll_loss",
    "policy_kl_from_hidden",
    "policy_objective",
    "psft_clip_loss",
    "reverse_kl",
    "rollout_is_weights",
    "support_logprobs",
    "teacher_support",
    "teacher_targets_from_logits",
    "teacher_topk",
    "token_logprobs_from_hidden",
    "token_logprobs_reference",
    "update_competence",
]
