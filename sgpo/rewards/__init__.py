"""The one answer grader of the project: training rewards, evaluation accuracy and the
strategy leak filter all call these functions, so the number optimised is the number
reported.

Grading is math-verify's symbolic comparison, with these things added around it:

* **The final answer is found by us** (:mod:`sgpo.rewards.answers`). The last complete
  ``\\boxed{}`` wins; text inside ``<think>...</think>`` is not an answer; a "the final answer
  is X" line after the last box overrides it. Without a box only an *anchored* answer counts
  ("the final answer is X", "Answer: X", read whole: ``2x + 3``, not ``2``): an unboxed,
  truncated rollout must not score because its last number happens to equal the gold answer.
* **Answers with several parts.** When the gold answer lists several (``1, 2, 3``,
  ``\\{1,2\\}``, ``(2, 2), (6, 2)``, ``k = 45, n = 2``), the boxes of the final group
  (``\\boxed{1} and \\boxed{2}``) are pooled and matched one to one, in any order, or by name
  / position when the gold names its parts. A single-part gold keeps last-box-wins, so
  boxing several candidates is not rewarded.
* **A cheap path in the caller's process** (:func:`sgpo.rewards.matching.quick_equal`):
  identical strings, integers, words and plain numbers are decided without sympy, in bounded
  time. Everything else goes to **worker processes killed at a CPU-time deadline**
  (:mod:`sgpo.rewards.workers`), so no grading can hang the caller or depend much on machine
  load. Verdicts are memoised, since G rollouts of one problem often give the same answer.
  Each process grading has up to ``SGPO_GRADER_WORKERS`` workers (default min(4, CPUs)),
  started on first need.

Known limitations (documented by tests): degrees vs radians are not equated
(``60^\\circ`` != ``\\frac{\\pi}{3}``); decimals are compared after rounding to 6 places as
math-verify does, so ``0.3333`` != ``1/3`` but ``0.333333`` == ``1/3``, and ``1`` != ``1.0001``
(graders with a relative tolerance accept that); percentages are lenient (``50\\%`` matches
both ``50`` and ``0.5``), as in math-verify.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

from sgpo.rewards import workers
from sgpo.rewards.answers import (anchored_answer, extract_boxed, final_group, find_boxes, label_of,
                                  normalize, resolve_decimal_commas, split_parts, strip_reasoning)
from sgpo.rewards.matching import KEYED, SET, Comparison, decide, quick_equal
from sgpo.rewards.symbolic import MAX_ANSWER_CHARS, GraderTimeout

__all__ = ["ScoreResult", "GraderTimeout", "score", "score_detailed", "extract_boxed", "equivalent"]

FALLBACK_TAIL_CHARS = 3000  # unboxed completions: the anchored answer is looked for in this many last chars
CACHE_SIZE = 16384  # memoised verdicts


@dataclass(frozen=True)
class ScoreResult:
    reward: float  # 1.0 correct, 0.0 otherwise (wrong, unparseable or timed out)
    extracted: str | None  # the answer span graded (final box(es), a final-answer line, or the anchored fallback)
    timed_out: bool  # grading hit the deadline (or the answer was too large to evaluate)


# ---------------------------------------------------------------------------------------
# Building the comparison
# ---------------------------------------------------------------------------------------


def _gold_comparison(candidate_parts: list[str], candidate: str, gold: str) -> Comparison:
    """Single-part gold: compare the candidate span whole. Several parts: the set (or named
    tuple) of the gold's parts against the candidate's parts."""
    candidate, gold = resolve_decimal_commas(candidate, gold)
    gold_parts = [normalize(p) for p in split_parts(gold)]
    if len(gold_parts) < 2:
        return Comparison((candidate,), (gold,))
    labels = [label_of(p) for p in gold_parts]
    named = all(labels) and len({lab[0] for lab in labels if lab}) == len(labels)
    cand_parts = [normalize(p) for c in candidate_parts for p in split_parts(c)]
    return Comparison(tuple(cand_parts), tuple(gold_parts), KEYED if named else SET, candidate, gold)


def _comparison(completion: str, gold: str) -> tuple[Comparison | None, str | None]:
    """What to compare for ``completion`` (None: no answer found) and the span extracted."""
    text = strip_reasoning(completion)
    gold_n = normalize(gold)
    boxes = find_boxes(text)
    if boxes:
        late = anchored_answer(text[boxes[-1].end :], final_only=True)
        if late is not None:  # "\boxed{255} ... The final answer is $10,455$."
            return _gold_comparison([late], normalize(late), gold_n), late
        group = final_group(text, boxes) if len(split_parts(gold_n)) > 1 else boxes[-1:]
        contents = [b.content for b in group]
        extracted = contents[-1] if len(contents) == 1 else ", ".join(contents)
        return _gold_comparison(contents, normalize(extracted), gold_n), extracted
    span = anchored_answer(text[-FALLBACK_TAIL_CHARS:])
    if span is None:
        return None, None
    return _gold_comparison([span], normalize(span), gold_n), span


# ---------------------------------------------------------------------------------------
# Deciding it: the cheap path here, the rest in a worker; verdicts memoised
# ---------------------------------------------------------------------------------------

_CACHE: OrderedDict[tuple[Comparison, float], str] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _too_long(cmp: Comparison) -> bool:
    return any(len(s) > MAX_ANSWER_CHARS for s in (*cmp.candidate, *cmp.gold))


def _verdict(cmp: Comparison, timeout_s: float) -> str:
    """TRUE / FALSE / TIMEOUT / ERROR for ``cmp`` within ``timeout_s`` CPU seconds."""
    quick = decide(cmp, quick_equal)
    if quick is not None:
        return workers.TRUE if quick else workers.FALSE
    if _too_long(cmp):  # parsing cost grows with length; such spans are compared as strings only
        return workers.FALSE
    key = (cmp, timeout_s)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    verdict = workers.run(cmp, timeout_s)
    if verdict != workers.ERROR:  # a timeout is cached too: CPU time barely depends on load
        with _CACHE_LOCK:
            _CACHE[key] = verdict
            if len(_CACHE) > CACHE_SIZE:
                _CACHE.popitem(last=False)
    return verdict


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------


def score_detailed(completion: str, gold: str, timeout_s: float = 5.0) -> ScoreResult:
    """Grade ``completion`` against the gold answer string. Never raises on bad input:
    garbage, empty text, time-outs and grader errors all score 0. ``timeout_s`` is CPU time of
    the worker process doing the symbolic comparison (see :mod:`sgpo.rewards.workers`)."""
    if not isinstance(completion, str) or not isinstance(gold, str) or not gold.strip():
        return ScoreResult(0.0, None, False)
    extracted = None
    try:
        cmp, extracted = _comparison(completion, gold)
        if cmp is None:
            return ScoreResult(0.0, None, False)
        verdict = _verdict(cmp, timeout_s)
    except workers.GraderUnavailable:
        raise
    except Exception:  # a grader bug must not kill a training run; the answer scores 0
        logging.getLogger(__name__).debug("grading error", exc_info=True)
        return ScoreResult(0.0, extracted, False)
    return ScoreResult(1.0 if verdict == workers.TRUE else 0.0, extracted, verdict == workers.TIMEOUT)


def score(completion: str, gold: str, timeout_s: float = 5.0) -> float:
    """1.0 if the completion's final answer (last ``\\boxed{}``) equals ``gold``, else 0.0."""
    return score_detailed(completion, gold, timeout_s).reward


def equivalent(candidate: str, gold: str, timeout_s: float = 5.0) -> bool:
    """Whether two answer strings (no box needed) are mathematically equal; False on
    time-out or error. Used by the strategy leak filter."""
    if not isinstance(candidate, str) or not isinstance(gold, str) or not candidate.strip() or not gold.strip():
        return False
    try:
        cand_n = normalize(candidate)
        return _verdict(_gold_comparison([cand_n], cand_n, normalize(gold)), timeout_s) == workers.TRUE
    except workers.GraderUnavailable:
        raise
    except Exception:
        logging.getLogger(__name__).debug("equivalence error", exc_info=True)
        return False
