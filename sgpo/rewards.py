"""The one answer grader of the project: training rewards, evaluation accuracy and the
strategy leak filter all call these functions, so the number optimised is the number
reported (spec section 2.2).

Grading is math-verify's symbolic comparison, with three things added around it:

* **The last complete ``\\boxed{}`` wins.** We find it ourselves by brace matching (math-verify
  would otherwise try every box and every LaTeX span, so an early wrong box could hide a
  later correct one, or vice versa). Without a box we fall back to math-verify's *anchored*
  extraction only ("the final answer is X", "Answer: X"): an unboxed, truncated rollout
  must not score because its last number happens to equal the gold answer.
* **A per-call deadline that works in any thread** (see :class:`_Watchdog`).
* **A cheap common path**: identical answer strings and small integers are decided without
  sympy; parses and comparisons are memoised, since G rollouts of one problem often give
  the same answer.

Known limitations (documented by tests): degrees vs radians are not equated
(``60^\\circ`` != ``\\frac{\\pi}{3}``); decimals are compared after rounding to 6 places as
math-verify does, so ``0.3333`` != ``1/3`` but ``0.333333`` == ``1/3``; percentages are
lenient (``50\\%`` matches both ``50`` and ``0.5``), as in math-verify.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, TypeVar

__all__ = ["ScoreResult", "GraderTimeout", "score", "score_detailed", "extract_boxed", "equivalent"]

T = TypeVar("T")

MAX_ANSWER_CHARS = 1000  # longer answer spans are compared as strings only (parsing cost)
FALLBACK_TAIL_CHARS = 3000  # unboxed completions: anchored extraction over this many last chars
MAX_MAGNITUDE_BITS = 1 << 20  # larger integer powers / factorials are not evaluated (see _too_big)
_REFIRE_S = 0.05  # re-raise the timeout this often if grading code swallowed it...
_MAX_FIRES = 40  # ...but never more often than this per call (a bound, whatever happens)


@dataclass(frozen=True)
class ScoreResult:
    reward: float  # 1.0 correct, 0.0 otherwise (wrong, unparseable or timed out)
    extracted: str | None  # the answer span graded (last box, or the anchored fallback)
    timed_out: bool  # grading hit the deadline (or the answer was too large to evaluate)


class GraderTimeout(BaseException):
    """Raised inside the grading thread at its deadline. A BaseException so that the broad
    ``except Exception`` handlers inside math-verify and sympy do not swallow it."""


# ---------------------------------------------------------------------------------------
# Deadline
#
# Why not math-verify's own timeout: it uses signal.alarm, which raises in worker threads
# (training graders, thread pools) and has one process-wide alarm. Why not a subprocess:
# pickling and a process per grading call cost far more than grading itself on the common
# path. Instead one daemon watchdog thread injects GraderTimeout into the grading thread
# with PyThreadState_SetAsyncExc at its deadline: registering a deadline is a heap push,
# and it works in any thread. Like a signal handler, an async exception is only delivered
# between bytecodes, so neither can stop one long C call (``10**(10**10)`` as a Python int
# holds the GIL for hours); such numbers are refused before sympy sees them (_too_big).
# ---------------------------------------------------------------------------------------

# private prototypes, so the shared ctypes.pythonapi function object is left untouched
_raise_in_thread = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi))
_clear_in_thread = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi))


class _Job:
    __slots__ = ("thread_id", "deadline", "active", "fired")

    def __init__(self, thread_id: int, deadline: float):
        self.thread_id, self.deadline, self.active, self.fired = thread_id, deadline, True, 0


class _Watchdog:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Job]] = []
        self._counter = itertools.count()
        self._thread: threading.Thread | None = None

    def start(self, seconds: float) -> _Job:
        job = _Job(threading.get_ident(), time.monotonic() + seconds)
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="sgpo-grader-watchdog", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (job.deadline, next(self._counter), job))
            if self._heap[0][2] is job:  # only an earlier deadline needs the watchdog awake
                self._cond.notify()
        return job

    def stop(self, job: _Job) -> None:
        """Deactivate ``job`` and drop a timeout already sent but not yet raised. Retried if
        the timeout lands inside this call, so it never escapes into the caller's code."""
        while True:
            try:
                with self._cond:
                    job.active = False
                    if job.fired:
                        _clear_in_thread(job.thread_id, None)  # NULL exception: clear pending
                return
            except GraderTimeout:
                continue

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and not self._heap[0][2].active:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, _, job = self._heap[0]
                now = time.monotonic()
                if now < deadline:
                    self._cond.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
                job.fired += 1
                _raise_in_thread(job.thread_id, GraderTimeout)
                if job.fired < _MAX_FIRES:
                    heapq.heappush(self._heap, (now + _REFIRE_S, next(self._counter), job))


_WATCHDOG = _Watchdog()


def _new_watchdog_after_fork() -> None:
    global _WATCHDOG  # the parent's thread and lock state do not survive fork
    _WATCHDOG = _Watchdog()


os.register_at_fork(after_in_child=_new_watchdog_after_fork)


def _with_deadline(fn: Callable[[], T], seconds: float) -> T:
    """Run ``fn()``; raise :class:`GraderTimeout` if it is still running after ``seconds``."""
    watchdog = _WATCHDOG
    job = watchdog.start(seconds)
    try:
        try:
            return fn()
        finally:
            watchdog.stop(job)
    except GraderTimeout:
        job.active = False  # the timeout may have landed before the inner stop() ran
        watchdog.stop(job)
        raise


# ---------------------------------------------------------------------------------------
# Extraction and normalisation
# ---------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?:\s*(\{)|\s+([^\s$\\{}]+))")
_BRACE_RE = re.compile(r"\\.|[{}]", re.DOTALL)  # an escaped char (skipped) or a brace


def extract_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5``),
    stripped; None if there is none. A box left unclosed by truncation is skipped, so the
    previous complete one counts. One linear pass, so adversarial text cannot make it slow."""
    if not isinstance(text, str) or ("\\boxed" not in text and "\\fbox" not in text):
        return None
    box_opens: set[int] = set()
    best_end, found = -1, None
    for m in _BOX_RE.finditer(text):
        if m.group(1) is not None:
            box_opens.add(m.start(1))
        else:  # "\boxed 5": one token up to whitespace or a math delimiter
            best_end, found = m.end(), m.group(2)
    stack: list[int] = []
    for m in _BRACE_RE.finditer(text):
        c = m.group(0)
        if c == "{":
            stack.append(m.start())
        elif c == "}" and stack:
            start = stack.pop()
            if start in box_opens and m.start() > best_end:
                best_end, found = m.start(), text[start + 1 : m.start()].strip()
    return found


_SCI_RE = re.compile(r"^(-?\d+(?:\.\d+)?)\s*[eE]\s*([+-]?\d+)$")
_THIN_SEP_RE = re.compile(r"(?<=\d)(?:\\,|\{,\}|\\!|\\ )(?=\d{3}(?!\d))")
_TEXT_WRAP_RE = re.compile(r"^\\(?:text|textbf|mbox|mathrm)\{\s*(-?\d[^{}]*)\}$")
_TRAILING_WORDS_RE = re.compile(r"^(-?\d[\d.,]*)\s+[A-Za-z]{2,}(?:\s+[A-Za-z]{2,})*\.?$")
_INT_RE = re.compile(r"^-?\d{1,15}$")
# a plain word answer ("Monday", "\text{Evelyn}"); sympy would read "seat" as s*e*a*t == "east"
_WORD_RE = re.compile(r"^(?:\\text\{\s*([A-Za-z][A-Za-z ]*?)\s*\}|([A-Za-z]{4,}))$")


def _as_word(span: str) -> str | None:
    m = _WORD_RE.match(span)
    return None if m is None else (m.group(1) or m.group(2)).lower()


def _normalize(span: str) -> str:
    """Rewrite answer forms math-verify misreads: ``4.5e33`` (read as 4.5*E*33), ``1\\,000``
    (thin-space thousands), ``\\text{5 cm}`` and ``18 dollars`` (a number with trailing words)."""
    s = span.strip().rstrip(".").strip()
    s = _THIN_SEP_RE.sub("", s)
    m = _TEXT_WRAP_RE.match(s)
    if m:
        s = m.group(1).strip()
    m = _TRAILING_WORDS_RE.match(s)
    if m:
        s = m.group(1)
    m = _SCI_RE.match(s)
    if m:
        s = f"{m.group(1)}\\times 10^{{{int(m.group(2))}}}"
    return s


# ---------------------------------------------------------------------------------------
# Symbolic comparison (math-verify), memoised
# ---------------------------------------------------------------------------------------

_MV: dict[str, Any] = {}
_MV_LOCK = threading.Lock()
# One comparison of each kind, run once before any deadline is armed: math-verify and sympy
# import submodules lazily on first use, and an import cut short by a timeout can leave
# half-initialised modules behind (e.g. a second copy of a config class that then fails
# isinstance checks). Warming up keeps imports out of the interruptible region.
_WARMUP = [("0.5", "\\frac{1}{2}"), ("(1,2]", "(1,2]"), ("\\{1,2\\}", "1,2"), ("x^2+2x+1", "(x+1)^2"),
           ("\\text{A}", "A"), ("50\\%", "0.5"), ("30^\\circ", "30"), ("x=3", "3"), ("\\sqrt{2}/2", "\\sin(\\pi/4)"),
           ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"), ("(1,2)", "(2,1)")]


def _math_verify() -> dict[str, Any]:
    """Import and warm up math-verify once (outside any deadline); silence its warning that
    we disabled its alarm-based timeout."""
    if _MV:
        return _MV
    with _MV_LOCK:
        if _MV:
            return _MV
        import math_verify
        from math_verify import ExprExtractionConfig, LatexExtractionConfig

        class _DropTimeoutWarning(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                return "Timeout is disabled" not in record.getMessage()

        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_DropTimeoutWarning())
        mv = dict(parse=math_verify.parse, verify=math_verify.verify,
                  anchored=[LatexExtractionConfig(try_extract_without_anchor=False, boxed_match_priority=0),
                            ExprExtractionConfig(try_extract_without_anchor=False)])
        for a, b in _WARMUP:
            mv["verify"](mv["parse"]("$" + b + "$", parsing_timeout=None), mv["parse"]("$" + a + "$", parsing_timeout=None),
                         timeout_seconds=None)
        mv["parse"]("The final answer is $1$.", extraction_config=mv["anchored"], parsing_timeout=None)
        _MV.update(mv)
    return _MV


def _magnitude_bits(expr: Any) -> float:
    """Upper bound on log2|value| of the integer arithmetic sympy may carry out on ``expr``
    (symbols count as small); ``inf`` when even the bound is astronomically large."""
    import sympy

    if isinstance(expr, sympy.Integer):
        return float(max(int(expr).bit_length(), 1))
    if isinstance(expr, sympy.Rational):
        return float(max(int(expr.p).bit_length(), int(expr.q).bit_length(), 1))
    if isinstance(expr, sympy.Float):
        return float(max(abs(expr._mpf_[2]) + expr._mpf_[3], 1)) if expr._mpf_[1] else 1.0
    if isinstance(expr, sympy.Pow):
        exp_bits = _magnitude_bits(expr.exp)
        if exp_bits > 64:
            return math.inf
        return _magnitude_bits(expr.base) * 2.0 ** exp_bits
    if isinstance(expr, (sympy.factorial, sympy.factorial2, sympy.binomial, sympy.gamma)):
        n_bits = max(_magnitude_bits(a) for a in expr.args)
        return math.inf if n_bits > 64 else 2.0 ** n_bits * n_bits
    args = getattr(expr, "args", ())
    if not args:
        return 1.0
    bits = [_magnitude_bits(a) for a in args]
    return sum(bits) if isinstance(expr, sympy.Mul) else max(bits) + 1


def _too_big(parsed: list[Any]) -> bool:
    """True if evaluating ``parsed`` could mean one endless C-level big-integer operation."""
    return any(not isinstance(p, str) and _magnitude_bits(p) > MAX_MAGNITUDE_BITS for p in parsed)


@lru_cache(maxsize=8192)
def _parse_span(span: str) -> tuple[Any, ...]:
    """math-verify parse of one answer span (the alarm timeout off: our deadline applies)."""
    return tuple(_math_verify()["parse"]("$" + span + "$", parsing_timeout=None))


@lru_cache(maxsize=8192)
def _spans_equal(candidate: str, gold: str) -> bool:
    """Symbolic equality of two normalised spans; raises GraderTimeout for oversized numbers."""
    if not candidate or not gold:
        return False
    if candidate == gold:
        return True
    if _INT_RE.match(candidate) and _INT_RE.match(gold):
        return int(candidate) == int(gold)
    cand_word, gold_word = _as_word(candidate), _as_word(gold)
    if cand_word is not None and gold_word is not None:
        return cand_word == gold_word
    if len(candidate) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    gold_p, cand_p = list(_parse_span(gold)), list(_parse_span(candidate))
    if not gold_p or not cand_p:
        return False
    if _too_big(gold_p) or _too_big(cand_p):
        raise GraderTimeout("answer too large to evaluate")
    return bool(_math_verify()["verify"](gold_p, cand_p, timeout_seconds=None))


def _fallback_equal(completion: str, gold: str) -> tuple[bool, str | None]:
    """No box: math-verify's anchored extraction ("the answer is X") on the completion tail."""
    mv = _math_verify()
    pred = mv["parse"](completion[-FALLBACK_TAIL_CHARS:], extraction_config=mv["anchored"], parsing_timeout=None)
    if not pred:
        return False, None
    extracted = next((p for p in reversed(pred) if isinstance(p, str)), None)
    if extracted is not None:
        return _spans_equal(_normalize(extracted), _normalize(gold)), extracted
    gold_p = list(_parse_span(_normalize(gold)))
    if not gold_p or _too_big(pred) or _too_big(gold_p):
        return False, None
    return bool(mv["verify"](gold_p, pred, timeout_seconds=None)), None


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------


def score_detailed(completion: str, gold: str, timeout_s: float = 5.0) -> ScoreResult:
    """Grade ``completion`` against the gold answer string. Never raises on bad input:
    garbage, empty text, time-outs and grader errors all score 0."""
    if not isinstance(completion, str) or not isinstance(gold, str) or not gold.strip():
        return ScoreResult(0.0, None, False)
    box = extract_boxed(completion)
    extracted = box
    try:
        _math_verify()  # imports and warm-up outside the deadline
        if box is not None:
            correct = _with_deadline(lambda: _spans_equal(_normalize(box), _normalize(gold)), timeout_s)
        else:
            correct, extracted = _with_deadline(lambda: _fallback_equal(completion, gold), timeout_s)
    except GraderTimeout:
        return ScoreResult(0.0, extracted, True)
    except Exception:  # a grader bug must not kill a training run; the answer scores 0
        logging.getLogger(__name__).debug("grading error", exc_info=True)
        return ScoreResult(0.0, extracted, False)
    return ScoreResult(1.0 if correct else 0.0, extracted, False)


def score(completion: str, gold: str, timeout_s: float = 5.0) -> float:
    """1.0 if the completion's final answer (last ``\\boxed{}``) equals ``gold``, else 0.0."""
    return score_detailed(completion, gold, timeout_s).reward


def equivalent(candidate: str, gold: str, timeout_s: float = 5.0) -> bool:
    """Whether two answer strings (no box needed) are mathematically equal; False on
    time-out or error. Used by the strategy leak filter."""
    if not isinstance(candidate, str) or not isinstance(gold, str) or not candidate.strip() or not gold.strip():
        return False
    try:
        _math_verify()  # imports and warm-up outside the deadline
        return _with_deadline(lambda: _spans_equal(_normalize(candidate), _normalize(gold)), timeout_s)
    except GraderTimeout:
        return False
    except Exception:
        logging.getLogger(__name__).debug("equivalence error", exc_info=True)
        return False
