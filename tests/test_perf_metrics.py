"""Throughput metrics: perf/total_tokens, perf/tokens_per_s and perf/throughput (verl's
definition: total tokens / step time / devices) in metrics.jsonl, from one real training step
with the scripted generator of tests/test_trainer_step.py."""

from __future__ import annotations

import json

import pytest

from sgpo.trainer.metrics import throughput
from tests.test_trainer_step import SCRIPT, _tokens, _trainer


def test_throughput_definition() -> None:
    # 12,000 tokens in a 4 s step on 3 devices: 3,000 tokens/s, 1,000 tokens/s per device
    assert throughput(12_000.0, 4.0, 3) == {"perf/tokens_per_s": 3000.0, "perf/throughput": 1000.0}
    assert throughput(None, 4.0, 1) == {} and throughput(10.0, 0.0, 1) == {}


@pytest.mark.slow
def test_perf_metrics_in_metrics_jsonl(tmp_path, tiny_model_dir) -> None:
    """Every trajectory's prompt + completion tokens (4 problems: 4 autonomous each, 2 guided for
    the 3 with a strategy) over rollout + update time, beside the time_* phases."""
    trainer, _ = _trainer(tmp_path, tiny_model_dir, "training.max_steps=1", "run.save_final_model=false")
    trainer.train()
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    seen, tok = trainer.generator.seen, trainer.tokenizer
    total = sum(len(seen[key]) + len(_tokens(text, tok)) for key, texts in SCRIPT.items() for text in texts)
    assert record["perf/total_tokens"] == total and total > 0
    seconds = record["time_rollout"] + record["time_update"]
    assert record["perf/tokens_per_s"] == pytest.approx(total / seconds, rel=1e-9)
    assert record["perf/throughput"] == pytest.approx(record["perf/tokens_per_s"], rel=1e-12)  # one device
    assert {"time/sample", "time/score", "time/old_logprobs"} <= record.keys()
