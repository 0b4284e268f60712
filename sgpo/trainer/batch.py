"""Training sequences and their collation into micro-batches.

A step's batch is a flat list of :class:`TrainSequence`, each with a role that decides which
loss term its completion tokens feed. Collation flattens the completion tokens of a
micro-batch into M positions and keeps, per role, the index of its tokens and their targets,
so one forward pass serves every term.

With ``share_prompts`` a micro-batch whose rows repeat a prompt (a prompt's G rollouts, and
SGPO's distilled trajectories under the same unguided prompt) also carries
:class:`SharedPrompts`: each distinct prompt once and the completions apart, for the forward
that runs a prompt once for all its rows (:func:`sgpo.trainer.forward.shared_prompt_hidden`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sgpo.core.objective import ROLES, PackedTokens

RL_ROLES = ("rl", "offpolicy")  # the policy-gradient terms (GRPO's token mean runs over these)


@dataclass
class TrainSequence:
    prompt_ids: list[int]  # the student's context (the unguided prompt except for guided_rl)
    completion_ids: list[int]  # T tokens
    role: str  # rl | offpolicy | nll | distill
    advantage: float = 0.0  # rl, offpolicy
    weight: float = 1.0  # nll, distill: instance weight w_i
    guided: bool = False  # a guided trajectory learnt under the unguided prompt: scaled by loss.distill_coef
    old_logp: torch.Tensor | None = None  # [T] rollout-time student log-probs (None: on-policy, use current)
    rollout_logp: torch.Tensor | None = None  # [T] rl: the engine's log-probs of the sampled tokens (vLLM), else None
    pg_weight: torch.Tensor | None = None  # [T] rl: rollout-correction weight rho_t (loss.rollout_is); None: 1
    support_ids: torch.Tensor | None = None  # [T, K] distill
    teacher_logp: torch.Tensor | None = None  # [T, K]
    teacher_logp_sampled: torch.Tensor | None = None  # [T]
    old_support_logp: torch.Tensor | None = None  # [T, K] C1/C3 with several updates per rollout
    teacher_prompt_ids: list[int] | None = None  # distill: the teacher's context (prompt with the strategy)

    @property
    def num_tokens(self) -> int:
        return len(self.completion_ids)


@dataclass
class SharedPrompts:
    """The n rows of a micro-batch as P distinct prompts and n completions: the prompts run
    once (right-padded), each completion then attends to its prompt's keys and values. The
    completion's last token is not fed (its hidden state predicts nothing)."""

    prompt_ids: torch.Tensor  # [P, L_p] right-padded distinct prompts
    prompt_mask: torch.Tensor  # [P, L_p]
    owner: torch.Tensor  # [n] the prompt of each row
    last: torch.Tensor  # [n] position of the row's last prompt token (predicts its first completion token)
    completion_ids: torch.Tensor  # [n, L_c] completion tokens but the last, right-padded (L_c may be 0)
    attention_mask: torch.Tensor  # [n, L_p + L_c] the row's prompt mask, then its completion mask
    position_ids: torch.Tensor  # [n, L_c] positions continuing the row's prompt
    columns: torch.Tensor  # [M] column of each packed token in [first, completion hidden states] (its index in the completion)


@dataclass
class MicroBatch:
    """Right-padded rows for the model's forward and their packed loss tokens for the core."""

    input_ids: torch.Tensor  # [n, L]
    attention_mask: torch.Tensor  # [n, L]
    rows: torch.Tensor  # [M] row of each completion token
    positions: torch.Tensor  # [M] position of the hidden state that predicts it
    tokens: PackedTokens  # the M loss tokens: targets, roles, advantages, weights, teacher targets
    shared: SharedPrompts | None = None  # set when asked and some prompt has several rows


def pad_right(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, L] ids and attention mask from ragged rows."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def pack_rows(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows prompt + completion, right-padded ([n, L] ids and mask), and per completion token
    [M] its row, the position of the hidden state that predicts it and the token."""
    input_ids, attention_mask = pad_right([p + c for p, c in zip(prompt_ids, completion_ids)], pad_id, device)
    rows, positions, targets = [], [], []
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        rows += [i] * len(c)
        positions += range(len(p) - 1, len(p) + len(c) - 1)
        targets += c
    as_long = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    return input_ids, attention_mask, as_long(rows), as_long(positions), as_long(targets)


def share_prompts(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int,
                  device: torch.device) -> SharedPrompts | None:
    """:class:`SharedPrompts` of the rows; None when no prompt has two rows (nothing to share)
    or a prompt is empty (no hidden state predicts its first token)."""
    index: dict[tuple[int, ...], int] = {}
    owner = [index.setdefault(tuple(p), len(index)) for p in prompt_ids]
    if len(index) == len(prompt_ids) or any(not p for p in prompt_ids):
        return None
    distinct = [list(p) for p in index]
    p_ids, p_mask = pad_right(distinct, pad_id, device)  # [P, L_p]
    c_ids, c_mask = pad_right([c[:-1] for c in completion_ids], pad_id, device)  # [n, L_c]
    own = torch.tensor(owner, dtype=torch.long, device=device)
    lengths = p_mask.sum(1)[own]  # [n]
    columns = torch.cat([torch.arange(len(c), dtype=torch.long) for c in completion_ids])
    return SharedPrompts(p_ids, p_mask, own, lengths - 1, c_ids, torch.cat([p_mask[own], c_mask], 1),
                         lengths[:, None] + torch.arange(c_ids.shape[1], device=device)[None], columns.to(device))


def _per_token(seqs: list[TrainSequence], value, dtype=torch.float32) -> torch.Tensor:  # [M]
    return torch.cat([torch.full((s.num_tokens,), value(s), dtype=dtype) for s in seqs]) if seqs \
        else torch.zeros(0, dtype=dtype)


def _old_logp(seqs: list[TrainSequence]) -> torch.Tensor | None:
    """[M] rollout-time log-probs; None when no sequence has them (one update per rollout).
    Sequences of roles that do not read them (nll, offpolicy) hold 0."""
    have = [s.old_logp is not None for s in seqs if s.role in ("rl", "distill")]
    if not any(have):
        return None
    if not all(have):
        raise ValueError("some rl/distill sequences of a micro-batch have rollout-time log-probs and some do not")
    return torch.cat([s.old_logp if s.old_logp is not None else torch.zeros(s.num_tokens) for s in seqs])


def collate(seqs: list[TrainSequence], pad_id: int, device: torch.device, share: bool = False) -> MicroBatch:
    """Right-pad the rows and pack the completion tokens with everything the objective reads;
    with ``share``, also the rows as distinct prompts and completions (:func:`share_prompts`)."""
    input_ids, attention_mask, rows, positions, targets = pack_rows([s.prompt_ids for s in seqs],
                                                                   [s.completion_ids for s in seqs], pad_id, device)
    roles = [s.role for s in seqs for _ in range(s.num_tokens)]
    tokens = PackedTokens(targets, rows.clone(),
                          advantage=_per_token(seqs, lambda s: s.advantage).to(device),
                          weight=_per_token(seqs, lambda s: s.weight).to(device),
                          guided=_per_token(seqs, lambda s: s.guided, torch.bool).to(device))
    old = _old_logp(seqs)
    tokens.old_logp = old.to(device) if old is not None else None
    if any(s.pg_weight is not None for s in seqs):  # [M]; 1 on tokens without a correction
        tokens.pg_weight = torch.cat([torch.ones(s.num_tokens) if s.pg_weight is None else s.pg_weight.float()
                                      for s in seqs]).to(device)
    for role in ROLES:
        if role in roles:
            tokens.index[role] = torch.tensor([k for k, r in enumerate(roles) if r == role], device=device)
    distill = [s for s in seqs if s.role == "distill"]
    if distill:
        tokens.support_ids = torch.cat([s.support_ids for s in distill]).to(device)  # type: ignore[misc]
        tokens.teacher_logp = torch.cat([s.teacher_logp for s in distill]).to(device)  # type: ignore[misc]
        tokens.teacher_logp_sampled = torch.cat([s.teacher_logp_sampled for s in distill]).to(device)  # type: ignore[misc]
        if all(s.old_support_logp is not None for s in distill):
            tokens.old_support_logp = torch.cat([s.old_support_logp for s in distill]).to(device)  # type: ignore[misc]
    shared = share_prompts([s.prompt_ids for s in seqs], [s.completion_ids for s in seqs], pad_id, device) \
        if share else None
    return MicroBatch(input_ids, attention_mask, rows, positions, tokens, shared)


def group_by_prompt(seqs: list[TrainSequence]) -> list[TrainSequence]:
    """The sequences with each prompt's rows together (prompts in order of first appearance,
    rows in order within a prompt): SGPO's distilled rows join their problem's autonomous ones,
    so micro-batches hold fewer distinct prompts for :class:`SharedPrompts`. The update is a sum
    over sequences against a global normaliser, so the order changes only float rounding."""
    first: dict[tuple[int, ...], int] = {}
    for s in seqs:
        first.setdefault(tuple(s.prompt_ids), len(first))
    return sorted(seqs, key=lambda s: first[tuple(s.prompt_ids)])  # stable


def split_micro_batches(seqs: list[TrainSequence], micro_batch_size: int) -> list[list[TrainSequence]]:
    return [seqs[i:i + micro_batch_size] for i in range(0, len(seqs), micro_batch_size)]


def normalizer_tokens(seqs: list[TrainSequence], normalizer: str, aggregation: str = "token-mean") -> tuple[int, int]:
    """This process's (count by ``normalizer``, count over every loss sequence) of an update:
    ``rl`` counts the RL terms' sequences, ``all`` every one (see ``loss.normalizer``); the
    count is of tokens for ``token-mean`` and of sequences for the seq- aggregations."""
    size = (lambda s: s.num_tokens) if aggregation == "token-mean" else (lambda s: 1 if s.num_tokens else 0)
    total = sum(size(s) for s in seqs)
    if normalizer == "all":
        return total, total
    if normalizer != "rl":
        raise ValueError(f"unknown normalizer {normalizer!r}; expected 'rl' or 'all'")
    return sum(size(s) for s in seqs if s.role in RL_ROLES), total
