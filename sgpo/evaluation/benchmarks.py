"""Where evaluation problems come from: the eight built-in benchmark names (a local
normalised JSONL, or a public Hugging Face copy for users with a network), or any JSONL /
Parquet file with a problem and an answer column. How many samples each gets is the
evaluation protocol's business (:mod:`sgpo.evaluation.protocols`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sgpo.data import build_problems
from sgpo.io import DataError, read_records

DATA_DIR_ENV = "SGPO_DATA_DIR"


def _gsm8k_answer(raw: Any) -> str:
    """GSM8K's answer column is a worked solution ending in ``#### 1,000``."""
    return str(raw).rsplit("####", 1)[-1].strip().replace(",", "")


def _integral_answer(raw: Any) -> str:
    """The AIMO AMC copy stores answers as floats (``142.0``); an integral value is written as
    an integer, as in the local ``amc83.jsonl``."""
    value = float(raw)
    return str(int(value)) if value.is_integer() else str(raw)


def _olympiad_answer(raw: Any) -> str:
    """OlympiadBench's ``final_answer`` is a list like ``["$69$,$84$"]``."""
    text = ",".join(raw) if isinstance(raw, list) else str(raw)
    return text.replace("$", "").strip().rstrip(".")


@dataclass(frozen=True)
class HubSource:
    """A public Hugging Face copy of a built-in benchmark and how its columns map to ours.

    These ids were chosen as the widely used public copies; they are not exercised by the
    offline tests, so a renamed upstream column shows up as a DataError naming the field."""

    dataset: str
    split: str
    problem_field: str
    answer_field: str
    id_field: str | None = None
    config: str | None = None
    answer_fn: Callable[[Any], str] | None = None


HUB_SOURCES: dict[str, HubSource] = {
    "math500": HubSource("HuggingFaceH4/MATH-500", "test", "problem", "answer", "unique_id"),
    "aime24": HubSource("HuggingFaceH4/aime_2024", "train", "problem", "answer", "id"),
    "aime25": HubSource("math-ai/aime25", "test", "problem", "answer", "id"),
    "amc23": HubSource("math-ai/amc23", "test", "question", "answer", "id"),
    # AMC 12 2022 and 2023, the 83 problems LUFFY's "amc" column evaluates
    "amc83": HubSource("AI-MO/aimo-validation-amc", "train", "problem", "answer", "id", answer_fn=_integral_answer),
    "olympiadbench": HubSource("Hothan/OlympiadBench", "train", "question", "final_answer", "id",
                               config="OE_TO_maths_en_COMP", answer_fn=_olympiad_answer),
    "minerva": HubSource("math-ai/minervamath", "test", "question", "answer"),
    "gsm8k": HubSource("openai/gsm8k", "test", "question", "answer", config="main", answer_fn=_gsm8k_answer),
}
BUILTIN = tuple(HUB_SOURCES)


@dataclass
class Benchmark:
    name: str
    source: str  # the file or Hub id the problems came from
    problems: list[dict[str, str]]  # {"id", "problem", "answer"}


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    value = explicit or os.environ.get(DATA_DIR_ENV)
    return Path(value) if value else None


def _from_records(records: list[dict[str, Any]], name: str, source: str, problem_field: str, answer_field: str,
                  id_field: str, limit: int) -> Benchmark:
    if limit:
        records = records[:limit]
    problems = build_problems(records, source, problem_field=problem_field, answer_field=answer_field,
                              id_field=id_field, strategy_field="\0none")  # no strategy column at evaluation
    rows = [{"id": p.id, "problem": p.problem, "answer": p.answer} for p in problems.problems]
    return Benchmark(name, source, rows)


def _from_hub(name: str, limit: int) -> Benchmark:
    spec = HUB_SOURCES[name]
    try:
        import datasets

        ds = datasets.load_dataset(spec.dataset, spec.config, split=spec.split)
    except Exception as e:  # offline, renamed, gated: say what was tried
        raise DataError(name, f"no local {name}.jsonl (set --data-dir or ${DATA_DIR_ENV}) and the Hub copy "
                              f"'{spec.dataset}' could not be loaded ({type(e).__name__}: {e})") from None
    records = [dict(r) for r in ds]
    if spec.answer_fn is not None:
        for row, rec in enumerate(records, start=1):
            if rec.get(spec.answer_field) is None:
                raise DataError(spec.dataset, "missing", row=row, field=spec.answer_field)
            rec[spec.answer_field] = spec.answer_fn(rec[spec.answer_field])
    return _from_records(records, name, spec.dataset, spec.problem_field, spec.answer_field,
                         spec.id_field or "\0row", limit)


def load_benchmark(name_or_path: str, *, data_dir_path: str | os.PathLike | None = None, problem_field: str = "problem",
                   answer_field: str = "answer", id_field: str = "id", limit: int = 0) -> Benchmark:
    """Resolve a benchmark: an existing JSONL/Parquet path (named by its file stem), a
    built-in name found as ``NAME.jsonl`` in the data dir, or a built-in name from the Hub.
    ``limit`` keeps the first N problems (smoke tests)."""
    path = Path(name_or_path)
    if path.suffix.lower() in (".jsonl", ".json", ".parquet") or path.exists():
        records = read_records(path)
        return _from_records(records, path.stem, str(path), problem_field, answer_field, id_field, limit)
    name = name_or_path.lower()
    if name not in HUB_SOURCES:
        raise DataError(name_or_path, f"unknown benchmark: not a file and not one of {', '.join(BUILTIN)}")
    root = data_dir(data_dir_path)
    if root is not None and (root / f"{name}.jsonl").exists():
        local = root / f"{name}.jsonl"
        return _from_records(read_records(local), name, str(local), problem_field, answer_field, id_field, limit)
    return _from_hub(name, limit)
