"""One step's batch per method: which rollouts are sampled, how they are scored and weighted,
and which loss term each trajectory feeds. Reads top to bottom as spec section 2 (SGPO) and
section 3 (baselines and ablations)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sgpo.core import LossSettings, group_advantages, instance_weights, update_competence
from sgpo.data import Problem
from sgpo.generation import Completion, Generator, SamplingConfig
from sgpo.prompts import PromptStyle
from sgpo.rewards import score
from sgpo.trainer.batch import TrainSequence
from sgpo.trainer.config import AlgorithmConfig
from sgpo.trainer.rollouts import encode_prompts, old_logprobs, render_prompts, sample_and_score, teacher_targets

MENTION_WORDS = ("strategy", "hint")


@dataclass
class StepInputs:
    """What a method needs besides the problems: models, generator and settings."""

    tokenizer: Any
    generator: Generator
    policy: Any  # unwrapped causal LM at rollout time
    teacher: Any  # causal LM giving teacher targets (the policy itself, or a frozen copy)
    algo: AlgorithmConfig
    loss: LossSettings
    pad_id: int
    batch_size: int  # sequences per no-grad forward
    chunk_size: int
    competence: dict[str, float] = field(default_factory=dict)  # problem id -> running p_a (W3)
    style: PromptStyle = field(default_factory=PromptStyle)


@dataclass
class StepBatch:
    sequences: list[TrainSequence]
    stats: dict[str, torch.Tensor]  # per-problem/per-trajectory tensors, gathered across processes for logging
    examples: dict[str, str] = field(default_factory=dict)


def _sampling(algo: AlgorithmConfig, seed: int | None) -> SamplingConfig:
    return SamplingConfig(algo.temperature, algo.top_p, algo.max_new_tokens, seed)


def _rl_sequences(prompt_ids: list[list[int]], groups: list[list[Completion]], adv: torch.Tensor) -> list[TrainSequence]:
    """RL trajectories; zero-advantage ones are kept (their tokens count in the token mean)."""
    adv = adv.view(len(groups), -1)  # [B, G]
    return [TrainSequence(p, c.token_ids, "rl", advantage=float(adv[b, g]))
            for b, (p, group) in enumerate(zip(prompt_ids, groups)) for g, c in enumerate(group) if c.token_ids]


def collect(inputs: StepInputs, problems: list[Problem], seed: int | None = None) -> StepBatch:
    method = inputs.algo.method
    if method == "sft":
        return _collect_sft(inputs, problems)
    batch = (_collect_luffy if method == "luffy" else _collect_autonomous_and_guided)(inputs, problems, seed)
    attach_old_logprobs(inputs, batch.sequences)
    return batch


def _collect_autonomous_and_guided(inp: StepInputs, problems: list[Problem], seed: int | None) -> StepBatch:
    """sgpo, grpo, imitation, guided_rl: G_a autonomous rollouts per problem with the RL term,
    plus (except grpo) G_g guided rollouts per problem that has a strategy, sampled together."""
    algo, tok = inp.algo, inp.tokenizer
    auto_texts = render_prompts(tok, problems, guided=False, style=inp.style)
    auto_ids = encode_prompts(tok, auto_texts)
    guided = method_uses_guidance(algo.method)
    has = [i for i, p in enumerate(problems) if p.strategy] if guided else []
    subset = [problems[i] for i in has]
    guided_ids = encode_prompts(tok, render_prompts(tok, subset, guided=True, style=inp.style))
    # the generator gets the token ids the losses score, not text it would tokenize again
    requests = [(auto_ids, problems, algo.group_auto)] + ([(guided_ids, subset, algo.group_guided)] if guided else [])
    sampled = sample_and_score(inp.generator, requests, _sampling(algo, seed))
    auto, r_auto = sampled[0]
    adv = group_advantages(r_auto.flatten(), algo.group_auto, scale=algo.adv_scale)  # [B*G_a]
    seqs = _rl_sequences(auto_ids, auto, adv)
    p_auto = r_auto.mean(1)  # [B]
    stats = {"reward/auto": r_auto.flatten(), "p_auto": p_auto,
             "len/auto": _lengths(auto), "trunc/auto": _truncated(auto), "mentions/auto": _mentions(auto)}
    examples = {"unguided": auto[0][0].text} if auto else {}
    if guided:
        groups, r_g = sampled[1]
        guided_seqs, guided_stats, ex = _guided(inp, problems, has, guided_ids, groups, r_g,
                                                auto_ids, p_auto)
        seqs += guided_seqs
        stats.update(guided_stats)
        examples.update(ex)
    return StepBatch(seqs, stats, examples)


def method_uses_guidance(method: str) -> bool:
    return method in ("sgpo", "imitation", "guided_rl")


def _weights(inp: StepInputs, problems: list[Problem], p_auto: torch.Tensor, p_guided: torch.Tensor) -> torch.Tensor:
    """w_i per problem [B] (spec 2.6); 0 where there is no strategy (p_guided is NaN)."""
    algo = inp.algo
    competence = None
    if algo.weight_mode == "competence":
        prev = torch.tensor([inp.competence.get(p.id, float("nan")) for p in problems])
        competence = torch.where(prev.isnan(), torch.zeros_like(prev), prev)
        updated = update_competence(None, p_auto, algo.competence_momentum)
        seen = ~prev.isnan()
        updated[seen] = update_competence(prev[seen], p_auto[seen], algo.competence_momentum)
        inp.competence.update({p.id: float(c) for p, c in zip(problems, updated)})
    w = instance_weights(p_auto, torch.nan_to_num(p_guided, nan=0.0), mode=algo.weight_mode, competence=competence)
    w[p_guided.isnan()] = 0.0  # no strategy: RL term only
    return w


def _guided(inp: StepInputs, problems: list[Problem], has: list[int], guided_ids: list[list[int]],
            groups: list[list[Completion]], r_g: torch.Tensor, auto_ids: list[list[int]],
            p_auto: torch.Tensor) -> tuple[list[TrainSequence], dict[str, torch.Tensor], dict[str, str]]:
    algo = inp.algo
    p_guided = torch.full_like(p_auto, float("nan"))
    if has:
        p_guided[has] = r_g.mean(1)
    w = _weights(inp, problems, p_auto, p_guided)
    stats = {"reward/guided": r_g.flatten(), "p_guided": p_guided[has], "weight": w, "weight_guided": w[has],
             "len/guided": _lengths(groups), "no_strategy": torch.tensor([float(len(problems) - len(has))])}
    examples = {"guided": groups[0][0].text} if groups else {}
    if algo.method == "guided_rl":
        adv = group_advantages(r_g.flatten(), algo.group_guided, scale=algo.adv_scale)
        return _rl_sequences(guided_ids, groups, adv), stats, examples
    eligible = [(b, c) for b, group in enumerate(groups) for g, c in enumerate(group)
                if c.token_ids and w[has[b]] > 0 and (algo.distill_on == "all" or r_g[b, g] > 0)]
    if algo.method == "imitation":  # ablation: NLL on eligible guided trajectories, unguided context
        seqs = [TrainSequence(auto_ids[has[b]], c.token_ids, "nll", weight=inp.loss.distill_coef * float(w[has[b]]))
                for b, c in eligible]
        return seqs, stats, examples
    return _distill_sequences(inp, eligible, has, guided_ids, auto_ids, w), stats, examples


def _distill_sequences(inp: StepInputs, eligible: list[tuple[int, Completion]], has: list[int],
                       guided_ids: list[list[int]], auto_ids: list[list[int]], w: torch.Tensor) -> list[TrainSequence]:
    """Teacher targets from the strategy-conditioned context, computed right after generation;
    the student sees the same trajectory after the unguided prompt."""
    if not eligible:
        return []
    algo = inp.algo
    comps = [c.token_ids for _, c in eligible]
    targets = teacher_targets(inp.teacher, [guided_ids[b] for b, _ in eligible], comps, top_k=algo.top_k,
                              pad_id=inp.pad_id, batch_size=inp.batch_size, chunk_size=inp.chunk_size,
                              temperature=algo.temperature)
    student_prompts = [auto_ids[has[b]] for b, _ in eligible]
    return [TrainSequence(p, c, "distill", weight=float(w[has[b]]), support_ids=t.support_ids,
                          teacher_lp=t.teacher_lp, teacher_lp_sampled=t.teacher_lp_sampled)
            for (b, _), p, c, t in zip(eligible, student_prompts, comps, targets)]


def attach_old_logprobs(inp: StepInputs, seqs: list[TrainSequence]) -> None:
    """With several updates per rollout (PPO epochs x mini-batches), freeze the rollout-time
    student log-probs now; with one update they equal the current ones and are not computed."""
    if inp.algo.ppo_epochs * inp.algo.mini_batches == 1:
        return
    todo = [s for s in seqs if s.role in ("rl", "distill")]
    if not todo:
        return
    need_support = inp.loss.proximal in ("c1", "c3")
    support = [s.support_ids if s.role == "distill" and need_support else None for s in todo]
    olds = old_logprobs(inp.policy, [s.prompt_ids for s in todo], [s.completion_ids for s in todo], support,
                        pad_id=inp.pad_id, batch_size=inp.batch_size, chunk_size=inp.chunk_size,
                        temperature=inp.algo.temperature)
    for s, (lp, sup) in zip(todo, olds):
        s.old_logp, s.old_support_lp = lp, sup


def _collect_sft(inp: StepInputs, problems: list[Problem]) -> StepBatch:
    tok = inp.tokenizer
    ids = encode_prompts(tok, render_prompts(tok, problems, guided=False, style=inp.style))
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    seqs = [TrainSequence(p, tok(pr.teacher_response, add_special_tokens=False)["input_ids"] + eos, "nll")
            for p, pr in zip(ids, problems)]
    return StepBatch(seqs, {"len/teacher": torch.tensor([float(s.num_tokens) for s in seqs])})


def _collect_luffy(inp: StepInputs, problems: list[Problem], seed: int | None) -> StepBatch:
    """LUFFY: per group G_a - 1 on-policy samples plus the strong-model trace; advantage over
    the whole group; the off-policy trace uses the shaped, unclipped objective."""
    algo, tok = inp.algo, inp.tokenizer
    ids = encode_prompts(tok, render_prompts(tok, problems, guided=False, style=inp.style))
    [(on, r_on)] = sample_and_score(inp.generator, [(ids, problems, algo.group_auto - 1)], _sampling(algo, seed))
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    off = [tok(p.teacher_response, add_special_tokens=False)["input_ids"] + eos for p in problems]
    r_off = torch.tensor([score(p.teacher_response or "", p.answer) for p in problems])  # [B]
    rewards = torch.cat([r_on, r_off[:, None]], dim=1)  # [B, G_a]
    adv = group_advantages(rewards.flatten(), algo.group_auto, scale=algo.luffy_adv_scale).view(len(problems), -1)
    seqs = _rl_sequences(ids, on, adv[:, :-1].flatten())
    seqs += [TrainSequence(p, o, "offpolicy", advantage=float(a)) for p, o, a in zip(ids, off, adv[:, -1])]
    stats = {"reward/auto": r_on.flatten(), "p_auto": r_on.mean(1), "reward/offpolicy": r_off,
             "len/auto": _lengths(on)}
    return StepBatch(seqs, stats, {"unguided": on[0][0].text} if on else {})


def _lengths(groups: list[list[Completion]]) -> torch.Tensor:
    return torch.tensor([float(len(c.token_ids)) for g in groups for c in g])


def _truncated(groups: list[list[Completion]]) -> torch.Tensor:
    return torch.tensor([float(c.finish_reason == "length") for g in groups for c in g])


def _mentions(groups: list[list[Completion]]) -> torch.Tensor:
    return torch.tensor([float(any(w in c.text.lower() for w in MENTION_WORDS)) for g in groups for c in g])
