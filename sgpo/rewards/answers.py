"""Finding the final answer in a completion, normalising its spelling and splitting it into
parts. Pure string work (standard library only, linear time in the completion length), so it
runs in the caller's process for every completion; nothing here parses mathematics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

GROUP_GAP_CHARS = 80  # boxes at most this far apart (and no blank line between) form one final group
FINAL_LINE_MAX_CHARS = 120  # an unboxed answer span longer than this is prose, not an answer

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?:\s*(\{)|\s+([^\s$\\{}]+))")
_BRACE_RE = re.compile(r"\\.|[{}]", re.DOTALL)  # an escaped char (skipped) or a brace


@dataclass(frozen=True)
class Box:
    start: int  # index of the backslash of \boxed
    end: int  # index just past the closing brace (or the token of "\boxed 5")
    content: str


def find_boxes(text: str) -> list[Box]:
    """Every complete, outermost ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed 5`` in order of
    closing. A box left unclosed by truncation is skipped. One linear pass over the braces."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return []
    opens: dict[int, int] = {}  # position of "{" -> position of its "\boxed"
    found: list[Box] = []
    for m in _BOX_RE.finditer(text):
        if m.group(1) is not None:
            opens[m.start(1)] = m.start()
        else:  # "\boxed 5": one token up to whitespace or a math delimiter
            found.append(Box(m.start(), m.end(), m.group(2)))
    stack: list[int] = []
    for m in _BRACE_RE.finditer(text):
        c = m.group(0)
        if c == "{":
            stack.append(m.start())
        elif c == "}" and stack:
            start = stack.pop()
            if start in opens:
                found.append(Box(opens[start], m.end(), text[start + 1 : m.start()].strip()))
    found.sort(key=lambda b: b.end)
    outer: list[Box] = []  # drop boxes nested in a later-closing box ("\boxed{\boxed{5}}")
    for b in reversed(found):
        if not outer or b.end <= outer[-1].start:
            outer.append(b)
    return outer[::-1]


def extract_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5``),
    stripped; None if there is none. A box left unclosed by truncation is skipped, so the
    previous complete one counts."""
    if not isinstance(text, str):
        return None
    boxes = find_boxes(text)
    return boxes[-1].content if boxes else None


def final_group(text: str, boxes: list[Box]) -> list[Box]:
    """The last box and the boxes chained to it by short connecting text ("\\boxed{1} and
    \\boxed{2}", "\\boxed{(1, 2)}, \\boxed{(2, 1)}"): at most GROUP_GAP_CHARS characters and no
    blank line between neighbours. Used only when the gold answer has several parts."""
    group = boxes[-1:]  # built backwards
    for b in reversed(boxes[:-1]):
        gap = text[b.end : group[-1].start]
        if len(gap) > GROUP_GAP_CHARS or re.search(r"\n\s*\n", gap):
            break
        group.append(b)
    return group[::-1]


def strip_reasoning(text: str) -> str:
    """Text after the last ``</think>``; text inside an unclosed ``<think>`` is reasoning that
    never reached an answer, so it is dropped too."""
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        text = text.split("<think>", 1)[0]
    return text


# "the final answer is X", "Answer: X" (an anchor needs "is" or a colon after "answer")
_ANCHOR_RE = re.compile(r"\b(final\s+answer|answer)\b\s*(?:is\b\s*:?|:)\s*", re.IGNORECASE)
_MATH_DELIMS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))
_PROSE_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}[\s,]+[A-Za-z]{2,}(?![A-Za-z]*\})")


def _span_after(text: str, pos: int) -> str | None:
    """The answer written at ``text[pos:]``: a whole ``$...$`` / ``\\(...\\)`` / ``\\[...\\]``
    span, or plain text up to the end of the sentence or line. None if it reads as prose."""
    rest = text[pos:].lstrip()
    for open_, close in _MATH_DELIMS:
        if rest.startswith(open_):
            end = rest.find(close, len(open_))
            span = rest[len(open_) : end] if end >= 0 else ""
            return span.strip() or None
    line = rest.split("\n", 1)[0]
    m = re.search(r"\.(?=\s|$)|,\s+(?=[A-Za-z]{2,})", line)  # a full stop, or ", since ..."
    span = (line[: m.start()] if m else line).strip()
    span = span.replace("$", "").strip().strip('"\u201c\u201d').removeprefix('\\"').removesuffix('\\"').strip()
    if not span or len(span) > FINAL_LINE_MAX_CHARS or _PROSE_RE.search(span) or "\\boxed" in span:
        return None
    return span


def anchored_answer(text: str, final_only: bool = False) -> str | None:
    """The full answer after the last anchor phrase ("the final answer is", "Answer:") in
    ``text``; with ``final_only`` only "final answer" anchors count. None if there is none or
    it is not an answer-like span."""
    last = None
    for m in _ANCHOR_RE.finditer(text):
        if not final_only or m.group(1).lower().startswith("final"):
            last = m
    return None if last is None else _span_after(text, last.end())


# ---------------------------------------------------------------------------------------
# Normalisation of one answer span
# ---------------------------------------------------------------------------------------

_SCI_RE = re.compile(r"^(-?\d+(?:\.\d+)?)\s*[eE]\s*([+-]?\d+)$")
_THIN_SEP_RE = re.compile(r"(?<=\d)(?:\\,|\{,\}|\\!|\\ |~)(?=\d{3}(?!\d))")
# "1 000 000", "1\u2009000": digit groups of three split by a space, thin or no-break space
_SPACED_INT_RE = re.compile(r"^-?\d{1,3}(?:[ \u00a0\u2009\u202f]\d{3})+(?:\.\d+)?$")
_COMMA_INT_RE = re.compile(r"^-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?$")
_TEXT_WRAP_RE = re.compile(r"^\\(?:text|textbf|mbox|mathrm)\{\s*(-?\d[^{}]*)\}$")
_TRAILING_WORDS_RE = re.compile(r"^(-?\d[\d.,]*)\s+[A-Za-z]{2,}(?:\s+[A-Za-z]{2,})*\.?$")
# e and i are set upright by convention (\mathrm{e}); math-verify drops \mathrm{...} as a unit
_DOLLAR_RE = re.compile(r"(?<!\\)\$")  # a math-mode toggle inside a box ("\boxed{12 $ and $13}")
_UPRIGHT_CONST_RE = re.compile(r"\\(?:mathrm|operatorname|text)\{\s*([ei])\s*\}")


CACHED_SPAN_CHARS = 1000  # spans up to this long are memoised (gold answers and common candidates repeat)


def normalize(span: str) -> str:
    """Rewrite answer forms math-verify misreads: ``4.5e33`` (read as 4.5*E*33), ``1\\,000``,
    ``1 000`` and ``1,000`` (thousands separators), stray ``$`` inside a box, ``\\text{5 cm}``
    and ``18 dollars`` (a number with trailing words), ``\\mathrm{e}`` (Euler's number,
    otherwise dropped as a unit)."""
    return _normalize(span) if len(span) <= CACHED_SPAN_CHARS else _normalize.__wrapped__(span)


@lru_cache(maxsize=65536)
def _normalize(span: str) -> str:
    s = _DOLLAR_RE.sub("", span).strip().rstrip(".").strip()
    s = _THIN_SEP_RE.sub("", s)
    if _SPACED_INT_RE.match(s) or _COMMA_INT_RE.match(s):
        s = re.sub(r"[ ,\u00a0\u2009\u202f]", "", s)
    s = _UPRIGHT_CONST_RE.sub(r"\1", s)
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


# one comma, not a thousands group: "1000,99", "0,111"
_DECIMAL_COMMA_RE = re.compile(r"^-?(?:0,\d+|\d+,(?:\d{1,2}|\d{4,}))$")
_DECIMAL_RE = re.compile(r"^-?\d*\.\d+$")


def resolve_decimal_commas(candidate: str, gold: str) -> tuple[str, str]:
    """``1000,99`` is a decimal comma only where the other side is a decimal number; otherwise
    ``1,22`` stays a list of two answers (models write lists without spaces)."""
    c_dc, g_dc = _DECIMAL_COMMA_RE.match(candidate), _DECIMAL_COMMA_RE.match(gold)
    if c_dc and (_DECIMAL_RE.match(gold) or g_dc):
        candidate = candidate.replace(",", ".")
    if g_dc and (_DECIMAL_RE.match(candidate) or c_dc):
        gold = gold.replace(",", ".")
    return candidate, gold


# ---------------------------------------------------------------------------------------
# Multi-part answers
# ---------------------------------------------------------------------------------------

_OPEN, _CLOSE = "([{", ")]}"
# separators of answers written as a list: "; ", " and ", "\text{ or }", "\quad"
_LIST_SEP_RE = re.compile(r";|\\q?quad|\\text\{\s*(?:and|or|,)\s*\}|\s(?:and|or)\s")
_COMMA_RE = re.compile(r",")
_SPACING_RE = re.compile(r"\\q?quad|\\[,;:! ]|~")


def _top_level_split(span: str, sep: re.Pattern[str]) -> list[str]:
    """Split ``span`` at matches of ``sep`` that are outside every bracket pair."""
    depth, parts, last, i = 0, [], 0, 0
    while i < len(span):
        c = span[i]
        if c == "\\" and i + 1 < len(span) and span[i + 1] in "{}":
            depth += 1 if span[i + 1] == "{" else -1
            i += 2
            continue
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth = max(depth - 1, 0)
        elif depth == 0:
            m = sep.match(span, i)
            if m and m.end() > i:
                parts.append(span[last:i])
                last = i = m.end()
                continue
        i += 1
    parts.append(span[last:])
    return parts


def _balanced(span: str) -> bool:
    """Every bracket closed in ``span`` was opened in it (``1}+{2`` is not)."""
    depth = 0
    for c in span:
        depth += (c in _OPEN) - (c in _CLOSE)
        if depth < 0:
            return False
    return depth == 0


def _strip_set_braces(span: str) -> str:
    """``\\{1, 2\\}`` and ``{1,2,3}`` -> ``1, 2`` / ``1,2,3`` when the braces wrap the whole span."""
    for open_, close in (("\\{", "\\}"), ("{", "}")):
        if span.startswith(open_) and span.endswith(close):
            inner = span[len(open_) : -len(close)]
            if _balanced(inner):
                return inner.strip()
    return span


def split_parts(span: str) -> tuple[str, ...]:
    """The answers listed in one span: ``1, 2, 3``, ``\\{1,2\\}``, ``(2, 2), (6, 2)``,
    ``x = 1 \\text{ or } x = 2``, ``p=5,q=2; p=7,q=2``. List words and semicolons split
    first; only without them do top-level commas split. Brackets keep tuples and intervals
    whole. A thousands-separated number (``1,000``) is one part."""
    return _split_parts(span) if len(span) <= CACHED_SPAN_CHARS else _split_parts.__wrapped__(span)


@lru_cache(maxsize=65536)
def _split_parts(span: str) -> tuple[str, ...]:
    s = _strip_set_braces(span.strip())
    if _COMMA_INT_RE.match(s):
        return (s,)
    parts = _top_level_split(s, _LIST_SEP_RE)
    if len([p for p in parts if p.strip()]) < 2:
        parts = _top_level_split(s, _COMMA_RE)
    cleaned = [_SPACING_RE.sub(" ", p).strip().strip(",").strip() for p in parts]
    return tuple(p for p in cleaned if p)


_LABEL_RE = re.compile(r"^([A-Za-z])(?:_\{?(\w+)\}?)?\s*=\s*(.+)$", re.DOTALL)


def label_of(part: str) -> tuple[str, str, str] | None:
    """``x_{1} = 5`` -> (``x``, ``1``, ``5``); None for a part that is not ``name = value``."""
    m = _LABEL_RE.match(part.strip())
    return None if m is None else (m.group(1), m.group(2) or "", m.group(3).strip())
