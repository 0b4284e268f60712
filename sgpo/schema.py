"""The strategy schema: ``problem_type``, ``key_insight`` (one transferable
sentence), ``plan`` (3-6 abstract imperative steps), ``techniques``, ``pitfalls``, ``check``.
The rendered text is what goes inside the guided prompt's ``<strategy>`` block.

A base module (standard library only): the training data (:mod:`sgpo.data`) validates strategy
columns with it and the extraction pipeline (:mod:`sgpo.strategies`) writes strategies in it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

MIN_PLAN_STEPS, MAX_PLAN_STEPS = 3, 6
MAX_RENDERED_WORDS = 140  # ~180 tokens for typical BPE vocabularies


class StrategyError(ValueError):
    """A strategy that does not fit the schema; the message names the field."""


@dataclass
class Strategy:
    problem_type: str
    key_insight: str
    plan: list[str]
    techniques: list[str] = field(default_factory=list)
    pitfalls: list[str] = field(default_factory=list)
    check: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        return render_strategy(self)


def _str_list(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StrategyError(f"field '{name}' must be a list of strings")
    return [v.strip() for v in value if v.strip()]


def validate_strategy(obj: Any, max_words: int = MAX_RENDERED_WORDS) -> Strategy:
    """Check fields, types, plan length and rendered length; return a :class:`Strategy`."""
    if isinstance(obj, Strategy):
        obj = obj.to_dict()
    if not isinstance(obj, dict):
        raise StrategyError(f"strategy must be a JSON object, got {type(obj).__name__}")
    for name in ("problem_type", "key_insight", "plan"):
        if name not in obj or obj[name] in (None, "", []):
            raise StrategyError(f"missing field '{name}'")
    for name in ("problem_type", "key_insight", "check"):
        if name in obj and obj[name] is not None and not isinstance(obj[name], str):
            raise StrategyError(f"field '{name}' must be a string")
    plan = _str_list(obj["plan"], "plan")
    if not MIN_PLAN_STEPS <= len(plan) <= MAX_PLAN_STEPS:
        raise StrategyError(f"field 'plan' must have {MIN_PLAN_STEPS}-{MAX_PLAN_STEPS} steps, got {len(plan)}")
    s = Strategy(
        problem_type=obj["problem_type"].strip(),
        key_insight=obj["key_insight"].strip(),
        plan=plan,
        techniques=_str_list(obj.get("techniques") or [], "techniques"),
        pitfalls=_str_list(obj.get("pitfalls") or [], "pitfalls"),
        check=(obj.get("check") or "").strip(),
    )
    words = len(render_strategy(s).split())
    if words > max_words:
        raise StrategyError(f"rendered strategy too long: {words} words > {max_words}")
    return s


def render_strategy(s: Strategy) -> str:
    lines = [f"Problem type: {s.problem_type}", f"Key insight: {s.key_insight}", "Plan:"]
    lines += [f"{i}. {step}" for i, step in enumerate(s.plan, start=1)]
    if s.techniques:
        lines.append("Techniques: " + "; ".join(s.techniques))
    if s.pitfalls:
        lines.append("Pitfalls: " + "; ".join(s.pitfalls))
    if s.check:
        lines.append(f"Check: {s.check}")
    return "\n".join(lines)


def strategy_text(value: Any) -> str | None:
    """Training-data strategy column to prompt text: plain text passes through, the schema's
    JSON (object or string) is validated and rendered. ``None``/empty means no strategy."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                return text
            return validate_strategy(parsed).render()
        return text
    return validate_strategy(value).render()
