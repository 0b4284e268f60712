"""Training problems: loading, validation before anything expensive starts, and the join
with extracted strategies (read by the caller: the strategies package sits above this
module). A bad row stops the run with the file, row and field."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable

from sgpo.io import DataError, read_records
from sgpo.schema import StrategyError, strategy_text


@dataclass
class Problem:
    id: str
    problem: str
    answer: str
    strategy: str | None = None  # rendered strategy text
    teacher_response: str | None = None
    row: dict | None = field(default=None, compare=False, repr=False)  # the dataset record (reward functions read it)


@dataclass
class ProblemSet:
    problems: list[Problem]
    source: str
    without_strategy: int  # problems that train with the RL term only
    strategy_source: str = ""  # where the strategies came from (a strategies file, or source's column)
    leaked: list[str] = field(default_factory=list)  # ids whose strategy gave the answer away (dropped)

    def __len__(self) -> int:
        return len(self.problems)

    def fingerprints(self, with_strategies: bool) -> dict[str, dict[str, Any]]:
        """Content fingerprints of what a run trains on: the rows it draws from (id, problem,
        answer, strong-model response) and, with ``with_strategies``, every problem's strategy.
        Hashes of the parsed rows, so they are cheap (the rows are in memory) and a
        reformatted file with the same content is the same data."""
        def digest(items: Iterable[Any]) -> str:
            h = hashlib.sha256()
            for item in items:
                h.update(json.dumps(item, ensure_ascii=False).encode("utf-8") + b"\n")
            return h.hexdigest()

        out = {"problems": {"source": self.source, "rows": len(self.problems),
                            "sha256": digest((p.id, p.problem, p.answer, p.teacher_response) for p in self.problems)}}
        if with_strategies:
            out["strategies"] = {"source": self.strategy_source or self.source,
                                 "rows": len(self.problems) - self.without_strategy,
                                 "sha256": digest((p.id, p.strategy) for p in self.problems)}
        return out


def _text(rec: dict, field: str, source: str, row: int, required: bool) -> str | None:
    value = rec.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise DataError(source, "missing or empty", row=row, field=field)
        return None
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(source, f"{value} is not a usable value (a missing cell read as NaN?)", row=row, field=field)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DataError(source, f"expected text, got {type(value).__name__}", row=row, field=field)
    return value


def build_problems(records: list[dict], source: str, *, problem_field: str = "problem", answer_field: str = "answer",
                   strategy_field: str = "strategy", teacher_response_field: str = "teacher_response",
                   id_field: str = "id", strategies: dict[str, str] | None = None,
                   need_teacher_response: bool = False) -> ProblemSet:
    """Validate every row and build :class:`Problem` objects. ``strategies`` (id -> text, from
    ``sgpo extract``) overrides the strategy column. Row numbers in errors are 1-based."""
    if not records:
        raise DataError(source, "no rows")
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for row, rec in enumerate(records, start=1):
        pid = str(rec[id_field]) if rec.get(id_field) is not None else f"row-{row}"
        if pid in seen:
            raise DataError(source, f"duplicate id '{pid}' (first at row {seen[pid]})", row=row, field=id_field)
        seen[pid] = row
        problem = _text(rec, problem_field, source, row, required=True)
        answer = _text(rec, answer_field, source, row, required=True)
        teacher = _text(rec, teacher_response_field, source, row, required=need_teacher_response)
        if strategies is not None:
            strategy = strategies.get(pid)
        else:
            try:
                strategy = strategy_text(rec.get(strategy_field))
            except StrategyError as e:
                raise DataError(source, str(e), row=row, field=strategy_field) from None
        problems.append(Problem(pid, problem, answer, strategy, teacher, rec))  # type: ignore[arg-type]
    without = sum(p.strategy is None for p in problems)
    return ProblemSet(problems, source, without)


def load_problems(path: str, *, split: str = "train", max_problems: int = 0, strategies: dict[str, str] | None = None,
                  strategies_path: str = "", strategy_file_ids: set[str] | None = None,
                  min_strategy_coverage: float = 0.0, **fields: object) -> ProblemSet:
    """Read and validate problems, joining ``strategies`` (id -> text, read from
    ``strategies_path`` by :func:`sgpo.strategies.store.load_strategies`; every id the file
    holds in ``strategy_file_ids``) by id. With ``min_strategy_coverage`` > 0 (methods that
    learn from strategies) a strategies file whose ids cover less than that share of the
    problems, or problems of which less than that share has a strategy, are an error; a
    partial match above it is a warning."""
    records = read_records(path, split=split)
    if max_problems:
        records = records[:max_problems]
    problems = build_problems(records, str(path), strategies=strategies, **fields)  # type: ignore[arg-type]
    problems.strategy_source = strategies_path or f"{path} (field '{fields.get('strategy_field', 'strategy')}')"
    if min_strategy_coverage > 0:
        check_strategy_coverage(problems, min_strategy_coverage, strategies_path, strategy_file_ids)
    return problems


def check_strategy_coverage(problems: ProblemSet, min_coverage: float, strategies_path: str = "",
                            file_ids: set[str] | None = None) -> None:
    """Stop a strategy-guided run whose strategies do not belong to its problems (a
    misspelt or wrong file, another id field): without this it trains as GRPO with exit 0."""
    n = len(problems)
    with_strategy = n - problems.without_strategy
    setting = f"data.min_strategy_coverage={min_coverage:g}"
    if file_ids is not None:
        ids = [p.id for p in problems.problems]
        matched = sum(i in file_ids for i in ids)
        if matched < min_coverage * n:
            example = sorted(file_ids)[:2]
            raise DataError(strategies_path, f"{matched} of {n} problem ids of {problems.source} have a record here "
                            f"(file ids look like {example}, problem ids like {ids[:2]}); check the file and "
                            f"data.id_field, or lower {setting}")
        if matched < n:
            print(f"sgpo: warning: {n - matched} of {n} problems have no record in {strategies_path}; "
                  "they train with the RL term only", file=sys.stderr)
    if with_strategy == 0 or (file_ids is None and with_strategy < min_coverage * n):
        where = strategies_path or f"{problems.source} (data.strategy_field)"
        status = " with status ok" if strategies_path else ""
        raise DataError(where, f"{with_strategy} of {n} problems have a strategy{status}; a strategy-guided method "
                        f"needs at least {setting} of them (or train with --method grpo)")


def check_prompt_lengths(items: Iterable[tuple[str, str, str | None]], style: Any, tokenizer: Any,
                         context: int | None, source: str) -> None:
    """Stop before the model loads on a prompt longer than the model's context (``context``
    tokens; None: unknown, no check): such a prompt would run for minutes and then fail or
    be cut. ``items`` are (problem id, problem text, strategy or None), rendered with
    ``style`` (a :class:`sgpo.prompts.PromptStyle`). Cheap for long lists: the prompt's size
    in bytes is the template's plus the inserted texts', and only prompts of at least
    ``context`` bytes are rendered and tokenized (byte-level tokenizers give at most one
    token per byte)."""
    if not context:
        return
    plain = len(style.render(tokenizer, "").encode("utf-8"))
    guided = len(style.render(tokenizer, "", "-").encode("utf-8"))
    for pid, problem, strategy in items:
        size = len(problem.encode("utf-8")) + (guided + len(strategy.encode("utf-8")) if strategy else plain)
        if size < context:
            continue
        if size > 64 * context:  # no need to tokenize megabytes to know
            raise DataError(source, f"problem '{pid}': the prompt is about {size} bytes, far beyond the model's "
                            f"context of {context} tokens")
        n = len(tokenizer(style.render(tokenizer, problem, strategy), add_special_tokens=False)["input_ids"])
        if n >= context:
            raise DataError(source, f"problem '{pid}': the prompt is {n} tokens, the model's context is {context}")
