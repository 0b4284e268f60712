"""Scoring extracted strategies with the student they will guide (``sgpo score-strategies``).

Two measurements per candidate, both by sampling the student through
:mod:`sgpo.generation` with the training prompts (:func:`sgpo.prompts.messages`) and grading
with :func:`sgpo.rewards.score`:

- behavioural leak: asked for the final answer only, with no reasoning, how much more often
  does the student get it right with the strategy than without? A strategy that lets the
  student answer without reasoning carries the answer in some form the string and symbolic
  filters missed; the candidate is rejected when the gain exceeds ``leak_threshold``.
- utility: the guided success rate p_g (with reasoning), next to the autonomous rate p_a.

Per problem the non-leaking candidate with the highest p_g is kept (ties: the earlier one).
Records that were not ``ok`` pass through unchanged, so nothing is dropped.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgpo.generation.base import Generator, SamplingConfig
from sgpo.io import DataError, append_jsonl, repair_jsonl_tail, write_json_atomic
from sgpo.prompts import messages, render
from sgpo.schema import validate_strategy
from sgpo.strategies.store import STATUSES, latest_records, record_key

ANSWER_ONLY_INSTRUCTION = ("Reply with only the final answer within \\boxed{}: no reasoning, no explanation, "
                           "no other text.")


@dataclass(frozen=True)
class ScoreConfig:
    student: str  # student model name: recorded, and part of the resume key
    samples: int = 4  # student samples per prompt
    leak_threshold: float = 0.5  # reject when answer-only success with - without the strategy exceeds this
    temperature: float = 1.0
    max_new_tokens: int = 512  # reasoning samples (p_a, p_g)
    answer_max_new_tokens: int = 32  # answer-only probes
    chunk_size: int = 8  # problems per generation round; records are appended after each
    seed: int | None = 0
    show_progress: bool = True


def _candidates(rec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(rec.get("candidates") or ([rec["strategy"]] if rec.get("strategy") else []))


def success_rates(generator: Generator, tokenizer: Any, chats: list[list[dict[str, str]]], golds: list[str],
                  sampling: SamplingConfig, n: int) -> list[float]:
    """Mean reward over ``n`` samples for each chat (one generate call for all of them)."""
    from sgpo.rewards import score

    if not chats:
        return []
    outs = generator.generate([render(tokenizer, c) for c in chats], sampling, n)
    return [sum(score(c.text, gold) for c in row) / n for row, gold in zip(outs, golds)]


def apply_scores(rec: dict[str, Any], p_a: float, answer_without: float, answer_with: list[float],
                 p_g: list[float], config: ScoreConfig) -> dict[str, Any]:
    """The scored copy of an ``ok`` record: per-candidate scores, the best non-leaking
    candidate as its strategy, or status ``leaked`` when every candidate leaks."""
    out = dict(rec)
    cands = _candidates(rec)
    per = []
    for cand, w, g in zip(cands, answer_with, p_g):
        gap = w - answer_without
        per.append({"p_g": g, "answer_only_with": w, "behavioural_gap": gap,
                    "behavioural_leak": gap > config.leak_threshold})
    out["scores"] = {"student": config.student, "samples": config.samples, "p_a": p_a,
                     "answer_only_without": answer_without, "candidates": per}
    clean = [i for i, s in enumerate(per) if not s["behavioural_leak"]]
    rejected = list(rec.get("rejected", []))
    for i, s in enumerate(per):
        if s["behavioural_leak"]:
            reason = (f"behavioural leak: answer-only success {s['answer_only_with']:.2f} with the strategy vs "
                      f"{answer_without:.2f} without (gap > {config.leak_threshold})")
            rejected.append({"candidate": validate_strategy(cands[i]).render(), "reason": reason})
    out["rejected"] = rejected
    if not clean:
        out["status"] = "leaked"
        for k in ("strategy", "strategy_text", "p_g"):
            out.pop(k, None)
        return out
    best = max(clean, key=lambda i: (per[i]["p_g"], -i))
    strategy = validate_strategy(cands[best])
    out.update(strategy=strategy.to_dict(), strategy_text=strategy.render(), p_g=per[best]["p_g"], p_a=p_a)
    return out


def score_chunk(records: list[dict[str, Any]], generator: Generator, tokenizer: Any,
                config: ScoreConfig) -> list[dict[str, Any]]:
    """Score the ``ok`` records of a chunk with two generate calls (answer-only probes, then
    reasoning samples) covering every problem and candidate; other records pass through."""
    ok = [r for r in records if r.get("status") == "ok"]
    texts = [[validate_strategy(c).render() for c in _candidates(r)] for r in ok]
    answer_chats, reason_chats, golds = [], [], []
    for r, cands in zip(ok, texts):
        answer_chats += [messages(r["problem"], s, instruction=ANSWER_ONLY_INSTRUCTION) for s in [None, *cands]]
        reason_chats += [messages(r["problem"], s) for s in [None, *cands]]
        golds += [str(r["answer"])] * (1 + len(cands))
    answer = SamplingConfig(config.temperature, max_new_tokens=config.answer_max_new_tokens, seed=config.seed)
    reason = SamplingConfig(config.temperature, max_new_tokens=config.max_new_tokens, seed=config.seed)
    answer_rates = success_rates(generator, tokenizer, answer_chats, golds, answer, config.samples)
    reason_rates = success_rates(generator, tokenizer, reason_chats, golds, reason, config.samples)
    scored: dict[int, dict[str, Any]] = {}
    pos = 0
    for r, cands in zip(ok, texts):
        k = len(cands)
        a, g = answer_rates[pos : pos + 1 + k], reason_rates[pos : pos + 1 + k]
        scored[id(r)] = apply_scores(r, g[0], a[0], a[1:], g[1:], config)
        pos += 1 + k
    return [scored.get(id(r), r) for r in records]


def attach_problems(records: list[dict[str, Any]], data: dict[str, tuple[str, str]] | None,
                    source: str) -> None:
    """Fill in problem and answer from ``data`` (id -> (problem, answer)) where a record lacks
    them; an ``ok`` record that still lacks them is an error naming the id."""
    for row, rec in enumerate(records, start=1):
        if data is not None and (not rec.get("problem") or rec.get("answer") in (None, "")):
            if str(rec.get("id")) in data:
                rec["problem"], rec["answer"] = data[str(rec["id"])]
        if rec.get("status") == "ok":
            for f in ("problem", "answer"):
                if rec.get(f) in (None, ""):
                    raise DataError(source, f"record for id '{rec.get('id')}' has no {f}: pass --data with the "
                                    "problems", row=row, field=f)


def scored_key(rec: dict[str, Any], student: str) -> tuple[str, ...]:
    return (*record_key(rec), student)


def score_records(records: list[dict[str, Any]], generator: Generator, tokenizer: Any,
                  output: str | os.PathLike, config: ScoreConfig) -> dict[str, Any]:
    """Score every record not yet in ``output`` (same extraction key and student), appending
    after each chunk; returns the summary, also written to ``OUTPUT.summary.json``."""
    from tqdm.auto import tqdm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    repair_jsonl_tail(output)
    done = latest_records(output, key=lambda r: scored_key(r, config.student))
    todo = [r for r in records if scored_key(r, config.student) not in done]
    chunks = [todo[i : i + config.chunk_size] for i in range(0, len(todo), config.chunk_size)]
    for chunk in tqdm(chunks, desc="score", unit="chunk", disable=not config.show_progress):
        append_jsonl(output, [{**r, "student": config.student} for r in score_chunk(chunk, generator, tokenizer,
                                                                                     config)])
    final = latest_records(output, key=lambda r: scored_key(r, config.student))
    mine = [final[k] for k in (scored_key(r, config.student) for r in records) if k in final]
    counts = Counter(r["status"] for r in mine)
    p_gs = [r["p_g"] for r in mine if r.get("status") == "ok" and "p_g" in r]
    summary = {"output": str(output), "student": config.student, "problems": len(records),
               "scored_this_run": len(todo), "statuses": {s: counts.get(s, 0) for s in STATUSES},
               "behavioural_leaks": sum(r.get("reason", "").startswith("behavioural") for m in mine
                                        for r in m.get("rejected", [])),
               "mean_p_g": round(sum(p_gs) / len(p_gs), 4) if p_gs else None}
    write_json_atomic(output.with_suffix(".summary.json"), summary)
    print(f"score-strategies: {summary}", file=sys.stderr)
    return summary
