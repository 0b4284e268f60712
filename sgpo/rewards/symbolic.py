"""math-verify's symbolic comparison, guarded against numbers too large to evaluate.

This is the expensive, untrusted part of grading (sympy can run for minutes, or hold the GIL
in one big-integer operation for hours), so it runs in the grader's worker processes, which
are killed at their deadline (:mod:`sgpo.rewards.workers`). Nothing here has a deadline of
its own; tests also call it directly as the in-process reference.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from functools import lru_cache
from typing import Any

from sgpo.rewards.matching import Comparison, decide, quick_equal

MAX_ANSWER_CHARS = 1000  # longer answer spans are compared as strings only (parsing cost)
# integers larger than this many bits are not computed (see magnitude); a process setting, so
# that a test can switch the guard off in a worker to see the deadline stop a long C call
MAX_COST_BITS = int(os.environ.get("SGPO_GRADER_MAX_COST_BITS", 1 << 20))


class GraderTimeout(BaseException):
    """Grading gave up: the deadline passed, or the answer is too large to evaluate. A
    BaseException so that the broad ``except Exception`` handlers inside math-verify and
    sympy do not swallow it."""


_MV: dict[str, Any] = {}
_MV_LOCK = threading.Lock()
# One comparison of each kind, run once at worker start: math-verify and sympy import
# submodules lazily on first use; doing it up front keeps that cost out of every deadline.
_WARMUP = [("0.5", "\\frac{1}{2}"), ("(1,2]", "(1,2]"), ("\\{1,2\\}", "1,2"), ("x^2+2x+1", "(x+1)^2"),
           ("\\text{A}", "A"), ("50\\%", "0.5"), ("30^\\circ", "30"), ("x=3", "3"), ("\\sqrt{2}/2", "\\sin(\\pi/4)"),
           ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"), ("(1,2)", "(2,1)"),
           ("\\prod_{k=1}^{3} k", "6"), ("x \\le 3", "x \\in (-\\infty, 3]")]


def math_verify() -> dict[str, Any]:
    """Import and warm up math-verify once; silence its warning that its alarm-based timeout
    is off (the worker's deadline applies instead)."""
    if _MV:
        return _MV
    with _MV_LOCK:
        if _MV:
            return _MV
        import math_verify as mv_module

        class _DropTimeoutWarning(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                return "Timeout is disabled" not in record.getMessage()

        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_DropTimeoutWarning())
        mv = dict(parse=mv_module.parse, verify=mv_module.verify)
        for a, b in _WARMUP:
            mv["verify"](mv["parse"]("$" + b + "$", parsing_timeout=None), mv["parse"]("$" + a + "$", parsing_timeout=None),
                         timeout_seconds=None)
        _MV.update(mv)
    return _MV


def magnitude(expr: Any) -> tuple[float, float]:
    """(upper bound on log2|value|, upper bound on the bits of any integer sympy may compute
    while evaluating ``expr``). Symbols count as small. Values below 1 have negative logs, so
    a small exponent such as ``(\\sqrt{13}-5)/6`` is known to be small."""
    import sympy

    if isinstance(expr, sympy.Integer):
        bits = float(max(int(expr).bit_length(), 1))
        return bits, bits
    if isinstance(expr, sympy.Rational):
        p, q = int(expr.p).bit_length(), int(expr.q).bit_length()
        return float(p - q + 1), float(max(p, q, 1))
    if isinstance(expr, sympy.Float):
        _, man, exp, bc = expr._mpf_
        return (float(exp + bc), float(max(bc, 1))) if man else (0.0, 1.0)
    if isinstance(expr, sympy.Pow):
        base_v, base_c = magnitude(expr.base)
        exp_v, exp_c = magnitude(expr.exp)
        if exp_v > 64:
            return math.inf, math.inf
        value = 2.0**exp_v * max(abs(base_v), 1.0)  # |log2 b^e| <= |e| * |log2 b|
        return value, max(base_c, exp_c, value)
    if isinstance(expr, (sympy.factorial, sympy.factorial2, sympy.binomial, sympy.gamma)):
        n_v = max(magnitude(a)[0] for a in expr.args)
        if n_v > 64:
            return math.inf, math.inf
        n = 2.0**n_v
        return n * max(n_v, 1.0), n * max(n_v, 1.0)
    if isinstance(expr, sympy.Product):  # prod_{k=1}^{n} f(k): n factors of growing size
        n_v = max((magnitude(lim[-1])[0] for lim in expr.limits), default=1.0)
        if n_v > 64:
            return math.inf, math.inf
        n = 2.0**n_v
        term_v = max(magnitude(expr.function)[0], 1.0)
        return n * n_v * term_v, n * n_v * term_v
    args = getattr(expr, "args", ())
    if not args:
        return 1.0, 1.0
    sizes = [magnitude(a) for a in args]
    cost = max(c for _, c in sizes)
    if isinstance(expr, sympy.Mul):
        value = sum(v for v, _ in sizes)
        return value, max(cost, sum(max(v, 0.0) for v, _ in sizes))
    if isinstance(expr, sympy.Add):
        return max(v for v, _ in sizes) + math.log2(len(sizes)), cost
    return max(v for v, _ in sizes) + 1.0, cost


def too_big(parsed: list[Any]) -> bool:
    """True if evaluating ``parsed`` could mean one endless C-level big-integer operation."""
    return any(not isinstance(p, str) and magnitude(p)[1] > MAX_COST_BITS for p in parsed)


@lru_cache(maxsize=8192)
def parse_span(span: str) -> tuple[Any, ...]:
    """math-verify parse of one answer span (its alarm timeout off: the worker's deadline applies)."""
    return tuple(math_verify()["parse"]("$" + span + "$", parsing_timeout=None))


@lru_cache(maxsize=8192)
def spans_equal(candidate: str, gold: str) -> bool:
    """Equality of two normalised spans: the cheap path first, then math-verify. Raises
    :class:`GraderTimeout` for numbers too large to evaluate."""
    quick = quick_equal(candidate, gold)
    if quick is not None:
        return quick
    if len(candidate) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    gold_p, cand_p = list(parse_span(gold)), list(parse_span(candidate))
    if not gold_p or not cand_p:
        return False
    if too_big(gold_p) or too_big(cand_p):
        raise GraderTimeout("answer too large to evaluate")
    return bool(math_verify()["verify"](gold_p, cand_p, timeout_seconds=None))


def compare(cmp: Comparison) -> bool:
    """The verdict for ``cmp`` (never None: math-verify decides every pair)."""
    return bool(decide(cmp, spans_equal))
