"""The training loss as a module: one forward of the policy over a micro-batch, then every
term of the objective computed from the hidden states through the LM head in chunks.

Running the loss inside ``forward`` lets accelerate wrap this module (DDP, FSDP, ZeRO-3):
parameters are gathered and gradient hooks armed exactly as for an ordinary forward."""

from __future__ import annotations

import torch

from sgpo.compat import maybe_gather_lm_head_ctx
from sgpo.core import (
    LossSettings,
    clipped_policy_loss,
    distill_loss_from_hidden,
    luffy_offpolicy_loss,
    nll_loss,
    token_logprobs_from_hidden,
)
from sgpo.trainer.batch import MicroBatch
from sgpo.trainer.rollouts import base_and_head


class PolicyLoss(torch.nn.Module):
    """The policy ``lm`` with the objective set by ``settings``; ``temperature`` is the sampling
    temperature (log-probs of every term are taken at it), ``chunk_size`` the LM-head chunk."""

    def __init__(self, lm: torch.nn.Module, settings: LossSettings, *, temperature: float, chunk_size: int):
        super().__init__()
        self.lm = lm
        self.settings = settings
        self.temperature = temperature
        self.chunk_size = chunk_size

    # generation helpers (TRL's unwrap_model_for_generation) toggle checkpointing through these
    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.lm, "is_gradient_checkpointing", False))

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.lm.gradient_checkpointing_disable()

    def forward(self, mb: MicroBatch, normalizer: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of this micro-batch with every token term divided by ``normalizer`` (the token
        count of the whole update across processes), so micro-batches and processes add up
        to the whole-batch token mean."""
        s = self.settings
        base, head = base_and_head(self.lm)
        hidden = base(input_ids=mb.input_ids, attention_mask=mb.attention_mask).last_hidden_state  # [n, L, H]
        h = hidden[mb.rows, mb.positions]  # [M, H]
        loss = h.new_zeros((), dtype=torch.float32)
        metrics: dict[str, torch.Tensor] = {}
        weight, bias = head.weight, getattr(head, "bias", None)
        with maybe_gather_lm_head_ctx(weight, bias):
            logp = self._sampled_logprobs(mb, h, weight, bias)  # role -> [M_role]
            if "rl" in logp:
                old = mb.old_logp.get("rl")
                old = logp["rl"].detach() if old is None else old
                per_tok, m = clipped_policy_loss(logp["rl"][:, None], old[:, None], mb.advantage["rl"],
                                                 torch.ones_like(old[:, None]), s.eps_low, s.eps_high)
                term = per_tok.sum() / normalizer
                loss = loss + term
                metrics.update({"loss/rl": term.detach(), **{f"rl/{k}": v for k, v in m.items()}})
            if "offpolicy" in logp:
                per_tok = luffy_offpolicy_loss(logp["offpolicy"][:, None], mb.advantage["offpolicy"],
                                               torch.ones_like(logp["offpolicy"][:, None]), s.luffy_gamma)
                term = per_tok.sum() / normalizer
                loss = loss + term
                metrics["loss/offpolicy"] = term.detach()
            if "nll" in logp:
                per_tok = nll_loss(logp["nll"], torch.ones_like(logp["nll"]))
                term = (per_tok * mb.weight["nll"]).sum() / normalizer
                loss = loss + term
                metrics["loss/nll"] = term.detach()
            if "distill" in mb.index:
                term, m = self._distill(mb, h, weight, bias, normalizer)
                loss = loss + term
                metrics.update({"loss/distill": term.detach(), **{f"distill/{k}": v for k, v in m.items()}})
        metrics["loss"] = loss.detach()
        return loss, metrics

    def _sampled_logprobs(self, mb: MicroBatch, h: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Sampled-token log-probs of every non-distill role, in one chunked LM-head pass."""
        roles = [r for r in ("rl", "offpolicy", "nll") if r in mb.index]
        if not roles:
            return {}
        idx = torch.cat([mb.index[r] for r in roles])
        lp = token_logprobs_from_hidden(h[idx], weight, mb.targets[idx], lm_head_bias=bias,
                                        temperature=self.temperature, chunk_size=self.chunk_size)
        return dict(zip(roles, lp.split([len(mb.index[r]) for r in roles])))

    def _distill(self, mb: MicroBatch, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 normalizer: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.settings
        idx = mb.index["distill"]
        coef = s.distill_coef * mb.weight["distill"] / normalizer  # [M_d]
        return distill_loss_from_hidden(
            h[idx], weight, mb.support_ids, mb.teacher_lp, coef,
            sampled_ids=mb.targets[idx], old_logp=mb.old_logp.get("distill"),
            teacher_logp_sampled=mb.teacher_lp_sampled, old_support_logprobs=mb.old_support_lp,
            settings=s, lm_head_bias=bias, temperature=self.temperature, chunk_size=self.chunk_size,
        )
