"""`sgpo score-strategies`: behavioural leak test and utility score, with a scripted student
(fast) and with the tiny random model through the CLI (slow)."""

import argparse
import json

import pytest

from sgpo.generation.base import Completion, SamplingConfig
from sgpo.io import read_jsonl_tolerant
from sgpo.strategies.cli import register
from sgpo.testing import EXAMPLE_STRATEGY
from sgpo.strategies.scoring import ANSWER_ONLY_INSTRUCTION, ScoreConfig, apply_scores, score_records
from sgpo.strategies.store import load_strategies

# how many of the 4 samples answer correctly, by (candidate marker, answer-only?); None = no strategy
CORRECT = {("alpha", True): 4, ("alpha", False): 4, ("beta", True): 1, ("beta", False): 2,
           ("gamma", True): 0, ("gamma", False): 3, (None, True): 0, (None, False): 1}


class PlainTokenizer:
    chat_template = None  # sgpo.prompts.render falls back to plain text


class ScriptedStudent:
    """Answers 42 (the gold) in the first CORRECT[...] of its n samples, 0 in the rest."""

    def __init__(self):
        self.calls: list[tuple[int, int, int]] = []

    def generate(self, prompts: list[str], sampling: SamplingConfig, n: int = 1) -> list[list[Completion]]:
        self.calls.append((len(prompts), sampling.max_new_tokens, n))
        out = []
        for p in prompts:
            marker = next((m for m in ("alpha", "beta", "gamma") if f"Key insight: {m}" in p), None)
            k = CORRECT[(marker, ANSWER_ONLY_INSTRUCTION in p)]
            out.append([Completion("\\boxed{42}" if j < k else "\\boxed{0}", [], "stop") for j in range(n)])
        return out


def strategy(marker: str) -> dict:
    return {**EXAMPLE_STRATEGY, "key_insight": f"{marker} idea for the problem."}


def ok_record(pid: str, markers: list[str]) -> dict:
    cands = [strategy(m) for m in markers]
    return {"id": pid, "status": "ok", "strategy": cands[0], "strategy_text": "(rendered)", "candidates": cands,
            "rejected": [], "problem": f"Problem {pid}.", "answer": "42", "teacher": "t", "prompt_version": "v",
            "input_hash": "h"}


CONFIG = ScoreConfig(student="s", samples=4, leak_threshold=0.5, max_new_tokens=64, answer_max_new_tokens=8,
                     show_progress=False)


def test_best_clean_candidate_by_guided_success(tmp_path):
    records = [ok_record("p", ["alpha", "beta", "gamma"]), ok_record("q", ["alpha"]),
               {"id": "r", "status": "invalid", "rejected": [{"candidate": "x", "reason": "invalid: y"}],
                "teacher": "t", "prompt_version": "v", "input_hash": "h"}]
    student = ScriptedStudent()
    summary = score_records(records, student, PlainTokenizer(), tmp_path / "scored.jsonl", CONFIG)
    # one answer-only call and one reasoning call: p has 1 + 3 prompts, q has 1 + 1
    assert student.calls == [(6, 8, 4), (6, 64, 4)]
    out = {r["id"]: r for r in read_jsonl_tolerant(tmp_path / "scored.jsonl")}
    p = out["p"]
    # answer-only without 0/4; alpha 4/4 (gap 1.0 > 0.5: leak), beta 1/4, gamma 0/4; guided 4, 2, 3 of 4
    assert [(c["answer_only_with"], c["p_g"], c["behavioural_leak"]) for c in p["scores"]["candidates"]] == [
        (1.0, 1.0, True), (0.25, 0.5, False), (0.0, 0.75, False)]
    assert (p["status"], p["p_g"], p["p_a"], p["scores"]["answer_only_without"]) == ("ok", 0.75, 0.25, 0.0)
    assert p["strategy"]["key_insight"] == "gamma idea for the problem."
    assert p["strategy_text"].startswith("Problem type: counting with constraints\nKey insight: gamma")
    assert [r["reason"][:40] for r in p["rejected"]] == ["behavioural leak: answer-only success 1."]
    assert out["q"]["status"] == "leaked" and "strategy" not in out["q"] and "strategy_text" not in out["q"]
    assert out["r"] == {**records[2], "student": "s"}
    assert summary["statuses"] == {"ok": 1, "leaked": 1, "invalid": 1, "failed": 0}
    assert (summary["behavioural_leaks"], summary["mean_p_g"]) == (2, 0.75)
    assert load_strategies(tmp_path / "scored.jsonl").keys() == {"p"}

    student.calls.clear()  # rerun: everything already scored for this student
    score_records(records, student, PlainTokenizer(), tmp_path / "scored.jsonl", CONFIG)
    assert student.calls == []


def test_ties_keep_the_earlier_candidate():
    rec = ok_record("p", ["beta", "gamma"])
    out = apply_scores(rec, p_a=0.0, answer_without=0.0, answer_with=[0.0, 0.0], p_g=[0.5, 0.5], config=CONFIG)
    assert out["strategy"]["key_insight"] == "beta idea for the problem."


def test_gap_equal_to_threshold_is_not_a_leak():
    rec = ok_record("p", ["beta"])
    out = apply_scores(rec, p_a=0.0, answer_without=0.25, answer_with=[0.75], p_g=[0.5], config=CONFIG)
    assert out["status"] == "ok" and out["scores"]["candidates"][0]["behavioural_gap"] == 0.5


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="sgpo")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.slow
def test_score_strategies_cli_with_tiny_model(tmp_path, tiny_model_dir):
    extracted, data = tmp_path / "extracted.jsonl", tmp_path / "data.jsonl"
    rec = ok_record("p", ["beta", "gamma"])
    del rec["problem"], rec["answer"]  # as if extracted elsewhere: joined from --data by id
    extracted.write_text(json.dumps(rec) + "\n")
    data.write_text(json.dumps({"id": "p", "problem": "What is 6 times 7?", "answer": "42"}) + "\n")
    argv = ["score-strategies", "--input", str(extracted), "--model", str(tiny_model_dir), "--output",
            str(tmp_path / "scored.jsonl"), "--data", str(data), "--samples", "2", "--max-new-tokens", "8",
            "--answer-max-new-tokens", "4", "--no-progress"]
    assert run_cli(argv) == 0
    [out] = read_jsonl_tolerant(tmp_path / "scored.jsonl")
    # a random model never answers 42: no gaps, no leaks, p_g = 0, the first candidate kept
    assert (out["status"], out["p_g"], out["problem"]) == ("ok", 0.0, "What is 6 times 7?")
    assert [c["behavioural_leak"] for c in out["scores"]["candidates"]] == [False, False]
    summary = json.loads((tmp_path / "scored.summary.json").read_text())
    assert summary["statuses"]["ok"] == 1 and summary["student"] == str(tiny_model_dir)


def test_missing_problem_without_data_is_an_error(tmp_path, capsys):
    rec = ok_record("p", ["beta"])
    del rec["problem"]
    (tmp_path / "e.jsonl").write_text(json.dumps(rec) + "\n")
    argv = ["score-strategies", "--input", str(tmp_path / "e.jsonl"), "--model", "unused", "--output",
            str(tmp_path / "o.jsonl")]
    assert run_cli(argv) == 2
    assert "record for id 'p' has no problem: pass --data" in capsys.readouterr().err
