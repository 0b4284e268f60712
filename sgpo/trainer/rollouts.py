"""Rollout-time work: render and encode prompts, sample groups, and compute the no-gradient
quantities the losses need (teacher top-k targets from the strategy-conditioned context, old
log-probs).
The teacher targets and old log-probs run under ``torch.no_grad`` on the unwrapped policy,
through the core's LM-head engine (:func:`sgpo.core.head_logprobs`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from sgpo import prompts
from sgpo.core import HeadLogprobs, head_logprobs
from sgpo.data import Problem
from sgpo.generation import Completion, Generator, SamplingConfig, encode_prompts  # noqa: F401  (re-exported)
from sgpo.trainer.batch import pack_rows
from sgpo.trainer.forward import base_and_head, packed_hidden


@dataclass
class TokenTargets:
    """Per-token distillation targets of one trajectory (T completion tokens)."""

    support_ids: torch.Tensor  # [T, K] teacher top-k ids (K = V for the full vocabulary)
    teacher_logp: torch.Tensor  # [T, K] teacher log-probs on the support (normalised over V)
    teacher_logp_sampled: torch.Tensor  # [T] teacher log-prob of the sampled token


def render_prompts(tokenizer: Any, problems: Sequence[Problem], guided: bool,
                   style: prompts.PromptStyle = prompts.PromptStyle()) -> list[str]:
    return [style.render(tokenizer, p.problem, p.strategy if guided else None) for p in problems]


def generate_groups(generator: Generator, requests: list[tuple[list[list[int]], int]],
                    sampling: SamplingConfig, keep_targets: Sequence[bool] = (),
                    top_k: int = 0) -> list[list[list[Completion]]]:
    """Sample several sets of prompts, each with its own group size, in ONE generation call
    (autonomous and guided rollouts share batches). ``requests``: (prompt token ids, n); the
    generator gets the ids the losses score, not text it would tokenize again. Returns per
    request completions[b][g] with b < len(prompts), g < n. ``keep_targets[r]``: ask a
    generator that can (``keeps_context_targets``) for request r's top-``top_k`` targets in
    the sampling context (``Completion.context_targets``)."""
    prompts = [p for ps, _ in requests for p in ps]
    ns = [n for ps, n in requests for _ in ps]
    keep = [k for (ps, _), k in zip(requests, list(keep_targets) + [False] * len(requests)) for _ in ps]
    kw: dict[str, Any] = {}
    if any(keep) and getattr(generator, "keeps_context_targets", False):
        kw = {"keep_targets": keep, "top_k": top_k}
    flat = generator.generate(prompts, sampling, n=ns, **kw) if prompts else []
    out, start = [], 0
    for ts, _ in requests:
        out.append(flat[start:start + len(ts)])
        start += len(ts)
    return out


def group_rewards(flat: list[float], groups: list[list[Completion]], width: int) -> torch.Tensor:
    """Rewards [B, width] of completions[b][g] from ``flat`` (their rewards in row-major
    order); rows with fewer samples (no strategy) are 0-padded."""
    out = torch.zeros(len(groups), width)
    it = iter(flat)
    for b, group in enumerate(groups):
        for g in range(len(group)):
            out[b, g] = next(it)
    return out


@torch.no_grad()
def _head_passes(lm: Any, prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int,
                 batch_size: int, chunk_size: int, temperature: float, top_k: int | None = None,
                 support_ids: list[torch.Tensor | None] | None = None) -> list[HeadLogprobs]:
    """Per sequence (in order) the no-gradient LM-head log-probs of its completion tokens in
    the context ``prompt_ids``: ``batch_size`` sequences per forward, their tokens packed and
    run through :func:`sgpo.core.head_logprobs` (the one chunked LM-head engine)."""
    base, head = base_and_head(lm)
    device = next(lm.parameters()).device
    weight, bias = head.weight, getattr(head, "bias", None)
    out: list[HeadLogprobs] = []
    for s in range(0, len(prompt_ids), batch_size):
        prompts, comps = prompt_ids[s:s + batch_size], completion_ids[s:s + batch_size]
        ids, mask, rows, positions, targets = pack_rows(prompts, comps, pad_id, device)
        h = packed_hidden(base, ids, mask, rows, positions)  # [M, H]
        sup = None
        if support_ids is not None and all(x is not None for x in support_ids[s:s + batch_size]):
            sup = torch.cat([x.to(device) for x in support_ids[s:s + batch_size]])  # [M, K]
        res = head_logprobs(h, weight, targets, top_k=top_k, support_ids=sup, lm_head_bias=bias,
                            temperature=temperature, chunk_size=chunk_size)
        sizes = [len(c) for c in comps]
        cut = lambda t: [None] * len(sizes) if t is None else t.split(sizes)  # noqa: E731
        out += [HeadLogprobs(lp, si, sl) for lp, si, sl in zip(res.logp.split(sizes), cut(res.support_ids),
                                                             cut(res.support_logp))]
    return out


def teacher_targets(lm: Any, prompt_ids: list[list[int]], completion_ids: list[list[int]], *, top_k: int,
                    pad_id: int, batch_size: int, chunk_size: int, temperature: float = 1.0) -> list[TokenTargets]:
    """Teacher distributions over each completion token, from the context ``prompt_ids``
    (the strategy-conditioned prompt): the top-k (or all V when top_k == 0) of each."""
    passes = _head_passes(lm, prompt_ids, completion_ids, pad_id, batch_size, chunk_size, temperature, top_k=top_k)
    return [TokenTargets(p.support_ids, p.support_logp, p.logp) for p in passes]


def old_logprobs(lm: Any, prompt_ids: list[list[int]], completion_ids: list[list[int]],
                 support_ids: list[torch.Tensor | None], *, pad_id: int, batch_size: int, chunk_size: int,
                 temperature: float = 1.0) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Rollout-time student log-probs in the training context: of the sampled token [T] and,
    where ``support_ids`` is given, on the teacher's support [T, K] (proximal C1/C3)."""
    passes = _head_passes(lm, prompt_ids, completion_ids, pad_id, batch_size, chunk_size, temperature,
                          support_ids=support_ids)
    return [(p.logp, p.support_logp if sup is not None else None) for p, sup in zip(passes, support_ids)]
