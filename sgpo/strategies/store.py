"""Reading extraction output: the append-only JSONL that ``sgpo extract`` and
``sgpo score-strategies`` write, where a later record for the same key supersedes an
earlier one. The trainer joins strategies by id through :func:`load_strategies`; resume
logic uses :func:`latest_records`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Hashable

from sgpo.io import DataError, read_jsonl_tolerant
from sgpo.schema import StrategyError, strategy_text

STATUSES = ("ok", "leaked", "invalid", "failed")
FINAL_STATUSES = frozenset({"ok", "leaked", "invalid"})  # "failed" is retried on rerun


def input_hash(problem: str, answer: str, response: str) -> str:
    """Fingerprint of one extraction input: a changed problem, answer or response is new work."""
    blob = json.dumps([problem, answer, response], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def record_key(rec: dict[str, Any]) -> tuple[str, str, str, str]:
    """Resume key of an extraction record: (id, input hash, prompt version, teacher model)."""
    return (str(rec.get("id")), str(rec.get("input_hash")), str(rec.get("prompt_version")), str(rec.get("teacher")))


def latest_records(path: str | os.PathLike, key: Callable[[dict[str, Any]], Hashable] = record_key
                   ) -> dict[Hashable, dict[str, Any]]:
    """The newest record per key, in order of first appearance (a torn last line is ignored)."""
    latest: dict[Hashable, dict[str, Any]] = {}
    for rec in read_jsonl_tolerant(path):
        latest[key(rec)] = rec
    return latest


def strategy_file_ids(path: str | os.PathLike) -> set[str]:
    """Every problem id the file has a record for, whatever its status."""
    return {str(r.get("id")) for r in read_jsonl_tolerant(path)}


def load_strategies(path: str | os.PathLike) -> dict[str, str]:
    """id -> rendered strategy text for every problem whose newest record has status ``ok``.
    Records of other statuses are skipped (those problems train without a strategy); when a
    file holds several runs for one id (say two teachers), the newest record wins. A missing
    file is an error (read as empty, SGPO would quietly train as GRPO)."""
    if not os.path.isfile(path):
        raise DataError(str(path), "strategies file not found" + (" (it is a folder)" if os.path.isdir(path) else ""))
    by_id = latest_records(path, key=lambda r: str(r.get("id")))
    out: dict[str, str] = {}
    for rec in by_id.values():
        if rec.get("status") != "ok":
            continue
        text = rec.get("strategy_text")
        if not text:
            try:
                text = strategy_text(rec.get("strategy"))
            except StrategyError as e:
                raise DataError(str(path), f"record for id '{rec.get('id')}': {e}", field="strategy") from None
        if not text:
            raise DataError(str(path), f"record for id '{rec.get('id')}' has status ok but no strategy",
                            field="strategy_text")
        out[str(rec["id"])] = text
    return out


def extraction_golds(path: str | os.PathLike) -> dict[str, str]:
    """id -> the gold answer an ``ok`` record's strategy was judged against by `sgpo extract`
    (its leak filters ran against that answer)."""
    by_id = latest_records(path, key=lambda r: str(r.get("id")))
    return {i: str(r["answer"]) for i, r in by_id.items() if r.get("status") == "ok" and r.get("answer") is not None}
