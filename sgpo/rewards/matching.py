"""What one grading asks (:class:`Comparison`), the exact comparisons that need no sympy
(:func:`quick_equal`), and how answers with several parts are matched (:func:`decide`).

Standard library only. The caller's process runs :func:`decide` with :func:`quick_equal`
(the cheap path, bounded time by construction: regular expressions and integer arithmetic
on at most 30-digit numbers); only what that cannot settle goes to a worker process, which
runs the same :func:`decide` with math-verify's comparison.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

from sgpo.rewards.answers import label_of

SINGLE, SET, KEYED = "single", "set", "keyed"


@dataclass(frozen=True)
class Comparison:
    """One grading question, hashable (the verdict cache key) and picklable (sent to a worker).

    ``mode``: ``single`` compares ``candidate[0]`` with ``gold[0]``; ``set`` matches the parts
    one to one in any order; ``keyed`` (gold parts ``name = value`` with distinct names) matches
    by name when the candidate names its parts, else in order. When the part counts differ,
    the whole strings are compared instead (a tuple for a listed gold, say), as math-verify
    would."""

    candidate: tuple[str, ...]
    gold: tuple[str, ...]
    mode: str = SINGLE
    candidate_whole: str = ""
    gold_whole: str = ""


Equal = Callable[[str, str], "bool | None"]  # None: this comparer cannot decide the pair


def _match_keyed(cand: tuple[str, ...], gold: tuple[str, ...], equal: Equal) -> bool | None:
    gold_labels = [label_of(g) for g in gold]
    cand_labels = [label_of(c) for c in cand]
    if all(cand_labels) and {(c[0], c[1]) for c in cand_labels} == {(g[0], g[1]) for g in gold_labels}:  # type: ignore[index]
        by_name = {(c[0], c[1]): c[2] for c in cand_labels}  # type: ignore[index]
        pairs = [(by_name[(g[0], g[1])], g[2]) for g in gold_labels]  # type: ignore[index]
    else:
        pairs = [(c[2] if c else cand[i], g[2]) for i, (c, g) in enumerate(zip(cand_labels, gold_labels))]  # type: ignore[index]
    verdicts = [equal(c, g) for c, g in pairs]
    if all(v is True for v in verdicts):
        return True
    return False if any(v is False for v in verdicts) else None


def _value(part: str) -> str:
    label = label_of(part)
    return label[2] if label else part


def _match_set(cand: tuple[str, ...], gold: tuple[str, ...], equal: Equal) -> bool | None:
    """One-to-one matching in any order (greedy: answer equality is transitive)."""
    unused = [_value(c) for c in cand]
    undecided = False
    for g in (_value(p) for p in gold):
        hit = None
        for i, c in enumerate(unused):
            v = equal(c, g)
            if v is True:
                hit = i
                break
            undecided = undecided or v is None
        if hit is None:
            return None if undecided else False
        unused.pop(hit)
    return True


def decide(cmp: Comparison, equal: Equal) -> bool | None:
    """The verdict for ``cmp`` with the pairwise comparer ``equal``; None if ``equal`` left a
    pair undecided that the verdict depends on."""
    if cmp.mode == SINGLE:
        return equal(cmp.candidate[0], cmp.gold[0])
    if len(cmp.candidate) == len(cmp.gold):
        return (_match_keyed if cmp.mode == KEYED else _match_set)(cmp.candidate, cmp.gold, equal)
    return equal(cmp.candidate_whole, cmp.gold_whole)


# ---------------------------------------------------------------------------------------
# The cheap path: exact comparisons without sympy
# ---------------------------------------------------------------------------------------

_INT_RE = re.compile(r"^-?\d{1,15}$")
# a plain word answer ("Monday", "\text{Evelyn}"); sympy would read "seat" as s*e*a*t == "east"
_WORD_RE = re.compile(r"^(?:\\text\{\s*([A-Za-z][A-Za-z ]*?)\s*\}|([A-Za-z]{4,}))$")
_SPACE_RE = re.compile(r"\s+")
_LOOSE_SPACE_RE = re.compile(r"(?<=\W) | (?=\W)")  # a space next to a non-word character
_NUMBER_RE = re.compile(
    r"^(-)?\s*(?:(\d{1,30})(?:\.(\d{1,30}))?"  # 12, 0.5
    r"|\\[dt]?frac\{\s*(\d{1,15})\s*\}\{\s*(\d{1,15})\s*\}"  # \frac{3}{4}
    r"|\\[dt]?frac(\d)(\d)"  # \frac34
    r"|(\d{1,15})\s*/\s*(\d{1,15}))$")  # 3/4
_SIX_PLACES = 10**6


def as_word(span: str) -> str | None:
    m = _WORD_RE.match(span)
    return None if m is None else (m.group(1) or m.group(2)).lower()


def _squash(span: str) -> str:
    return _LOOSE_SPACE_RE.sub("", _SPACE_RE.sub(" ", span.strip()))


def simple_number(span: str) -> Fraction | None:
    """The exact value of an integer, a decimal or a fraction of integers; None otherwise."""
    m = _NUMBER_RE.match(span)
    if m is None:
        return None
    sign, whole, frac, n1, d1, n2, d2, n3, d3 = m.groups()
    if whole is not None:
        value = Fraction(int(whole + (frac or "")), 10 ** len(frac or ""))
    else:
        num, den = int(n1 or n2 or n3), int(d1 or d2 or d3)
        if den == 0:
            return None
        value = Fraction(num, den)
    return -value if sign else value


def quick_equal(candidate: str, gold: str) -> bool | None:
    """Equality of two normalised spans decided without sympy, or None. Agrees with
    math-verify on every pair it decides (tests/test_rewards.py checks this against it):
    identical strings (up to spacing around symbols), integers, plain words, and numbers
    whose exact values either match or both have at most 6 decimal places (math-verify
    compares numbers after rounding to 6 places, so only those can be called unequal)."""
    if not candidate or not gold:
        return False
    if candidate == gold or _squash(candidate) == _squash(gold):
        return True
    if _INT_RE.match(candidate) and _INT_RE.match(gold):
        return int(candidate) == int(gold)
    cand_word, gold_word = as_word(candidate), as_word(gold)
    if cand_word is not None and gold_word is not None:
        return cand_word == gold_word
    a, b = simple_number(candidate), simple_number(gold)
    if a is not None and b is not None:
        if a == b:
            return True
        if (a * _SIX_PLACES).denominator == 1 and (b * _SIX_PLACES).denominator == 1:
            return False
    return None
