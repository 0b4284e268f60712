"""`sgpo extract --backend hf` end to end with the tiny random model: its replies are
garbage, so every problem ends ``invalid``, but the whole local pipeline runs."""

import json

import pytest

from sgpo.io import read_jsonl_tolerant
from tests.test_extract import run_cli


@pytest.mark.slow
def test_extract_with_local_tiny_model(tmp_path, tiny_model_dir):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i),
                                       "teacher_response": f"{i} + {i} = {2 * i}."}) + "\n" for i in range(2)))
    argv = ["extract", "--input", str(inp), "--output", str(out), "--backend", "hf", "--model", str(tiny_model_dir),
            "--num-candidates", "2", "--max-tokens", "32", "--batch-size", "4", "--no-progress"]
    assert run_cli(argv) == 0
    recs = read_jsonl_tolerant(out)
    assert sorted(r["id"] for r in recs) == ["p0", "p1"]
    for r in recs:
        assert r["status"] == "invalid" and len(r["rejected"]) == 2
        assert all(c["reason"].startswith("invalid: ") for c in r["rejected"])
        u = r["usage"]
        assert u["prompt_tokens"] > 100 and 2 <= u["completion_tokens"] <= 2 * 32 and u["requests"] == 1
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["statuses"] == {"ok": 0, "leaked": 0, "invalid": 2, "failed": 0, "pending": 0}

    assert run_cli(argv) == 0  # invalid is final: a rerun generates nothing
    assert len(read_jsonl_tolerant(out)) == 2
