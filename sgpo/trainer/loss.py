"""The training loss as a module: one forward of the policy over a micro-batch, then every
term of the objective computed from the hidden states through the LM head in chunks.

Running the loss inside ``forward`` lets accelerate wrap this module (DDP, FSDP, ZeRO-3):
parameters are gathered and gradient hooks armed exactly as for an ordinary forward."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sgpo.compat import maybe_gather_lm_head_ctx
from sgpo.core import (
    clipped_policy_loss,
    distill_loss_from_hidden,
    luffy_offpolicy_loss,
    nll_loss,
    token_logprobs_from_hidden,
)
from sgpo.trainer.batch import MicroBatch
from sgpo.trainer.rollouts import base_and_head


@dataclass(frozen=True)
class LossSettings:
    """The knobs of the objective (copied from AlgorithmConfig and the chunk size)."""

    eps_low: float = 0.2
    eps_high: float = 0.28
    distill_coef: float = 1.0
    divergence: str = "forward"
    proximal: str = "c2"
    tau: float = 0.2468600779315258  # log 1.28
    c1_eps: float = 0.28
    c3_clip: float = 0.6931471805599453  # log 2
    jsd_beta: float = 0.5
    luffy_gamma: float = 0.1
    temperature: float = 1.0
    chunk_size: int = 1024


class PolicyLoss(torch.nn.Module):
    def __init__(self, lm: torch.nn.Module, settings: LossSettings):
        super().__init__()
        self.lm = lm
        self.settings = settings

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
                                        temperature=self.settings.temperature, chunk_size=self.settings.chunk_size)
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
            divergence=s.divergence, proximal=s.proximal, tau=s.tau, c1_eps=s.c1_eps, c3_clip=s.c3_clip,
            jsd_beta=s.jsd_beta, lm_head_bias=bias, temperature=s.temperature, chunk_size=s.chunk_size,
        )
