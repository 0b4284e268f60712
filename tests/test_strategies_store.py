"""Retry timing and reading extraction output (the trainer's join by id)."""

import json
import random
from datetime import datetime, timezone

import pytest

from sgpo.io import DataError
from sgpo.testing import EXAMPLE_STRATEGY
from sgpo.strategies.retry import RetryPolicy, parse_retry_after
from sgpo.schema import render_strategy, validate_strategy
from sgpo.strategies.store import input_hash, latest_records, load_strategies, record_key

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("value, seconds", [
    ("3", 3.0), (" 1.5 ", 1.5), ("-2", 0.0),
    ("Mon, 01 Jun 2026 12:00:07 GMT", 7.0),  # 7 s after NOW
    ("Mon, 01 Jun 2026 11:59:00 GMT", 0.0),  # in the past
    (None, None), ("", None), ("soon", None),
])
def test_parse_retry_after(value, seconds):
    assert parse_retry_after(value, now=NOW) == seconds


def test_backoff_doubles_with_jitter_and_is_capped():
    policy = RetryPolicy(backoff_base_s=1.0, backoff_max_s=5.0)
    rng = random.Random(0)
    for attempt, full in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 5.0), (10, 5.0)]:
        d = policy.delay(attempt, rng=rng)
        assert full * 0.5 <= d < full  # jitter factor in [0.5, 1)


def test_retry_after_wins_when_longer_and_is_capped():
    policy = RetryPolicy(backoff_base_s=0.01, retry_after_max_s=30.0)
    assert policy.delay(0, retry_after=2.0) == 2.0
    assert policy.delay(0, retry_after=3600.0) == 30.0
    assert policy.delay(0, retry_after=0.0) < 0.01


def test_input_hash_changes_with_any_input():
    h = input_hash("p", "a", "r")
    assert len(h) == 16 and h == input_hash("p", "a", "r")
    assert len({h, input_hash("p", "a", "r2"), input_hash("p", "a2", "r"), input_hash("p2", "a", "r")}) == 4


def _rec(pid, status, insight="Count the complement and subtract it from the total.", **kw):
    strategy = validate_strategy({**EXAMPLE_STRATEGY, "key_insight": insight})
    rec = {"id": pid, "status": status, "input_hash": "h", "prompt_version": "v", "teacher": "t", **kw}
    if status == "ok":
        rec.update(strategy=strategy.to_dict(), strategy_text=strategy.render())
    return rec


def _write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_load_strategies_keeps_ok_newest_per_id(tmp_path):
    path = tmp_path / "s.jsonl"
    newer = "Pair each term with its mirror image so the sum simplifies."
    _write(path, [_rec("a", "ok"), _rec("b", "leaked"), _rec("c", "failed"), _rec("a", "ok", insight=newer),
                  _rec("d", "ok"), _rec("d", "invalid")], tail='{"id": "e", "sta')  # torn last line
    out = load_strategies(path)
    assert sorted(out) == ["a"]  # b leaked, c failed, d superseded by invalid, e torn
    assert f"Key insight: {newer}" in out["a"]


def test_load_strategies_renders_json_when_text_is_missing(tmp_path):
    path = tmp_path / "s.jsonl"
    rec = _rec("a", "ok", insight=EXAMPLE_STRATEGY["key_insight"])
    del rec["strategy_text"]
    _write(path, [rec])
    assert load_strategies(path) == {"a": render_strategy(validate_strategy(EXAMPLE_STRATEGY))}


def test_load_strategies_rejects_ok_without_strategy(tmp_path):
    path = tmp_path / "s.jsonl"
    _write(path, [{"id": "x", "status": "ok"}])
    with pytest.raises(DataError, match="id 'x' has status ok but no strategy"):
        load_strategies(path)


def test_latest_records_by_resume_key(tmp_path):
    path = tmp_path / "s.jsonl"
    _write(path, [_rec("a", "failed"), _rec("a", "ok"), _rec("a", "ok", teacher="other")])
    latest = latest_records(path)
    assert [(k, r["status"]) for k, r in latest.items()] == [
        (("a", "h", "v", "t"), "ok"), (("a", "h", "v", "other"), "ok")]
    assert record_key(_rec("a", "ok")) == ("a", "h", "v", "t")
