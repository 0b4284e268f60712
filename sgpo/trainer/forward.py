"""The policy's forward up to the LM head, shared by the loss (with gradient) and the
rollout-time quantities (teacher targets, old log-probs; without): the decoder stack's hidden
states at the positions that predict each packed completion token."""

from __future__ import annotations

from typing import Any

import torch

from sgpo.lora import base_model



def base_and_head(lm: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder stack (returns hidden states) and the LM head of a causal LM (under a peft
    wrapper: of the model whose layers carry the adapter)."""
    lm = base_model(lm)
    if getattr(lm.config, "final_logit_softcapping", None) or getattr(lm.config, "logit_scale", None):
        raise NotImplementedError("models that rescale logits after the LM head are not supported yet")
    return getattr(lm, lm.base_model_prefix), lm.get_output_embeddings()


def packed_hidden(base: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
                  positions: torch.Tensor) -> torch.Tensor:  # [M, H]
    """Hidden states of rows [n, L] at the M (row, position) pairs that predict the packed
    completion tokens (position t predicts token t+1; :func:`sgpo.trainer.batch.pack_rows`)."""
    hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [n, L, H]
    return hidden[rows, positions]
