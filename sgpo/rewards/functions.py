"""Reward functions of the user's own, weighted, graded concurrently: the one scoring path of
training rollouts (``reward`` section of the training config) and ``sgpo eval``.

A reward function is named ``module:callable`` (``mypkg.rewards:format_reward``, or a module
file on ``sys.path``) and called as ``fn(completion, answer, row)``: the completion text,
the gold answer string and the problem's row (a dict: the dataset record in training; id,
problem, answer and strategy in ``sgpo eval``). It returns a float or None (not applicable:
it adds nothing, as in TRL). The reward of a completion is ``sum_i w_i r_i`` over the
functions that returned a number. The built-in grader, :func:`math_reward` (math-verify on
the last ``\\boxed{}``, :func:`sgpo.rewards.score`), is the default and only entry.

Containment: a call that raises, returns NaN/inf or something that is not a number, or runs
past ``timeout_s`` wall-clock seconds is a *failure*: it adds nothing to that completion's
reward and is counted per function (metrics ``reward/failures``,
``reward/failure_share/NAME``). The caller stops the run when a function's share of failed
calls exceeds ``max_failure_share`` (:func:`check_failure_share`), so a broken function
never silently zeroes every reward. A hung call's thread is abandoned (Python cannot stop a
thread; it goes on in the background as a daemon); the built-in grader has its own
CPU-time deadline in killable worker processes (:mod:`sgpo.rewards.workers`) and no
wall-clock limit, so machine load never turns a slow verdict into a failure.

Concurrency: a batch's calls run on up to ``threads`` threads. The built-in grader's
symbolic comparisons go to the worker processes, which each thread waits on without holding
the GIL, so a step's B x G completions are graded in parallel with the verdicts of serial
grading (tests/test_reward_functions.py checks both)."""

from __future__ import annotations

import importlib
import json
import logging
import math
import numbers
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from sgpo.errors import UserError
from sgpo.rewards import ScoreResult, score_detailed, workers

BUILTIN = "sgpo.rewards.functions:math_reward"
RewardFn = Callable[[str, str, dict], Any]


def math_reward(completion: str, answer: str, row: dict | None = None) -> float:
    """The built-in grader: 1.0 when the completion's final answer equals ``answer``
    (:func:`sgpo.rewards.score`), else 0.0."""
    return score_detailed(completion, answer).reward


@dataclass
class RewardConfig:
    """Reward functions (`module:callable`, each called as fn(completion, answer, row) -> float or None), their weights and their containment; the same ones grade `sgpo eval`."""

    functions: list[str] = field(default_factory=lambda: [BUILTIN])  # module:callable entries; the built-in math grader by default
    weights: list[float] = field(default_factory=list)  # one weight per function; empty = 1.0 each
    timeout_s: float = 30.0  # wall-clock seconds per call of a user function (the built-in grader has its own CPU deadline)
    # a function whose share of failed calls (raised, hung, NaN, not a number) in a step exceeds this stops the run
    max_failure_share: float = 0.25
    threads: int = 0  # grading threads per process; 0 = 2 x the grader's worker processes (SGPO_GRADER_WORKERS)

    def validate(self, key: str = "reward") -> "RewardConfig":
        if not self.functions:
            raise ValueError(f"{key}.functions is empty: name at least one module:callable (the default is {BUILTIN})")
        for spec in self.functions:
            if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
                raise ValueError(f"{key}.functions entry {spec!r}: expected 'module:callable'")
        if self.weights and len(self.weights) != len(self.functions):
            raise ValueError(f"{key}.weights has {len(self.weights)} entries for {len(self.functions)} functions "
                             "(give one weight per function, or none for 1.0 each)")
        for w in self.weights:
            if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
                raise ValueError(f"{key}.weights entry {w!r}: expected a finite number")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"{key}.timeout_s = {self.timeout_s}: must be > 0")
        if not 0 <= self.max_failure_share <= 1:
            raise ValueError(f"{key}.max_failure_share = {self.max_failure_share}: must be in [0, 1]")
        if self.threads < 0:
            raise ValueError(f"{key}.threads = {self.threads}: must be >= 0 (0 = automatic)")
        return self


class RewardFunctionError(UserError):
    """A reward function cannot be loaded, or failed on too many calls."""


def load_function(spec: str) -> RewardFn:
    """The callable ``module:name`` names; a missing module or attribute is one line naming it."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the module raised while importing
        raise RewardFunctionError(f"reward function {spec}: cannot import module '{module_name}' "
                                  f"({type(e).__name__}: {e}); is it on PYTHONPATH?") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise RewardFunctionError(f"reward function {spec}: module '{module_name}' has no attribute '{attr}'")
    if not callable(fn):
        raise RewardFunctionError(f"reward function {spec}: '{attr}' is not callable")
    return fn  # type: ignore[return-value]


def function_names(specs: Sequence[str]) -> list[str]:
    """Metric names: the callable's name, or the whole spec where two functions share one."""
    short = [s.split(":", 1)[1] for s in specs]
    return [n if short.count(n) == 1 else s for n, s in zip(short, specs)]


@dataclass
class Graded:
    """Rewards of a batch of N completions."""

    rewards: list[float]  # [N] sum_i w_i r_i over the functions that returned a number
    values: dict[str, list[float | None]]  # name -> [N] each function's value; None: not applicable or failed
    failed: dict[str, list[bool]]  # name -> [N] the call failed (raised, timed out, NaN, not a number)
    details: list[ScoreResult | None]  # [N] the built-in grader's extracted answer and time-out, where it ran

    @property
    def failures(self) -> int:
        return sum(sum(f) for f in self.failed.values())


_OK, _FAILED = "ok", "failed"
_log = logging.getLogger(__name__)


class RewardFunctions:
    """The configured functions, loaded once; :meth:`grade` scores a batch concurrently."""

    def __init__(self, cfg: RewardConfig | None = None, grader_timeout_s: float = 5.0):
        """``grader_timeout_s``: the built-in grader's CPU-time deadline per comparison."""
        self.cfg = (cfg or RewardConfig()).validate()
        self.grader_timeout_s = grader_timeout_s
        self.specs = list(self.cfg.functions)
        self.names = function_names(self.specs)
        self.fns = [math_reward if s == BUILTIN else load_function(s) for s in self.specs]
        self.weights = [float(w) for w in self.cfg.weights] or [1.0] * len(self.fns)
        self.threads = self.cfg.threads or 2 * workers.default_size()
        self._warned: set[str] = set()

    def grade(self, completions: Sequence[str], answers: Sequence[str], rows: Sequence[dict | None]) -> Graded:
        """Score completion j against answers[j] with every function, all calls concurrently."""
        n = len(completions)
        calls: list[tuple[Callable[[], Any], float | None]] = []
        for fn in self.fns:
            for c, a, r in zip(completions, answers, rows):
                if fn is math_reward:
                    calls.append(((lambda c=c, a=a: score_detailed(c, a, self.grader_timeout_s)), None))
                else:
                    calls.append(((lambda fn=fn, c=c, a=a, r=r: fn(c, a, dict(r or {}))), self.cfg.timeout_s))
        results = run_calls(calls, self.threads)
        values: dict[str, list[float | None]] = {}
        failed: dict[str, list[bool]] = {}
        details: list[ScoreResult | None] = [None] * n
        for i, (name, fn) in enumerate(zip(self.names, self.fns)):
            vals, bad = [], []
            for j, (status, out) in enumerate(results[i * n:(i + 1) * n]):
                if fn is math_reward and status == _OK:
                    details[j], out = out, out.reward
                value, why = _as_reward(status, out)
                if why:
                    self._warn(name, why)
                vals.append(value)
                bad.append(why is not None)
            values[name], failed[name] = vals, bad
        rewards = [sum(w * v[j] for w, v in zip(self.weights, values.values()) if v[j] is not None) for j in range(n)]
        return Graded([float(r) for r in rewards], values, failed, details)

    def identity(self) -> str:
        """What decides the rewards, as text ("" for the default: the built-in grader alone)."""
        if self.specs == [BUILTIN] and self.weights == [1.0]:
            return ""
        return json.dumps({"functions": self.specs, "weights": self.weights})

    def _warn(self, name: str, why: str) -> None:
        if name not in self._warned:  # once per function: a failing function would flood the log
            self._warned.add(name)
            _log.warning("reward function %s failed: %s (further failures are counted in reward/failures)", name, why)


def _as_reward(status: str, out: Any) -> tuple[float | None, str | None]:
    """(value, None) for a usable result, (None, reason) for a failure."""
    if status != _OK:
        return None, out
    if out is None:
        return None, None
    if isinstance(out, bool) or not isinstance(out, numbers.Real):
        return None, f"returned {type(out).__name__} {out!r:.80}, not a float or None"
    value = float(out)
    if not math.isfinite(value):
        return None, f"returned {value}"
    return value, None


def run_calls(calls: Sequence[tuple[Callable[[], Any], float | None]], threads: int) -> list[tuple[str, Any]]:
    """Run every ``(call, timeout_s or None)`` on up to ``threads`` daemon threads; returns
    per call ``("ok", value)`` or ``("failed", reason)``. A call past its timeout is
    reported failed at once and its thread abandoned (a new one takes its place). The
    built-in grader's :class:`~sgpo.rewards.workers.GraderUnavailable` (a broken
    installation, not a bad completion) is raised to the caller."""
    if not calls:
        return []
    results: list[tuple[str, Any] | None] = [None] * len(calls)
    cond = threading.Condition()
    state = {"next": 0, "fatal": None}
    running: dict[int, tuple[int, float]] = {}  # thread id -> (call index, started at)
    abandoned: set[int] = set()

    def work(tid: int) -> None:
        while True:
            with cond:
                i = state["next"]
                if i >= len(calls) or state["fatal"] is not None:
                    running.pop(tid, None)
                    cond.notify_all()
                    return
                state["next"] = i + 1
                running[tid] = (i, time.monotonic())
            try:
                got: tuple[str, Any] = (_OK, calls[i][0]())
            except workers.GraderUnavailable as e:
                with cond:
                    state["fatal"] = e
                    cond.notify_all()
                return
            except BaseException as e:  # noqa: BLE001 - a user function may raise anything
                got = (_FAILED, f"raised {type(e).__name__}: {' '.join(str(e).split())[:200]}")
            with cond:
                if tid in abandoned:  # reported as timed out meanwhile: its result is dropped
                    return
                results[i] = got
                cond.notify_all()

    count = 0

    def start() -> None:
        nonlocal count
        threading.Thread(target=work, args=(count,), daemon=True, name=f"sgpo-reward-{count}").start()
        count += 1

    with cond:
        for _ in range(max(1, min(threads, len(calls)))):
            start()
        while any(r is None for r in results) and state["fatal"] is None:
            now, wake = time.monotonic(), None
            for tid, (i, t0) in list(running.items()):
                limit = calls[i][1]
                if limit is None or results[i] is not None:
                    continue
                if now - t0 >= limit:
                    results[i] = (_FAILED, f"timed out after {limit:g} s")
                    abandoned.add(tid)
                    del running[tid]
                    start()
                else:
                    left = t0 + limit - now
                    wake = left if wake is None else min(wake, left)
            if any(r is None for r in results):
                cond.wait(timeout=wake if wake is not None else 1.0)
    if state["fatal"] is not None:
        raise state["fatal"]
    return results  # type: ignore[return-value]


def failure_shares(failed: dict[str, Sequence[bool]]) -> dict[str, float]:
    return {name: (sum(f) / len(f) if len(f) else 0.0) for name, f in failed.items()}


def check_failure_share(shares: dict[str, float], max_share: float, where: str = "this step") -> None:
    """Stop (RewardFunctionError naming the function) when a function failed on more than
    ``max_share`` of its calls."""
    for name, share in shares.items():
        if share > max_share:
            raise RewardFunctionError(f"reward function {name} failed on {100 * share:.0f}% of its calls in {where} "
                                      f"(reward.max_failure_share = {max_share:g}); fix it or raise the limit. "
                                      "The first failure's reason is in the log")


__all__ = ["RewardConfig", "RewardFunctions", "RewardFunctionError", "Graded", "math_reward", "load_function",
           "run_calls", "check_failure_share", "failure_shares", "BUILTIN"]
