"""What the learning-curve probe measures besides unguided accuracy (the proximal-stability
dial of the strategy-world claims): the guided probe's problems, fixed training problems with
their strategies, and the policy's drift from the initial model on the probe's own completions.

The drift is ``probe/kl_initial``, the mean over the unguided probe's completion tokens of the
exact next-token KL(pi_theta(.|x, y<t) || pi_init(.|x, y<t)) over the full vocabulary, both at
``algorithm.temperature`` (the distribution every loss term uses). The policy comes first: the
direction of a KL penalty to a reference model. It is a sample estimate over states: the
contexts (x, y<t) are the probe's samples (``eval.probe_temperature``, ``eval.probe_top_p``),
the sum over the vocabulary at each of them is exact (:func:`sgpo.core.policy_kl_from_hidden`)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Sequence

import torch

from sgpo.core import policy_kl_from_hidden
from sgpo.data import Problem
from sgpo.generation import Completion, Generator, Prompt, SamplingConfig, encode_prompts
from sgpo.lora import adapter_disabled
from sgpo.trainer.batch import pack_rows
from sgpo.trainer.forward import base_and_head, packed_hidden


def guided_probe_rows(problems: Sequence[Problem], n: int) -> list[dict[str, Any]]:
    """The first ``n`` training problems that have a strategy, as evaluation rows with it: the
    evaluation renders them with :meth:`sgpo.prompts.PromptStyle.render`, the function that
    renders the guided rollouts' prompts (:func:`sgpo.trainer.rollouts.render_prompts`)."""
    with_strategy = [p for p in problems if p.strategy is not None][:n]
    if n and not with_strategy:
        raise ValueError(f"eval.probe_guided_problems = {n}, but no training problem has a strategy")
    return [{"id": p.id, "problem": p.problem, "answer": p.answer, "strategy": p.strategy} for p in with_strategy]


class RecordingGenerator:
    """A generator that keeps the (prompt ids, completion ids) of every sample it returns, so
    the probe's completions can be scored again token by token; samples exactly as ``inner``."""

    def __init__(self, inner: Generator, tokenizer: Any):
        self.inner, self.tokenizer = inner, tokenizer
        self.pairs: list[tuple[list[int], list[int]]] = []

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig, n: int | Sequence[int] = 1,
                 **kwargs: Any) -> list[list[Completion]]:
        out = self.inner.generate(prompts, sampling, n=n, **kwargs)
        for ids, group in zip(encode_prompts(self.tokenizer, prompts), out):
            self.pairs += [(ids, list(c.token_ids)) for c in group]
        return out


@torch.no_grad()
def kl_to_reference(policy: Any, reference: Any, pairs: Sequence[tuple[list[int], list[int]]], *, pad_id: int,
                    batch_size: int, chunk_size: int, temperature: float,
                    reference_adapter_off: bool = False) -> tuple[float, int]:
    """Sum over every completion token of ``pairs`` of KL(pi_policy || pi_reference) at that
    position, and the token count. ``reference_adapter_off``: the reference is ``policy`` itself
    with its LoRA adapter switched off (the initial model under LoRA)."""
    base, head = base_and_head(policy)
    ref_base, ref_head = base_and_head(reference)
    device = next(policy.parameters()).device
    pairs = [(p, c) for p, c in pairs if c]
    total, count = 0.0, 0
    was_training = policy.training
    policy.eval()  # LoRA dropout off, as in the rollouts
    try:
        for s in range(0, len(pairs), batch_size):
            part = pairs[s:s + batch_size]
            ids, mask, rows, positions, _ = pack_rows([p for p, _ in part], [c for _, c in part], pad_id, device)
            h = packed_hidden(base, ids, mask, rows, positions)  # [M, H]
            with adapter_disabled(reference) if reference_adapter_off else nullcontext():
                h_ref = packed_hidden(ref_base, ids, mask, rows, positions)  # [M, H]
            kl = policy_kl_from_hidden(h, head.weight, h_ref, ref_head.weight, lm_head_bias=getattr(head, "bias", None),
                                       ref_lm_head_bias=getattr(ref_head, "bias", None), temperature=temperature,
                                       chunk_size=chunk_size)  # [M]
            total += float(kl.double().sum())
            count += kl.numel()
    finally:
        policy.train(was_training)
    return total, count
