"""The training loss as a module: one forward of the policy over a micro-batch, then the
objective of the core (:func:`sgpo.core.objective.policy_objective`) on the hidden states.

Running the loss inside ``forward`` lets accelerate wrap this module (DDP, FSDP, ZeRO-3):
parameters are gathered and gradient hooks armed exactly as for an ordinary forward."""

from __future__ import annotations

import torch

from sgpo.compat import maybe_gather_lm_head_ctx
from sgpo.core import LossSettings
from sgpo.core.objective import policy_objective
from sgpo.trainer.batch import MicroBatch
from sgpo.trainer.forward import base_and_head, packed_hidden, shared_prompt_hidden


class PolicyLoss(torch.nn.Module):
    """The policy ``lm`` with the objective set by ``settings``; ``temperature`` is the sampling
    temperature (log-probs of every term are taken at it), ``chunk_size`` the LM-head chunk,
    ``fixed_length`` the L of ``loss.aggregation: seq-mean-token-sum``."""

    def __init__(self, lm: torch.nn.Module, settings: LossSettings, *, temperature: float, chunk_size: int,
                 fixed_length: int = 0):
        super().__init__()
        self.lm = lm
        self.settings = settings
        self.temperature = temperature
        self.chunk_size = chunk_size
        self.fixed_length = fixed_length

    # generation helpers (TRL's unwrap_model_for_generation) toggle checkpointing through these
    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.lm, "is_gradient_checkpointing", False))

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.lm.gradient_checkpointing_disable()

    def forward(self, mb: MicroBatch, normalizer: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of this micro-batch, every term aggregated against ``normalizer`` (the count of
        the whole update across processes), so micro-batches and processes add up to the
        whole-batch loss."""
        base, head = base_and_head(self.lm)
        if mb.shared is not None:  # each distinct prompt once (system.share_prompt_forward)
            h = shared_prompt_hidden(base, mb.shared, mb.rows)  # [M, H]
        else:
            h = packed_hidden(base, mb.input_ids, mb.attention_mask, mb.rows, mb.positions)  # [M, H]
        weight, bias = head.weight, getattr(head, "bias", None)
        with maybe_gather_lm_head_ctx(weight, bias):
            return policy_objective(h, weight, mb.tokens, self.settings, normalizer=normalizer, lm_head_bias=bias,
                                    temperature=self.temperature, chunk_size=self.chunk_size,
                                    fixed_length=self.fixed_length)
