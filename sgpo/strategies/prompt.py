"""The versioned extraction prompt and a tolerant parser for what teachers send back.

The prompt version is part of every output record and of the resume key, so changing the
wording means bumping :data:`PROMPT_VERSION` and re-extracting, never silently mixing
strategies from two prompts. Teachers wrap JSON in code fences and chatter and write LaTeX
with single backslashes; the parser finds the object by brace matching and repairs those
backslashes instead of rejecting otherwise good strategies.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sgpo.schema import MAX_PLAN_STEPS, MAX_RENDERED_WORDS, MIN_PLAN_STEPS, Strategy, StrategyError
from sgpo.schema import validate_strategy

PROMPT_VERSION = "strategy-v1"

SYSTEM_PROMPT = f"""You are an expert mathematics teacher. You read a problem and a verified \
solution written by a strong student, and you distil the reusable strategy behind the solution: \
how to think about problems of this kind, not what this problem's numbers are.

Reply with one JSON object and nothing else, with exactly these fields:
- "problem_type": a short name for the class of problems (string).
- "key_insight": one transferable sentence stating the idea that unlocks the problem (string).
- "plan": {MIN_PLAN_STEPS} to {MAX_PLAN_STEPS} abstract imperative steps (list of strings).
- "techniques": named methods or theorems used (list of strings).
- "pitfalls": mistakes to avoid (list of strings).
- "check": one way to verify a result (string).

Rules:
- Describe steps abstractly ("set up an equation for the unknown length"), never with computed \
values, intermediate results or numbers derived in the solution.
- Never state, hint at or bound the final answer, in words, numbers or formulas.
- Keep the whole strategy under {MAX_RENDERED_WORDS} words."""

USER_TEMPLATE = """Problem:
{problem}

Verified solution:
{response}

Final answer (for your information only; it must not appear in the strategy in any form): {answer}

Return the JSON strategy object now."""


def extraction_messages(problem: str, answer: str, response: str) -> list[dict[str, str]]:
    """System and user messages asking the teacher for one strategy (prompt :data:`PROMPT_VERSION`)."""
    user = USER_TEMPLATE.format(problem=problem.strip(), response=response.strip(), answer=answer.strip())
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _balanced_objects(text: str) -> list[str]:
    """Every top-level ``{...}`` span, matched by brace depth while skipping braces inside
    JSON strings, in order of appearance."""
    spans: list[str] = []
    depth, start, in_str, escaped = 0, -1, False, False
    for i, ch in enumerate(text):
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"' and depth > 0:
            in_str = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
    return spans


# LaTeX commands that begin with a valid JSON escape letter (\b \f \n \r \t): a teacher that
# writes "\frac" inside a JSON string means the command, not a form feed followed by "rac".
_LATEX_ON_JSON_ESCAPE = re.compile(
    r"(?:b(?:eta|inom|ar|ig|oxed|egin|ot|mod)|f(?:rac|orall|loor)|n(?:eq|abla|u|ot|ewline)|"
    r"r(?:ight|ho|angle|floor|ceil|m)|t(?:imes|ext|heta|an|au|o|frac|riangle|extbf))(?![a-zA-Z])"
)


def repair_latex_escapes(raw: str) -> str:
    """Double the lone backslashes of LaTeX commands so ``json.loads`` keeps them literally;
    valid JSON escapes (``\\n``, ``\\"``, ``\\u00e9``, an already doubled ``\\\\``) stay as they are."""
    out: list[str] = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch != "\\" or i + 1 == len(raw):
            out.append(ch)
            i += 1
            continue
        nxt = raw[i + 1]
        rest = raw[i + 1 :]
        if nxt in '\\"/':
            keep = True
        elif nxt == "u":
            keep = re.match(r"u[0-9a-fA-F]{4}", rest) is not None
        elif nxt in "bfnrt":
            keep = _LATEX_ON_JSON_ESCAPE.match(rest) is None
        else:
            keep = False
        out.append(raw[i : i + 2] if keep else "\\\\" + nxt)
        i += 2
    return "".join(out)


def _load(span: str) -> Any:
    return json.loads(repair_latex_escapes(span))


def _candidate_objects(text: str) -> list[Any]:
    """Parsed top-level objects; if none parses (say a stray unclosed ``{`` in the chatter
    swallowed the real object), decode from every ``{`` instead."""
    found: list[Any] = []
    for span in _balanced_objects(text):
        try:
            found.append(_load(span))
        except json.JSONDecodeError:
            continue
    if found:
        return found
    repaired, decoder = repair_latex_escapes(text), json.JSONDecoder()
    for match in re.finditer(r"\{", repaired):
        try:
            found.append(decoder.raw_decode(repaired, match.start())[0])
        except json.JSONDecodeError:
            continue
    return found


def find_json_object(text: str) -> dict[str, Any]:
    """The strategy object in a teacher reply: the first top-level JSON object with a schema
    field (else the first object at all). A ``{"strategy": {...}}`` wrapper is unwrapped.
    Raises :class:`StrategyError` when there is none."""
    first: dict[str, Any] | None = None
    for obj in _candidate_objects(text):
        if not isinstance(obj, dict):
            continue
        if "problem_type" not in obj and len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
            obj = next(iter(obj.values()))
        if "plan" in obj or "problem_type" in obj or "key_insight" in obj:
            return obj
        first = first if first is not None else obj
    if first is not None:
        return first
    raise StrategyError("no parsable JSON object in the reply")


def parse_strategy(text: str) -> Strategy:
    """Reply text to a validated :class:`Strategy` (fields, plan length, rendered length)."""
    return validate_strategy(find_json_object(text))
