"""Answer-leak filters for strategies: a strategy that gives the answer away
teaches the policy to copy it, so the guided teacher would be distilling the answer rather
than how to reason. Cheapest filter first:

1. string leak: the normalised gold answer appears as a whole token of the normalised
   strategy (``2`` matches ``divide by 2`` but not ``12``, ``2.5`` or ``x_2``; ``\\frac{1}{2}``,
   ``\\dfrac12`` and ``1/2`` all normalise to ``1/2``);
2. symbolic leak: some math span of the strategy (a number, a ``$...$``/``\\(...\\)``/``\\[...\\]``
   span or either side of its ``=``, a ``\\boxed{}``, a bare ``\\frac``/``\\sqrt``) is
   mathematically equal to the gold answer, decided by :func:`sgpo.rewards.equivalent`
   (exact fractions first for plain numbers, which is most spans and far cheaper).

The behavioural leak test needs a student model and lives in :mod:`sgpo.strategies.scoring`.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from sgpo.data import ProblemSet

Equivalence = Callable[[str, str], bool]

# \cmd{X} -> X: wrappers that carry no mathematical meaning
_UNWRAP = {"boxed", "text", "textbf", "textit", "mathrm", "mathbf", "mathit", "operatorname", "mbox", "hbox"}
_DROP = {"left", "right", "displaystyle", "quad", "qquad", "big", "Big", "bigl", "bigr", "limits", "circ"}
_SYMBOLS = {"cdot": "*", "times": "*", "div": "/", "le": "<=", "leq": "<=", "ge": ">=", "geq": ">=", "ne": "!=",
            "neq": "!=", "%": "%", "$": "", "{": "(", "}": ")", "(": "", ")": "", "[": "", "]": ""}
_ATOM = re.compile(r"[\w.]+|\w+\([^()]*\)")  # a number, a name or a call like sqrt(3)
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?(?![\w])")


def _group(s: str, i: int) -> tuple[str, int]:
    """The argument starting at ``s[i]`` (skipping spaces): a brace group's contents, or the
    single character of ``\\frac12``-style shorthand. Returns (argument, index after it)."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return "", i
    if s[i] != "{":
        return s[i], i + 1
    depth = 0
    for j in range(i, len(s)):
        depth += {"{": 1, "}": -1}.get(s[j], 0)
        if depth == 0:
            return s[i + 1 : j], j + 1
    return s[i + 1 :], len(s)


def _paren(x: str) -> str:
    return x if _ATOM.fullmatch(x) else f"({x})"


def latex_to_plain(s: str) -> str:
    """Rewrite common LaTeX into plain infix text: ``\\frac{a}{b}`` -> ``a/b`` (parenthesised
    unless atomic), ``\\sqrt{x}`` -> ``sqrt(x)``, ``x^{10}`` -> ``x^10``, wrappers such as
    ``\\text{}``/``\\boxed{}`` unwrapped, spacing commands and ``$`` dropped."""
    out: list[str] = []
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "$":
            i += 1
        elif ch == "^" and i + 1 < len(s) and s[i + 1] == "{":
            arg, i = _group(s, i + 1)
            out.append("^" + _paren(latex_to_plain(arg)))
        elif ch == "\\":
            m = re.match(r"[a-zA-Z]+", s[i + 1 :])
            if not m:  # \, \; \! \  \( \) \[ \] \{ \} \% \$
                sym = s[i + 1 : i + 2]
                out.append(_SYMBOLS.get(sym, " " if sym in ",;:! " else ""))
                i += 2
                continue
            name, i = m.group(0), i + 1 + len(m.group(0))
            if name in ("frac", "dfrac", "tfrac", "cfrac"):
                num, i = _group(s, i)
                den, i = _group(s, i)
                out.append(f"{_paren(latex_to_plain(num))}/{_paren(latex_to_plain(den))}")
            elif name == "sqrt":
                index = ""
                close = s.find("]", i) if s[i : i + 1] == "[" else -1
                if close != -1:
                    index, i = s[i + 1 : close], close + 1
                arg, i = _group(s, i)
                out.append(f"sqrt({latex_to_plain(arg)})" if not index else f"root({index},{latex_to_plain(arg)})")
            elif name in _UNWRAP:
                arg, i = _group(s, i)
                out.append(latex_to_plain(arg))
            elif name not in _DROP:
                out.append(_SYMBOLS.get(name, name))
        elif ch in "{}":
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def normalize_math(text: str) -> str:
    """Canonical text for string matching: LaTeX to plain infix, thousands separators and
    spaces around symbols removed, runs of whitespace collapsed, a trailing period dropped."""
    s = latex_to_plain(text)
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    s = re.sub(r"\s+", " ", s)
    s = re.sub(r"\s*([^\w\s])\s*", r"\1", s).strip()
    return s[:-1] if s.endswith(".") and not s.endswith("..") else s


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def string_leak(strategy_text: str, gold: str) -> bool:
    """True if the normalised gold answer occurs as a whole token of the normalised strategy.
    A single-letter answer (a multiple-choice letter, a variable) is left to the symbolic
    check: as a string it would match every article "A"."""
    g = normalize_math(gold)
    if not g or (len(g) == 1 and g.isalpha()):
        return False
    t = normalize_math(strategy_text)
    for m in re.finditer(re.escape(g), t):
        before, after = t[max(m.start() - 2, 0) : m.start()], t[m.end() : m.end() + 2]
        if _is_word(g[0]) and before:
            if _is_word(before[-1]) or before[-1] in ".\\":  # "12" holds "2"; "0.5" holds "5"
                continue
            if before[-1] == "/" and len(before) == 2 and before[0].isdigit():  # "1/2" holds "2"
                continue
        if _is_word(g[-1]) and after:
            if _is_word(after[0]):
                continue
            if after[0] in "./" and len(after) == 2 and after[1].isdigit():  # "2.5", "2/3" hold "2"
                continue
        return True
    return False


def _balanced_after(text: str, start: int) -> tuple[str, int]:
    """``text[start:]`` begins with a command; return it with its brace groups attached."""
    m = re.match(r"\\[a-zA-Z]+", text[start:])
    end = start + (m.end() if m else 1)
    while end < len(text) and text[end] == "{":
        _, end = _group(text, end)
    return text[start:end], end


def math_spans(text: str) -> list[str]:
    """Every math-looking span of a strategy, deduplicated in order of appearance: delimited
    math (and each side of an ``=`` in it), ``\\boxed{}`` contents, bare ``\\frac``/``\\sqrt``
    expressions and numbers (fractions such as ``3/4`` kept whole)."""
    spans: list[str] = []
    delimited = r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]"
    for m in re.finditer(delimited, text, flags=re.S):
        body = next(g for g in m.groups() if g is not None)
        spans.append(body)
        if "=" in body:
            spans += body.split("=")
    for m in re.finditer(r"\\boxed\s*(?=\{)", text):
        spans.append(_group(text, m.end())[0])
    for m in re.finditer(r"\\(?:d|t)?frac|\\sqrt", text):
        spans.append(_balanced_after(text, m.start())[0])
    spans += [m.group(0) for m in _NUMBER.finditer(text)]
    cleaned = (s.strip().rstrip(".,;:") for s in spans)
    return list(dict.fromkeys(s for s in cleaned if s))


def as_fraction(text: str) -> Fraction | None:
    """Exact value of a plain number (``-3``, ``1,000``, ``0.25``, ``3/4``, ``\\frac{3}{4}``), else None."""
    s = normalize_math(text).replace("(", "").replace(")", "")
    if not re.fullmatch(r"-?\d+(?:\.\d+)?(?:/-?\d+(?:\.\d+)?)?", s):
        return None
    num, _, den = s.partition("/")
    try:
        return Fraction(num) / Fraction(den) if den else Fraction(num)
    except ZeroDivisionError:
        return None


def _default_equivalent(candidate: str, gold: str) -> bool:
    from sgpo.rewards import equivalent

    return equivalent(candidate, gold)


def symbolic_leaks(strategy_text: str, gold: str, equivalent: Equivalence | None = None,
                   first_only: bool = True) -> list[str]:
    """Math spans of the strategy equal to the gold answer. Plain numbers against a plain-number
    gold compare as exact fractions; everything else goes through ``equivalent``."""
    equivalent = equivalent or _default_equivalent
    gold_value = as_fraction(gold)
    found: list[str] = []
    for span in math_spans(strategy_text):
        value = as_fraction(span)
        if value is not None and gold_value is not None:
            hit = value == gold_value
        else:
            hit = equivalent(span, gold)
        if hit:
            found.append(span)
            if first_only:
                break
    return found


_PLAN_NUMBER = re.compile(r"^[ \t]*\d+\.[ \t]", flags=re.M)


def strip_plan_numbers(strategy_text: str) -> str:
    """Drop the ``1. `` ``2. `` step numbers that rendering puts at line starts: they are
    layout, not content, and would otherwise flag every small-integer answer as leaked."""
    return _PLAN_NUMBER.sub("", strategy_text)


def leak_reasons(strategy_text: str, gold: str, *, symbolic: bool = True,
                 equivalent: Equivalence | None = None) -> list[str]:
    """Why a strategy (rendered text, or any text) leaks the gold answer; empty means clean.
    Filters run cheapest first and stop at the first one that fires."""
    strategy_text = strip_plan_numbers(strategy_text)
    if string_leak(strategy_text, gold):
        return [f"string leak: the gold answer '{gold}' appears in the strategy"]
    if symbolic:
        spans = symbolic_leaks(strategy_text, gold, equivalent)
        if spans:
            return [f"symbolic leak: '{spans[0]}' equals the gold answer '{gold}'"]
    return []


def drop_leaking_strategies(problems: "ProblemSet", max_share: float, setting: str = "data.max_leak_share",
                            warn: bool = True, checked: dict[str, str] | None = None) -> list[str]:
    """The leak filters of extraction (:func:`leak_reasons`), applied at train time to every
    strategy a strategy-guided method would use, whatever its source (a strategies file, a
    strategy column, problems built in memory): a leaking strategy is dropped (its problem
    trains with the RL term only) and counted in ``problems.leaked``, with a warning naming a
    few ids. Above ``max_share`` of the strategies the run stops with a :class:`DataError`
    (before any model loads). Returns the dropped ids.

    ``checked`` (id -> gold answer) names strategies that `sgpo extract` already passed
    through both filters against that very gold: they get the cheap string filter only (the
    symbolic one costs up to a few hundred ms per strategy with LaTeX spans)."""
    import sys

    from sgpo.io import DataError

    with_strategy = [p for p in problems.problems if p.strategy]
    leaked: list[tuple[str, str]] = []
    for p in with_strategy:
        reasons = leak_reasons(p.strategy or "", p.answer, symbolic=(checked or {}).get(p.id) != p.answer)
        if reasons:
            leaked.append((p.id, reasons[0]))
    if not leaked:
        return []
    n, m = len(leaked), len(with_strategy)
    shown = "; ".join(f"'{pid}' ({reason})" for pid, reason in leaked[:3]) + (" ..." if n > 3 else "")
    where = problems.strategy_source or problems.source
    if n > max_share * m:
        raise DataError(where, f"{n} of {m} strategies ({n / m:.0%}) give the gold answer away, more than "
                        f"{setting}={max_share:g}: {shown}. Distilling them teaches the answer; re-extract them "
                        f"(`sgpo extract` marks such strategies 'leaked') or raise {setting}")
    for p in problems.problems:
        if p.id in {pid for pid, _ in leaked}:
            p.strategy = None
    problems.without_strategy += n
    problems.leaked = [pid for pid, _ in leaked]
    if warn:
        print(f"sgpo: warning: {n} of {m} strategies from {where} give the gold answer away and were dropped "
              f"(those problems train with the RL term only): {shown}", file=sys.stderr)
    return problems.leaked
