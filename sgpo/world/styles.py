"""The strong model's worked solutions in several styles, and the one fixed strategy extractor.

The trace-style dial (issue 17, ``WorldSpec.trace_style``) asks whether imitating a trajectory
and distilling a strategy extracted from it part ways when the strong model does not write in
the student's own format. Every style solves the same problem with the same answer, and every
style is written with pieces the world's tokenizer already has, so the student (and its cached
pre-trained model) is the same across the dial (``tests/test_world_dials.py`` checks both). For
the problem ``Apply mip tob to the lock 782 .`` (reverse, then add 3):

* ``T0`` native, the student's own format: ``mip tob reverse add 3 : 2 8 7 -> 5 1 0 . \\boxed{510}``
* ``T1`` skipped step: ``mip tob reverse add 3 : 5 1 0 . \\boxed{510}`` (no reordered line)
* ``T2`` answer only: ``mip tob : \\boxed{510}``
* ``T3`` another route: ``mip tob add 3 reverse : 0 1 5 -> 5 1 0 . \\boxed{510}`` (shift first)
* ``T4`` long and exploratory: one to three wrong tries drawn for this instance, each closed by
  ``not .``, then the native line
* ``T5`` unfaithful: the native line, but in a share ``unfaithful_share`` of traces the
  reordered digits are another order's (the final line is still right)

:func:`extract_strategy` derives the strategy from the problem and the trace alone (it knows the
catalogue of procedures, never the keyword -> procedure map), so SFT and SGPO start from the
same information. Plain Python, no torch.
"""

from __future__ import annotations

import random
import re

from sgpo.world.tasks import ORDERS, STYLES, Method, WorldSpec, _spaced, answer_of

__all__ = ["STYLES", "STYLE_TEXT", "extract_strategy", "problem_digits", "render_trace"]
STYLE_TEXT = {"T0": "native", "T1": "skipped step", "T2": "answer only", "T3": "another route",
              "T4": "long, exploratory", "T5": "unfaithful"}


def _boxed(digits: tuple[int, ...]) -> str:
    return f"\\boxed{{{answer_of(digits)}}}"


def _steps(m: Method, shift_first: bool = False) -> str:
    """The procedure's words as a trace names them: ``[word] order add N`` (``add N order`` for
    the route that shifts first)."""
    steps = f"add {m.shift} {m.order}" if shift_first else f"{m.order} add {m.shift}"
    return f"{m.word} {steps}".strip()


def render_trace(style: str, spec: WorldSpec, m: Method, keyword: str, digits: tuple[int, ...],
                 rng: random.Random) -> str:
    """The worked solution of ``keyword`` on ``digits`` by procedure ``m`` in ``style``. ``rng``
    draws what is instance-specific (T4's wrong tries, which T5 traces are unfaithful and how)."""
    mid, out = m.reorder(digits), m.apply(digits)
    if style == "T0":
        return m.solution(keyword, digits)
    if style == "T1":
        return f"{keyword} {_steps(m)} : {_spaced(out)} . {_boxed(out)}"
    if style == "T2":
        return f"{keyword} : {_boxed(out)}"
    if style == "T3":
        shifted = tuple((d + m.shift) % 10 for d in digits)
        return f"{keyword} {_steps(m, shift_first=True)} : {_spaced(shifted)} -> {_spaced(out)} . {_boxed(out)}"
    if style == "T4":
        others = [o for o in spec.methods if (o.order, o.shift) != (m.order, m.shift)]
        tries = rng.sample(others, rng.randint(1, 3))
        wrong = " ".join(f"{keyword} {_steps(t)} : {_spaced(t.reorder(digits))} -> {_spaced(t.apply(digits))} not ."
                         for t in tries)
        return f"{wrong} {m.solution(keyword, digits)}"
    if style == "T5":
        if rng.random() < spec.unfaithful_share:
            other = rng.choice([o for o in ORDERS if o in spec.orders and o != m.order])
            mid = Method(other, m.shift).reorder(digits)
        return f"{keyword} {_steps(m)} : {_spaced(mid)} -> {_spaced(out)} . {_boxed(out)}"
    raise ValueError(f"unknown trace style {style!r} (have {', '.join(STYLES)})")


_BOXED = re.compile(r"\\boxed\{(\d+)\}")
_DIGITS = re.compile(r"(\d+) \.$")
_ORDER = "|".join(ORDERS)
# an attempt names its procedure as "order add N" or, shifting first, "add N order"
_ATTEMPT = re.compile(rf"\b(?:({_ORDER}) add (\d)|add (\d) ({_ORDER}))\b")


def problem_digits(problem: str) -> tuple[int, ...] | None:
    """The digits of a world problem (``Apply ... to the tag 648 .`` -> (6, 4, 8))."""
    found = _DIGITS.search(problem.strip())
    return tuple(int(c) for c in found.group(1)) if found else None


def extract_strategy(problem: str, trace: str, spec: WorldSpec) -> str | None:
    """The strategy of a worked solution, from the problem and the trace only: of the
    procedures the trace names (every attempt), the one that turns the problem's digits into
    the boxed answer; where the trace names none that does (an answer-only trace), the one
    procedure of the catalogue (``spec.methods``) that does. None when no procedure, or more
    than one, fits (then the problem trains without a strategy)."""
    digits, boxed = problem_digits(problem), _BOXED.findall(trace)
    if digits is None or not boxed:
        return None
    answer = boxed[-1]
    catalogue = {(m.order, m.shift): m for m in spec.methods}
    named = []
    for a in _ATTEMPT.finditer(trace):
        order, shift = (a.group(1), a.group(2)) if a.group(1) else (a.group(4), a.group(3))
        if (order, int(shift)) in catalogue:
            named.append(catalogue[(order, int(shift))])
    fits = [m for m in named if answer_of(m.apply(digits)) == answer]
    if not fits:
        fits = [m for m in spec.methods if answer_of(m.apply(digits)) == answer]
    if len({(m.order, m.shift) for m in fits}) != 1:
        return None
    return fits[-1].strategy()
