"""Training sequences and their collation into micro-batches.

A step's batch is a flat list of :class:`TrainSequence`, each with a role that decides which
loss term its completion tokens feed. Collation flattens the completion tokens of a
micro-batch into M positions and keeps, per role, the index of its tokens and their targets,
so one forward pass serves every term."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

ROLES = ("rl", "offpolicy", "nll", "distill")
RL_ROLES = ("rl", "offpolicy")  # the policy-gradient terms (GRPO's token mean runs over these)


@dataclass
class TrainSequence:
    prompt_ids: list[int]  # the student's context (the unguided prompt except for guided_rl)
    completion_ids: list[int]  # T tokens
    role: str  # rl | offpolicy | nll | distill
    advantage: float = 0.0  # rl, offpolicy
    weight: float = 1.0  # nll, distill: instance weight w_i
    old_logp: torch.Tensor | None = None  # [T] rollout-time student log-probs (None: on-policy, use current)
    support_ids: torch.Tensor | None = None  # [T, K] distill
    teacher_lp: torch.Tensor | None = None  # [T, K]
    teacher_lp_sampled: torch.Tensor | None = None  # [T]
    old_support_lp: torch.Tensor | None = None  # [T, K] C1/C3 with several updates per rollout
    teacher_prompt_ids: list[int] | None = None  # distill: the teacher's context (prompt with the strategy)

    @property
    def num_tokens(self) -> int:
        return len(self.completion_ids)


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [n, L]
    attention_mask: torch.Tensor  # [n, L]
    rows: torch.Tensor  # [M] row of each completion token
    positions: torch.Tensor  # [M] position of the hidden state that predicts it
    targets: torch.Tensor  # [M] the token
    index: dict[str, torch.Tensor] = field(default_factory=dict)  # role -> [M_role] indices into M
    advantage: dict[str, torch.Tensor] = field(default_factory=dict)  # rl/offpolicy -> [M_role]
    old_logp: dict[str, torch.Tensor | None] = field(default_factory=dict)  # rl/distill -> [M_role] or None
    weight: dict[str, torch.Tensor] = field(default_factory=dict)  # nll/distill -> [M_role]
    support_ids: torch.Tensor | None = None  # [M_d, K]
    teacher_lp: torch.Tensor | None = None  # [M_d, K]
    teacher_lp_sampled: torch.Tensor | None = None  # [M_d]
    old_support_lp: torch.Tensor | None = None  # [M_d, K]


def _cat_or_none(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    if not parts or any(p is None for p in parts):
        return None
    return torch.cat(parts)  # type: ignore[arg-type]


def collate(seqs: list[TrainSequence], pad_id: int, device: torch.device) -> MicroBatch:
    """Right-pad the rows and flatten completion tokens, grouped by role."""
    rows_ids = [s.prompt_ids + s.completion_ids for s in seqs]
    width = max(len(r) for r in rows_ids)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    rows, positions, targets, roles = [], [], [], []
    for i, (s, r) in enumerate(zip(seqs, rows_ids)):
        input_ids[i, : len(r)] = torch.tensor(r)
        attention_mask[i, : len(r)] = 1
        p = len(s.prompt_ids)
        rows += [i] * s.num_tokens
        positions += range(p - 1, p + s.num_tokens - 1)
        targets += s.completion_ids
        roles += [s.role] * s.num_tokens
    mb = MicroBatch(input_ids.to(device), attention_mask.to(device), torch.tensor(rows, device=device),
                    torch.tensor(positions, device=device), torch.tensor(targets, device=device))
    for role in ROLES:
        members = [s for s in seqs if s.role == role]
        if not members:
            continue
        mb.index[role] = torch.tensor([k for k, r in enumerate(roles) if r == role], device=device)
        if role in ("rl", "offpolicy"):
            mb.advantage[role] = torch.cat([torch.full((s.num_tokens,), s.advantage) for s in members]).to(device)
        if role in ("nll", "distill"):
            mb.weight[role] = torch.cat([torch.full((s.num_tokens,), s.weight) for s in members]).to(device)
        if role in ("rl", "distill"):
            old = _cat_or_none([s.old_logp for s in members])
            mb.old_logp[role] = old.to(device) if old is not None else None
    distill = [s for s in seqs if s.role == "distill"]
    if distill:
        mb.support_ids = torch.cat([s.support_ids for s in distill]).to(device)  # type: ignore[misc]
        mb.teacher_lp = torch.cat([s.teacher_lp for s in distill]).to(device)  # type: ignore[misc]
        mb.teacher_lp_sampled = torch.cat([s.teacher_lp_sampled for s in distill]).to(device)  # type: ignore[misc]
        old_sup = _cat_or_none([s.old_support_lp for s in distill])
        mb.old_support_lp = old_sup.to(device) if old_sup is not None else None
    return mb


def split_micro_batches(seqs: list[TrainSequence], micro_batch_size: int) -> list[list[TrainSequence]]:
    return [seqs[i:i + micro_batch_size] for i in range(0, len(seqs), micro_batch_size)]


def normalizer_tokens(seqs: list[TrainSequence], normalizer: str) -> tuple[int, int]:
    """This process's (tokens counted by ``normalizer``, all loss tokens) of an update:
    ``rl`` counts the RL terms' tokens, ``all`` every loss token (see ``loss.normalizer``)."""
    total = sum(s.num_tokens for s in seqs)
    if normalizer == "all":
        return total, total
    if normalizer != "rl":
        raise ValueError(f"unknown normalizer {normalizer!r}; expected 'rl' or 'all'")
    return sum(s.num_tokens for s in seqs if s.role in RL_ROLES), total
