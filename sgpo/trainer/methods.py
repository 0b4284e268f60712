"""One step of every method as named phases, in the order the trainer runs them. Each phase
reads the method's entry of :data:`sgpo.trainer.specs.METHODS` (what is sampled, which loss
role each set of trajectories feeds), never the method's name:

1. :func:`sample`: G_a autonomous rollouts per problem from the unguided prompt and, for the
   guided methods, G_g rollouts from the prompt with the strategy (one generation call), G_a
   and G_g the method's split of ``algorithm.samples_per_problem``; the strong-model
   responses where the method needs them.
2. :func:`score`: rewards from the run's reward functions (:mod:`sgpo.rewards.functions`; by
   default the math grader, 1 verified correct else 0), [B, G_a] and [B, G_g], graded in parallel.
3. :func:`advantages`: group-relative advantages (:func:`sgpo.core.group_advantages`).
4. :func:`weights`: the instance weight w_i from (p_a, p_g) (:func:`sgpo.core.instance_weights`).
5. :func:`sequences`: which trajectory feeds which loss term, in which context; the guided
   trajectories SGPO distils are the :func:`eligible` ones.
6. :func:`attach_teacher_targets`: the teacher's top-k distribution over each distilled token
   from the strategy-conditioned context; :func:`attach_old_logprobs`: the rollout-time student
   log-probs when there are several updates per rollout.

Every array is indexed by the B problems of this process ([B], [B, G]); a problem without a
strategy has ``has_strategy[b] = False``, no guided samples (a 0-padded row) and w_b = 0."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from sgpo.core import LossSettings, group_advantages, instance_weights, rollout_is_weights, update_competence
from sgpo.data import Problem
from sgpo.lora import adapter_disabled
from sgpo.generation import Completion, Generator, SamplingConfig
from sgpo.prompts import PromptStyle
from sgpo.rewards.functions import Graded, RewardFunctions
from sgpo.trainer.batch import TrainSequence
from sgpo.trainer.config import AlgorithmConfig
from sgpo.trainer.specs import MethodSpec, method_spec
from sgpo.trainer.rollouts import (
    encode_prompts,
    generate_groups,
    group_rewards,
    old_logprobs,
    render_prompts,
    teacher_targets,
)

MENTION_WORDS = ("strategy", "hint")


def local_gather(values: list) -> list:
    """gather() of a single process: the list itself."""
    return values


@dataclass
class StepContext:
    """What the phases need besides the problems: models, generator, settings."""

    tokenizer: Any
    generator: Generator
    policy: Any  # unwrapped causal LM with the rollout-time parameters (student and old policy)
    teacher: Any  # LM scoring the strategy-conditioned context: the policy itself, or a frozen initial copy
    algo: AlgorithmConfig
    loss: LossSettings
    pad_id: int
    batch_size: int  # sequences per no-grad forward
    chunk_size: int  # tokens per LM-head chunk
    style: PromptStyle = field(default_factory=PromptStyle)
    # concatenates a list over all processes in rank order (identity on one process)
    gather: Callable[[list], list] = local_gather
    rewards: RewardFunctions = field(default_factory=RewardFunctions)  # the run's reward functions (reward section)
    teacher_adapter_off: bool = False  # LoRA with teacher: initial: the teacher is the policy with its adapter off
    # system.sampler_teacher_targets: take the teacher targets of guided trajectories from the
    # sampler where it keeps them (teacher: rollout, the lean sampler)
    sampler_targets: bool = True

    @property
    def spec(self) -> MethodSpec:
        return method_spec(self.algo.method)


@dataclass
class Rollouts:
    """Sampled trajectories of B prompts of one kind."""

    prompt_ids: list[list[int]]  # [B] the prompt's token ids (the context the trajectory was sampled in)
    completions: list[list[Completion]]  # [B][G]; an empty row where nothing was sampled


@dataclass
class StepRollouts:
    problems: list[Problem]  # B
    auto: Rollouts  # unguided prompt x: the student's context; G_a samples
    guided: Rollouts | None  # prompt x (+) s: the teacher's context; G_g samples where has_strategy
    has_strategy: torch.Tensor  # [B] bool
    reference: list[list[int]] | None = None  # [B] strong-model response tokens (spec.needs_reference)


@dataclass
class Rewards:
    auto: torch.Tensor  # [B, G_a] 1.0 verified correct, else 0.0
    guided: torch.Tensor | None  # [B, G_g], rows without a strategy are 0 (and never used)
    has_strategy: torch.Tensor  # [B] bool
    reference: torch.Tensor | None = None  # [B] reward of the strong-model trace (spec.reference_in_group)
    graded: Graded | None = None  # every graded completion: each function's value and failures (for metrics)

    @property
    def p_auto(self) -> torch.Tensor:  # [B] autonomous success rate p_a
        return self.auto.mean(1) if self.auto.shape[1] else torch.zeros(self.auto.shape[0])

    @property
    def p_guided(self) -> torch.Tensor:  # [B] guided success rate p_g (0 without a strategy)
        return self.guided.mean(1) if self.guided is not None else torch.zeros_like(self.p_auto)


@dataclass
class Advantages:
    auto: torch.Tensor | None = None  # [B, G_a]
    guided: torch.Tensor | None = None  # [B, G_g] guided rollouts trained by RL, 0 without a strategy
    reference: torch.Tensor | None = None  # [B] the strong-model trace as a group member


@dataclass
class StepBatch:
    sequences: list[TrainSequence]
    stats: dict[str, torch.Tensor]  # per-problem/per-trajectory tensors, gathered across processes for logging


# -- 1. sample ------------------------------------------------------------------------------
def sample(ctx: StepContext, problems: list[Problem], seed: int | None) -> StepRollouts:
    algo, tok, spec = ctx.algo, ctx.tokenizer, ctx.spec
    budget = spec.budget(algo.samples_per_problem, algo.group_guided)
    has = torch.tensor([p.strategy is not None for p in problems], dtype=torch.bool)  # [B]
    auto_ids = encode_prompts(tok, render_prompts(tok, problems, guided=False, style=ctx.style))
    reference = None
    if spec.needs_reference:
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        reference = [tok(p.teacher_response or "", add_special_tokens=False)["input_ids"] + eos for p in problems]
    if not spec.samples:
        return StepRollouts(problems, Rollouts(auto_ids, [[] for _ in problems]), None, has, reference)
    requests = [(auto_ids, budget.auto)]
    guided = spec.samples_guided
    rows = [b for b in range(len(problems)) if has[b]] if guided else []
    guided_ids = encode_prompts(tok, render_prompts(tok, [problems[b] for b in rows], guided=True, style=ctx.style))
    if guided:
        requests.append((guided_ids, budget.guided))
    sampling = SamplingConfig(algo.temperature, algo.top_p, algo.max_new_tokens, seed)
    # guided rollouts are sampled in the teacher's context: with the rollout policy as teacher
    # the sampler's own distributions are the teacher targets (no second forward)
    keep = [False, spec.guided == "distill" and ctx.sampler_targets and ctx.teacher is ctx.policy
            and not ctx.teacher_adapter_off]
    groups = generate_groups(ctx.generator, requests, sampling, keep_targets=keep, top_k=algo.top_k)
    auto = Rollouts(auto_ids, groups[0])
    guided_rollouts = None
    if guided:  # spread the sampled rows back over all B problems
        ids: list[list[int]] = [[] for _ in problems]
        comps: list[list[Completion]] = [[] for _ in problems]
        for b, p_ids, group in zip(rows, guided_ids, groups[1]):
            ids[b], comps[b] = p_ids, group
        guided_rollouts = Rollouts(ids, comps)
    return StepRollouts(problems, auto, guided_rollouts, has, reference)


# -- 2. score --------------------------------------------------------------------------------
def score(ctx: StepContext, r: StepRollouts) -> Rewards:
    """Every completion of the step (autonomous, guided, LUFFY's strong-model traces) graded
    in one concurrent batch by the run's reward functions."""
    texts, answers, rows = [], [], []

    def add(groups: list[list[Any]]) -> None:
        for p, group in zip(r.problems, groups):
            for text in group:
                texts.append(text)
                answers.append(p.answer)
                rows.append(p.row if p.row is not None else {"id": p.id, "problem": p.problem, "answer": p.answer})

    auto_text = [[c.text for c in g] for g in r.auto.completions]
    guided_text = [[c.text for c in g] for g in r.guided.completions] if r.guided else []
    ref_text = [[p.teacher_response or ""] for p in r.problems] if ctx.spec.reference_in_group else []
    for part in (auto_text, guided_text, ref_text):
        add(part)
    graded = ctx.rewards.grade(texts, answers, rows)
    n_auto, n_guided = sum(map(len, auto_text)), sum(map(len, guided_text))
    flat = graded.rewards
    width = max((len(g) for g in r.auto.completions), default=0)
    auto = group_rewards(flat[:n_auto], r.auto.completions, width)  # [B, G_a]
    guided = group_rewards(flat[n_auto:n_auto + n_guided], r.guided.completions,
                           ctx.algo.group_guided) if r.guided else None  # [B, G_g]
    reference = torch.tensor(flat[n_auto + n_guided:]) if ref_text else None  # [B]
    return Rewards(auto, guided, r.has_strategy, reference, graded)


# -- 3. advantages ---------------------------------------------------------------------------
def _group_advantages(ctx: StepContext, rewards: torch.Tensor, scale: str) -> torch.Tensor:  # [B, G] -> [B, G]
    """Advantages within each row; ``batch`` scale divides by the std over every process's rows."""
    std = torch.tensor(ctx.gather(rewards.flatten().tolist())).std() if scale == "batch" else None
    return group_advantages(rewards.flatten(), max(rewards.shape[1], 1), scale=scale,
                            batch_std=std).view_as(rewards)


def advantages(ctx: StepContext, rewards: Rewards) -> Advantages:
    spec = ctx.spec
    if not spec.samples:
        return Advantages()
    scale = getattr(ctx.algo, spec.adv_scale_key)
    if spec.reference_in_group:  # the strong-model trace is one more member of the group
        adv = _group_advantages(ctx, torch.cat([rewards.auto, rewards.reference[:, None]], 1), scale)
        return Advantages(auto=adv[:, :-1], reference=adv[:, -1])
    out = Advantages(auto=_group_advantages(ctx, rewards.auto, scale))
    if spec.guided == "rl":  # groups of problems with a strategy only
        out.guided = torch.zeros_like(rewards.guided)
        out.guided[rewards.has_strategy] = _group_advantages(ctx, rewards.guided[rewards.has_strategy], scale)
    return out


# -- 4. weights ------------------------------------------------------------------------------
def weights(ctx: StepContext, r: StepRollouts, rewards: Rewards, competence: dict[str, float]) -> torch.Tensor | None:
    """w_i per problem [B], 0 without a strategy; None for methods without guided learning.
    With ``weight_mode: competence`` the running competence (problem id -> past p_a) is read
    for this step's weights, then updated in place with the p_a of every process's problems
    (the dict is the same on every process and checkpointed whole)."""
    algo = ctx.algo
    if not ctx.spec.weighted:
        return None
    c = None
    if algo.weight_mode == "competence":
        c = torch.tensor([competence.get(p.id, 0.0) for p in r.problems])  # [B], 0 before the first visit
        merge_competence(competence, ctx.gather([p.id for p in r.problems]), ctx.gather(rewards.p_auto.tolist()),
                         algo.competence_momentum)
    w = instance_weights(rewards.p_auto, rewards.p_guided, mode=algo.weight_mode, competence=c)  # [B]
    return torch.where(rewards.has_strategy, w, torch.zeros_like(w))


def merge_competence(state: dict[str, float], ids: list[str], p_auto: list[float], momentum: float) -> None:
    """Fold p_a of ``ids`` (in order; a problem twice in one step is folded twice) into ``state``."""
    for pid, p in zip(ids, p_auto):
        prev = torch.tensor([state[pid]]) if pid in state else None
        state[pid] = float(update_competence(prev, torch.tensor([float(p)]), momentum)[0])


# -- 5. sequences ----------------------------------------------------------------------------
def eligible(r: StepRollouts, rewards: Rewards, w: torch.Tensor, distill_on: str) -> torch.Tensor:
    """[B, G_g] bool: guided trajectories that feed the distillation (or imitation) term: of a
    problem with w > 0, non-empty, and correct unless ``distill_on: all``."""
    assert r.guided is not None and rewards.guided is not None
    sampled = torch.zeros_like(rewards.guided, dtype=torch.bool)
    for b, group in enumerate(r.guided.completions):
        for g, c in enumerate(group):
            sampled[b, g] = bool(c.token_ids)
    correct = rewards.guided > 0 if distill_on == "correct" else torch.ones_like(sampled)
    return sampled & correct & (w > 0)[:, None] & rewards.has_strategy[:, None]


def _rl_sequences(rollouts: Rollouts, adv: torch.Tensor) -> list[TrainSequence]:
    """RL trajectories in their sampling context; zero-advantage ones are kept (their tokens
    count in the token mean)."""
    return [TrainSequence(p, c.token_ids, "rl", advantage=float(adv[b, g]), rollout_logp=_engine_logprobs(c))
            for b, (p, group) in enumerate(zip(rollouts.prompt_ids, rollouts.completions))
            for g, c in enumerate(group) if c.token_ids]


def _engine_logprobs(c: Completion) -> torch.Tensor | None:  # [T] or None
    """The engine's sampled-token log-probs of a completion (vLLM), if it reported them."""
    if c.logprobs is None:
        return None
    if len(c.logprobs) != len(c.token_ids):
        raise ValueError(f"the generation engine returned {len(c.logprobs)} log-probs for {len(c.token_ids)} tokens")
    return torch.tensor(c.logprobs, dtype=torch.float32)


def sequences(ctx: StepContext, r: StepRollouts, rewards: Rewards, adv: Advantages,
              w: torch.Tensor | None) -> list[TrainSequence]:
    """The step's training sequences, each set of trajectories in the role its spec names."""
    spec = ctx.spec
    seqs: list[TrainSequence] = []
    if spec.auto == "rl":
        seqs += _rl_sequences(r.auto, adv.auto)
    if spec.reference == "nll":  # sft: the strong-model response alone
        seqs += [TrainSequence(p, ref, "nll") for p, ref in zip(r.auto.prompt_ids, r.reference or [])]
    if spec.reference == "offpolicy":  # luffy: the strong-model trace with its group advantage
        seqs += [TrainSequence(p, ref, "offpolicy", advantage=float(a))
                 for p, ref, a in zip(r.auto.prompt_ids, r.reference or [], adv.reference)]
    if spec.guided == "rl":  # strategy-in-prompt RL: guided rollouts in their guided context
        seqs += _rl_sequences(r.guided, adv.guided)
    if spec.guided in ("nll", "distill"):
        for b, g in eligible(r, rewards, w, ctx.algo.distill_on).nonzero().tolist():
            tokens = r.guided.completions[b][g].token_ids
            if spec.guided == "nll":  # imitation: lambda w_i NLL of the trajectory under the unguided prompt
                seqs.append(TrainSequence(r.auto.prompt_ids[b], tokens, "nll", weight=float(w[b]), guided=True))
            else:  # student: unguided prompt; teacher: the strategy-conditioned prompt it was sampled in
                seq = TrainSequence(r.auto.prompt_ids[b], tokens, "distill", weight=float(w[b]), guided=True,
                                    teacher_prompt_ids=r.guided.prompt_ids[b])
                if r.guided.completions[b][g].context_targets is not None:  # kept by the sampler (see sample)
                    seq.support_ids, seq.teacher_logp, seq.teacher_logp_sampled = r.guided.completions[b][g].context_targets
                seqs.append(seq)
    return seqs


# -- 6. teacher targets and old log-probs (no gradient) --------------------------------------
def attach_teacher_targets(ctx: StepContext, seqs: list[TrainSequence]) -> None:
    """Teacher distributions over every distilled token, from the strategy-conditioned context,
    computed once right after generation (unless the sampler kept them, :func:`sample`)."""
    todo = [s for s in seqs if s.role == "distill" and s.support_ids is None]
    if not todo:
        return
    with adapter_disabled(ctx.teacher) if ctx.teacher_adapter_off else nullcontext():
        targets = teacher_targets(ctx.teacher, [s.teacher_prompt_ids for s in todo], [s.completion_ids for s in todo],
                                  top_k=ctx.algo.top_k, pad_id=ctx.pad_id, batch_size=ctx.batch_size,
                                  chunk_size=ctx.chunk_size, temperature=ctx.algo.temperature)
    for s, t in zip(todo, targets):
        s.support_ids, s.teacher_logp, s.teacher_logp_sampled = t.support_ids, t.teacher_logp, t.teacher_logp_sampled


def attach_old_logprobs(ctx: StepContext, seqs: list[TrainSequence]) -> dict[str, torch.Tensor]:
    """The rollout-time student log-probs pi_old. With several updates per rollout (PPO epochs x
    mini-batches) they are frozen now for the loss; with one update they equal the current ones
    and the loss does not read them. RL trajectories with the engine's log-probs (vLLM) need them
    at any update count: the rollout correction compares the two (:func:`attach_rollout_correction`,
    whose per-token statistics this returns)."""
    several = ctx.algo.ppo_epochs * ctx.algo.mini_batches > 1
    corrected = [s for s in seqs if s.role == "rl" and s.rollout_logp is not None]
    todo = [s for s in seqs if s.role in ("rl", "distill")] if several else corrected
    if not todo:
        return attach_rollout_correction(ctx, [], [])
    need_support = ctx.loss.proximal in ("c1", "c3")
    support = [s.support_ids if s.role == "distill" and need_support else None for s in todo]
    olds = old_logprobs(ctx.policy, [s.prompt_ids for s in todo], [s.completion_ids for s in todo], support,
                        pad_id=ctx.pad_id, batch_size=ctx.batch_size, chunk_size=ctx.chunk_size,
                        temperature=ctx.algo.temperature)
    old_of = {}
    for s, (lp, sup) in zip(todo, olds):
        old_of[id(s)] = lp
        if several:
            s.old_logp, s.old_support_logp = lp, sup
    return attach_rollout_correction(ctx, corrected, [old_of[id(s)] for s in corrected])


def attach_rollout_correction(ctx: StepContext, seqs: list[TrainSequence],
                              olds: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """rho_t of each RL trajectory the engine sampled (``loss.rollout_is``,
    :func:`sgpo.core.rollout_is_weights` on pi_old vs pi_rollout), set as its ``pg_weight``;
    returns the per-token statistics behind the ``rollout/*`` metrics: on every process whose
    engine reports log-probs (empty where it sampled nothing), so the processes gather the same keys."""
    if not getattr(ctx.generator, "reports_logprobs", False):
        return {}
    if not seqs:
        return {f"rollout/{k}": torch.zeros(0) for k in ("is_ratio", "is_masked", "logprob_abs_diff")}
    sizes = [s.num_tokens for s in seqs]
    seq = torch.repeat_interleave(torch.arange(len(seqs)), torch.tensor(sizes))  # [M]
    old = torch.cat([o.detach().float().cpu() for o in olds])  # [M]
    rollout = torch.cat([s.rollout_logp for s in seqs])  # [M]
    rho, m = rollout_is_weights(old, rollout, seq, ctx.loss.rollout_is, ctx.loss.rollout_is_max,
                                ctx.loss.rollout_is_min)  # [M]
    for s, part in zip(seqs, rho.split(sizes)):
        s.pg_weight = part
    return {f"rollout/{k}": v for k, v in m.items()}


# -- statistics for logging ------------------------------------------------------------------
def step_stats(spec: MethodSpec, r: StepRollouts, rewards: Rewards, w: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Per-problem and per-trajectory tensors behind the rollout metrics (docs/metrics.md)."""
    samples = {**_samples(spec, r), "perf/tokens": _trajectory_tokens(r)}
    if not spec.samples:
        return {"len/teacher": torch.tensor([float(len(x)) for x in r.reference]), **samples}
    auto = r.auto.completions
    stats = {"reward/auto": rewards.auto.flatten(), "p_auto": rewards.p_auto, "len/auto": _lengths(auto),
             "trunc/auto": _truncated(auto), "mentions/auto": _mentions(auto), **samples}
    if rewards.reference is not None:
        stats["reward/offpolicy"] = rewards.reference
    if r.guided is not None:
        has = rewards.has_strategy
        stats.update({"reward/guided": rewards.guided[has].flatten(), "p_guided": rewards.p_guided[has],
                      "len/guided": _lengths(r.guided.completions),
                      "no_strategy": torch.tensor([float((~has).sum())])})
    if w is not None:
        stats.update({"weight": w, "weight_guided": w[rewards.has_strategy]})
    if rewards.graded is not None:
        stats.update(reward_function_stats(rewards.graded))
    return stats


def _samples(spec: MethodSpec, r: StepRollouts) -> dict[str, torch.Tensor]:
    """[B] trajectories of each problem by kind, as sampled: autonomous, guided, and the
    strong-model trace where it takes a place in the group (``samples/*``)."""
    out = {"samples/auto": torch.tensor([float(len(g)) for g in r.auto.completions]),
           "samples/guided": torch.tensor([float(len(g)) for g in r.guided.completions]) if r.guided is not None
           else torch.zeros(len(r.problems))}
    if spec.reference_in_group:
        out["samples/reference"] = torch.tensor([float(bool(ref)) for ref in r.reference or []])
    return out


def _trajectory_tokens(r: StepRollouts) -> torch.Tensor:  # [trajectories]
    """Prompt + completion tokens of every trajectory of the step: the sampled ones (autonomous
    and guided) and the strong-model traces. Summed over processes: verl's ``total_num_tokens``."""
    sets = [r.auto] + ([r.guided] if r.guided is not None else [])
    counts = [len(p) + len(c.token_ids) for rs in sets for p, group in zip(rs.prompt_ids, rs.completions)
              for c in group]
    counts += [len(p) + len(ref) for p, ref in zip(r.auto.prompt_ids, r.reference or [])]
    return torch.tensor(counts, dtype=torch.float32)


def reward_function_stats(graded: Graded) -> dict[str, torch.Tensor]:
    """Per reward function, over every completion graded this step: its values ``reward/fn/NAME``
    (NaN where not applicable or failed) and its failed calls ``reward/failed/NAME`` (0/1)."""
    out = {}
    for name, values in graded.values.items():
        out[f"reward/fn/{name}"] = torch.tensor([float("nan") if v is None else v for v in values])
        out[f"reward/failed/{name}"] = torch.tensor([float(f) for f in graded.failed[name]])
    return out


def _lengths(groups: list[list[Completion]]) -> torch.Tensor:
    return torch.tensor([float(len(c.token_ids)) for g in groups for c in g])


def _truncated(groups: list[list[Completion]]) -> torch.Tensor:
    return torch.tensor([float(c.finish_reason == "length") for g in groups for c in g])


def _mentions(groups: list[list[Completion]]) -> torch.Tensor:
    return torch.tensor([float(any(w in c.text.lower() for w in MENTION_WORDS)) for g in groups for c in g])
