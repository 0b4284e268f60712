"""Rollout-time work: render and encode prompts, sample groups, score them, and compute the
no-gradient quantities the losses need (teacher top-k targets from the strategy-conditioned context, old log-probs).
Everything here runs under ``torch.no_grad`` on the unwrapped policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from sgpo import prompts
from sgpo.core import teacher_targets_from_logits
from sgpo.data import Problem
from sgpo.generation import Completion, Generator, SamplingConfig, encode_prompts  # noqa: F401  (re-exported)


@dataclass
class TokenTargets:
    """Per-token distillation targets of one trajectory (T completion tokens)."""

    support_ids: torch.Tensor  # [T, K] teacher top-k ids (K = V for the full vocabulary)
    teacher_lp: torch.Tensor  # [T, K] teacher log-probs on the support (normalised over V)
    teacher_lp_sampled: torch.Tensor  # [T] teacher log-prob of the sampled token


def render_prompts(tokenizer: Any, problems: Sequence[Problem], guided: bool,
                   style: prompts.PromptStyle = prompts.PromptStyle()) -> list[str]:
    return [style.render(tokenizer, p.problem, p.strategy if guided else None) for p in problems]


def generate_groups(generator: Generator, requests: list[tuple[list[list[int]], int]],
                    sampling: SamplingConfig) -> list[list[list[Completion]]]:
    """Sample several sets of prompts, each with its own group size, in ONE generation call
    (autonomous and guided rollouts share batches). ``requests``: (prompt token ids, n); the
    generator gets the ids the losses score, not text it would tokenize again. Returns per
    request completions[b][g] with b < len(prompts), g < n."""
    prompts = [p for ps, _ in requests for p in ps]
    ns = [n for ps, n in requests for _ in ps]
    flat = generator.generate(prompts, sampling, n=ns) if prompts else []
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


def base_and_head(lm: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder stack (returns hidden states) and the LM head of a causal LM."""
    if getattr(lm.config, "final_logit_softcapping", None) or getattr(lm.config, "logit_scale", None):
        raise NotImplementedError("models that rescale logits after the LM head are not supported yet")
    return getattr(lm, lm.base_model_prefix), lm.get_output_embeddings()


def pad_right(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, L] ids and attention mask from ragged rows."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long, device=device)
        mask[i, : len(r)] = 1
    return ids, mask


def completion_hidden(base: torch.nn.Module, prompt_ids: list[list[int]], completion_ids: list[list[int]],
                      pad_id: int, device: torch.device) -> list[torch.Tensor]:
    """Hidden states that predict each completion token: for a row with prompt length P and
    completion length C, positions P-1 .. P+C-2. Returns a list of [C, H] tensors."""
    rows = [p + c for p, c in zip(prompt_ids, completion_ids)]
    ids, mask = pad_right(rows, pad_id, device)
    hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state  # [n, L, H]
    return [hidden[i, len(p) - 1: len(p) + len(c) - 1] for i, (p, c) in enumerate(zip(prompt_ids, completion_ids))]


@torch.no_grad()
def teacher_targets(lm: Any, prompt_ids: list[list[int]], completion_ids: list[list[int]], *, top_k: int,
                    pad_id: int, batch_size: int, chunk_size: int, temperature: float = 1.0) -> list[TokenTargets]:
    """Teacher distributions over each completion token, from the context ``prompt_ids``
    (the strategy-conditioned prompt). The LM head runs ``chunk_size`` tokens at a time so
    at most [chunk_size, V] logits exist; only the top-k (or all V when top_k == 0) is kept."""
    base, head = base_and_head(lm)
    device = next(lm.parameters()).device
    out: list[TokenTargets] = []
    for s in range(0, len(prompt_ids), batch_size):
        hs = completion_hidden(base, prompt_ids[s:s + batch_size], completion_ids[s:s + batch_size], pad_id, device)
        for h, comp in zip(hs, completion_ids[s:s + batch_size]):
            sampled = torch.tensor(comp, device=device)
            ids_parts, lp_parts, samp_parts = [], [], []
            for c in range(0, h.shape[0], chunk_size):
                logits = head(h[c:c + chunk_size]).float() / temperature  # [c, V]
                lp, ids, lp_sampled = teacher_targets_from_logits(logits, top_k or logits.shape[-1],
                                                                  sampled[c:c + chunk_size])  # [c, K], [c, K], [c]
                ids_parts.append(ids)
                lp_parts.append(lp)
                samp_parts.append(lp_sampled)
            out.append(TokenTargets(torch.cat(ids_parts), torch.cat(lp_parts), torch.cat(samp_parts)))
    return out


@torch.no_grad()
def old_logprobs(lm: Any, prompt_ids: list[list[int]], completion_ids: list[list[int]],
                 support_ids: list[torch.Tensor | None], *, pad_id: int, batch_size: int, chunk_size: int,
                 temperature: float = 1.0) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Rollout-time student log-probs in the training context: of the sampled token [T] and,
    where ``support_ids`` is given, on the teacher's support [T, K] (proximal C1/C3)."""
    base, head = base_and_head(lm)
    device = next(lm.parameters()).device
    out: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    for s in range(0, len(prompt_ids), batch_size):
        hs = completion_hidden(base, prompt_ids[s:s + batch_size], completion_ids[s:s + batch_size], pad_id, device)
        for h, comp, sup in zip(hs, completion_ids[s:s + batch_size], support_ids[s:s + batch_size]):
            sampled = torch.tensor(comp, device=device)
            samp_parts, sup_parts = [], []
            for c in range(0, h.shape[0], chunk_size):
                lp = torch.log_softmax(head(h[c:c + chunk_size]).float() / temperature, -1)  # [c, V]
                samp_parts.append(lp.gather(-1, sampled[c:c + chunk_size, None])[:, 0])
                if sup is not None:
                    sup_parts.append(lp.gather(-1, sup[c:c + chunk_size]))
            out.append((torch.cat(samp_parts), torch.cat(sup_parts) if sup is not None else None))
    return out
