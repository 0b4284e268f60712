"""The training objective as one function: :func:`policy_objective`.

For a micro-batch of packed tokens (every completion token of its sequences laid end to end,
[M]) and the hidden states that predict them ([M, H]), the loss is the sum of four terms, each
aggregated with the same per-token weights a_t (:func:`sgpo.core.aggregate.aggregation_weights`,
``loss.aggregation``; a_t = 1/N for the default token mean):

    L = sum_{t in rl}       a_t * beta * rho_t * -min(r_t A_t, clip(r_t, 1 - eps_low, 1 + eps_high) A_t)
      + sum_{t in offpolicy} a_t * -A_t f(pi_theta(y_t)),   f(p) = p / (p + gamma)       (LUFFY)
      + sum_{t in nll}      a_t * c_t * -log pi_theta(y_t)                              (SFT, imitation)
      + sum_{t in distill}  a_t * lambda w_t m_t l_t                                    (SGPO)

with r_t = pi_theta(y_t) / pi_old(y_t), beta the weight of the RL term (``loss.rl_coef``; 0
switches RL off and keeps the graph, so the gradient is exactly that of the other terms), rho_t
an optional per-token weight of the policy-gradient term (``pg_weight``: 1 unless given, e.g. a
truncated importance-sampling correction; 0 masks a token), c_t = lambda w_t for guided trajectories (imitation) and 1
otherwise, l_t the divergence to the teacher over its top-k support plus a tail bucket and
m_t the proximal mask (:mod:`sgpo.core.proximal`). Sampled-token log-probs of every role
come from one chunked LM-head pass (:func:`sgpo.core.chunked.token_logprobs_from_hidden`), the
distillation term from the fused chunked loss (:func:`sgpo.core.chunked.distill_loss_from_hidden`),
so no more than [chunk_size, V] logits exist at once."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sgpo.core.aggregate import aggregation_weights
from sgpo.core.chunked import distill_loss_from_hidden, token_logprobs_from_hidden
from sgpo.core.distill import compute_dtype
from sgpo.core.policy import clipped_policy_loss, luffy_offpolicy_loss, nll_loss
from sgpo.core.settings import LossSettings

ROLES = ("rl", "offpolicy", "nll", "distill")  # the loss role of a sequence: which term its tokens feed
SAMPLED_ROLES = ("rl", "offpolicy", "nll")  # terms on the sampled token's log-prob


@dataclass
class PackedTokens:
    """The loss tokens of a micro-batch, packed: M completion tokens of its sequences in order.
    Per-token tensors are [M]; the teacher's tensors cover the distilled tokens only ([M_d])."""

    targets: torch.Tensor  # [M] the token each hidden state predicts (sampled, or the given response)
    seq: torch.Tensor  # [M] the token's sequence within the micro-batch (for the sequence-level aggregations)
    index: dict[str, torch.Tensor] = field(default_factory=dict)  # role -> [M_role] positions into M
    advantage: torch.Tensor | None = None  # [M] A of the token's sequence (rl, offpolicy; 0 elsewhere)
    weight: torch.Tensor | None = None  # [M] instance weight w_i (distill, imitation), 1 elsewhere
    guided: torch.Tensor | None = None  # [M] bool: a guided trajectory's token, scaled by lambda (distill, imitation)
    old_logp: torch.Tensor | None = None  # [M] log pi_old(y_t) at rollout time; None: the current policy's
    pg_weight: torch.Tensor | None = None  # [M] per-token weight rho_t of the RL term; None: 1
    support_ids: torch.Tensor | None = None  # [M_d, K] teacher top-k ids
    teacher_logp: torch.Tensor | None = None  # [M_d, K] teacher log-probs on the support
    teacher_logp_sampled: torch.Tensor | None = None  # [M_d] teacher log-prob of the sampled token
    old_support_logp: torch.Tensor | None = None  # [M_d, K] pi_old on the support (C1/C3, several updates)

    def at(self, t: torch.Tensor | None, role: str) -> torch.Tensor | None:
        return None if t is None else t[self.index[role]]


def policy_objective(
    hidden: torch.Tensor,  # [M, H] hidden states predicting the packed tokens
    lm_head_weight: torch.Tensor,  # [V, H]
    tokens: PackedTokens,
    settings: LossSettings,
    *,
    normalizer: float,  # N of the whole update: tokens (token-mean) or sequences (seq- modes)
    lm_head_bias: torch.Tensor | None = None,  # [V]
    temperature: float = 1.0,
    chunk_size: int = 1024,
    fixed_length: int = 0,  # L of seq-mean-token-sum
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one micro-batch (module docstring) and its metrics: ``loss``, each term
    ``loss/<role>`` present, ``rl/*`` clip statistics and ``distill/*`` (per-token divergence,
    masked share)."""
    s = settings
    dtype = compute_dtype(hidden.dtype)  # float32 for bf16/fp16/fp32, float64 stays float64
    a = aggregation_weights(tokens.seq, s.aggregation, normalizer, fixed_length, dtype=dtype)  # [M] a_t
    loss = hidden.new_zeros((), dtype=dtype)
    metrics: dict[str, torch.Tensor] = {}
    coef = a if tokens.weight is None else a * tokens.weight.to(dtype)  # [M] a_t w_t, then lambda where guided
    if tokens.guided is not None:
        coef = torch.where(tokens.guided, coef * s.distill_coef, coef)
    logp = _sampled_logprobs(hidden, lm_head_weight, lm_head_bias, tokens, temperature, chunk_size)  # role -> [M_r]
    if "rl" in logp:
        old = tokens.at(tokens.old_logp, "rl")
        old = logp["rl"].detach() if old is None else old
        per_tok, m = clipped_policy_loss(logp["rl"], old, tokens.at(tokens.advantage, "rl"), None, s.eps_low, s.eps_high)
        rho = tokens.at(tokens.pg_weight, "rl")
        term = s.rl_coef * (per_tok * (a[tokens.index["rl"]] if rho is None else a[tokens.index["rl"]] * rho)).sum()
        loss = loss + term
        metrics.update({"loss/rl": term.detach(), **{f"rl/{k}": v for k, v in m.items()}})
    if "offpolicy" in logp:
        per_tok = luffy_offpolicy_loss(logp["offpolicy"], tokens.at(tokens.advantage, "offpolicy"), None, s.luffy_gamma)
        term = (per_tok * a[tokens.index["offpolicy"]]).sum()
        loss = loss + term
        metrics["loss/offpolicy"] = term.detach()
    if "nll" in logp:
        term = (nll_loss(logp["nll"]) * coef[tokens.index["nll"]]).sum()
        loss = loss + term
        metrics["loss/nll"] = term.detach()
    if "distill" in tokens.index:
        idx = tokens.index["distill"]
        term, m = distill_loss_from_hidden(
            hidden[idx], lm_head_weight, tokens.support_ids, tokens.teacher_logp, coef[idx],
            sampled_ids=tokens.targets[idx], old_logp=tokens.at(tokens.old_logp, "distill"),
            teacher_logp_sampled=tokens.teacher_logp_sampled, old_support_logp=tokens.old_support_logp,
            settings=s, lm_head_bias=lm_head_bias, temperature=temperature, chunk_size=chunk_size)
        loss = loss + term
        metrics.update({"loss/distill": term.detach(), **{f"distill/{k}": v for k, v in m.items()}})
    metrics["loss"] = loss.detach()
    return loss, metrics


def _sampled_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tokens: PackedTokens,
                      temperature: float, chunk_size: int) -> dict[str, torch.Tensor]:
    """Sampled-token log-probs of every non-distill role, in one chunked LM-head pass."""
    roles = [r for r in SAMPLED_ROLES if r in tokens.index]
    if not roles:
        return {}
    idx = torch.cat([tokens.index[r] for r in roles])
    lp = token_logprobs_from_hidden(hidden[idx], weight, tokens.targets[idx], lm_head_bias=bias,
                                    temperature=temperature, chunk_size=chunk_size)
    return dict(zip(roles, lp.split([len(tokens.index[r]) for r in roles])))
