"""`sgpo extract` against a real HTTP server on loopback that scripts every reply: valid,
leaking and malformed strategies, rate limits, server errors, timeouts, dropped connections;
then resume, kill safety and Ctrl-C."""

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from sgpo.data import Problem
from sgpo.io import read_jsonl_tolerant
from sgpo.strategies.cli import register
from sgpo.strategies.extract import ExtractConfig, run_extraction
from sgpo.testing import LoopbackChatServer, Reply, strategy_reply, user_text
from sgpo.strategies.openai_client import OpenAIChatClient
from sgpo.strategies.retry import RetryPolicy

REPO = Path(__file__).resolve().parents[1]
VALID = strategy_reply()
VALID_2 = strategy_reply(key_insight="Find an invariant that every allowed move preserves.")
FENCED = "Here you go:\n```json\n" + VALID_2 + "\n```\nHope this helps!"
LEAK_17 = strategy_reply(key_insight="Add the parts; the total comes to 17 in the end.")
LEAK_SYMBOLIC = strategy_reply(check="The length should come out as $\\frac{1}{\\sqrt{2}}$.")
ANSWERS = {"symbolic-leak": "\\frac{\\sqrt{2}}{2}", "string-leak": "17", "mixed": "17"}


class Scripted:
    """Per-problem reply sequences (the last reply repeats); problems are found by their
    ``[id]`` tag in the user message. Records when each problem's requests arrived."""

    def __init__(self, replies: dict[str, list[Reply]], default: Reply | None = None):
        self.replies, self.default = replies, default or Reply(texts=[VALID, VALID_2])
        self.seen: dict[str, list[float]] = defaultdict(list)

    def __call__(self, body: dict) -> Reply:
        text = user_text(body)
        pid = text[text.index("[") + 1 : text.index("]")]
        self.seen[pid].append(time.monotonic())
        seq = self.replies.get(pid, [self.default])
        return seq[min(len(self.seen[pid]), len(seq)) - 1]

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.seen.items()}


def write_input(path: Path, ids: list[str]) -> Path:
    with path.open("w") as f:
        for pid in ids:
            f.write(json.dumps({"id": pid, "problem": f"[{pid}] How many ways are there?",
                                "answer": ANSWERS.get(pid, "42"), "teacher_response": "Count them... 42."}) + "\n")
    return path


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sgpo")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def extract_argv(inp: Path, out: Path, url: str, *extra: str) -> list[str]:
    return ["extract", "--input", str(inp), "--output", str(out), "--base-url", url, "--model", "teacher-x",
            "--num-candidates", "2", "--timeout", "0.5", "--max-retries", "2", "--backoff", "0.01",
            "--no-progress", *extra]


def latest_by_id(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in read_jsonl_tolerant(path)}


def test_every_failure_mode_is_accounted_for_and_rerun_skips_finished(tmp_path):
    script = Scripted({
        "fence": [Reply(texts=[FENCED, "I could not do it"])],
        "string-leak": [Reply(texts=[LEAK_17, LEAK_17])],
        "symbolic-leak": [Reply(texts=[LEAK_SYMBOLIC, LEAK_SYMBOLIC])],
        "malformed": [Reply(texts=['{"problem_type": "x", "plan": [', "plan: count things"])],
        "mixed": [Reply(texts=[LEAK_17, VALID_2])],
        "rate-limited": [Reply(status=429, headers={"Retry-After": "1"}), Reply(texts=[VALID, VALID_2])],
        "flaky": [Reply(status=500, body="oops")],  # replaced below by a 500 then success
        "slow": [Reply(delay_s=2.0, texts=[VALID, VALID]), Reply(texts=[VALID, VALID_2])],
        "dropped": [Reply(drop=True), Reply(texts=[VALID, VALID_2])],
        "down": [Reply(status=503)],
    })
    script.replies["flaky"].append(Reply(texts=[VALID, VALID_2]))
    ids = ["ok", "fence", "string-leak", "symbolic-leak", "malformed", "mixed", "rate-limited", "flaky", "slow",
           "dropped", "down"]
    inp, out = write_input(tmp_path / "in.jsonl", ids), tmp_path / "out.jsonl"
    with LoopbackChatServer(script) as server:
        assert run_cli(extract_argv(inp, out, server.base_url, "--concurrency", "4")) == 0
        # 1 request each, 2 for one retry, 3 for "down" (first try + --max-retries 2)
        assert script.counts() == {**{i: 1 for i in ids[:6]}, "rate-limited": 2, "flaky": 2, "slow": 2,
                                   "dropped": 2, "down": 3}
        gap = script.seen["rate-limited"][1] - script.seen["rate-limited"][0]
        assert gap >= 0.95  # Retry-After: 1 honoured (the backoff alone would be ~0.01 s)

        recs = latest_by_id(out)
        assert len(read_jsonl_tolerant(out)) == len(ids)
        status = {i: r["status"] for i, r in recs.items()}
        assert status == {"ok": "ok", "fence": "ok", "string-leak": "leaked", "symbolic-leak": "leaked",
                          "malformed": "invalid", "mixed": "ok", "rate-limited": "ok", "flaky": "ok", "slow": "ok",
                          "dropped": "ok", "down": "failed"}
        assert recs["fence"]["strategy"]["key_insight"] == "Find an invariant that every allowed move preserves."
        assert [r["reason"].split(":")[0] for r in recs["fence"]["rejected"]] == ["invalid"]
        assert [r["reason"].split(":")[0] for r in recs["string-leak"]["rejected"]] == ["string leak"] * 2
        assert [r["reason"].split(":")[0] for r in recs["symbolic-leak"]["rejected"]] == ["symbolic leak"] * 2
        assert recs["mixed"]["rejected"] == [{"candidate": LEAK_17, "reason": recs["mixed"]["rejected"][0]["reason"]}]
        assert recs["mixed"]["strategy_text"].startswith("Problem type: counting with constraints\nKey insight: Find")
        assert recs["rate-limited"]["usage"] == {"prompt_tokens": 10, "completion_tokens": 10, "requests": 2,
                                                 "retries": 1}
        assert "gave up after 3 attempts, last error: HTTP 503" in recs["down"]["error"]
        for r in recs.values():
            assert (r["teacher"], r["prompt_version"], r["answer"]) == ("teacher-x", "strategy-v1", ANSWERS.get(
                r["id"], "42")) and len(r["input_hash"]) == 16 and r["problem"].startswith(f"[{r['id']}]")

        summary = json.loads((tmp_path / "out.summary.json").read_text())
        assert summary["statuses"] == {"ok": 7, "leaked": 2, "invalid": 1, "failed": 1, "pending": 0}
        run = summary["this_run"]
        # 10 answered requests x (10 prompt, 2 x 5 completion tokens); retries 1+1+1+1+2
        assert (run["requests"], run["retries"], run["prompt_tokens"], run["completion_tokens"]) == (17, 6, 100, 100)
        assert run["rejected_candidates"] == {"invalid": 3, "string leak": 3, "symbolic leak": 2}
        assert summary["interrupted"] is False and run["requests_per_s"] > 0

        # rerun: the server is back; only the failed problem is requested again
        script.replies["down"] = [Reply(texts=[VALID, VALID_2])]
        script.seen.clear()
        assert run_cli(extract_argv(inp, out, server.base_url)) == 0
        assert script.counts() == {"down": 1}
        assert latest_by_id(out)["down"]["status"] == "ok"
        summary = json.loads((tmp_path / "out.summary.json").read_text())
        assert summary["statuses"]["ok"] == 8 and summary["this_run"]["skipped_finished"] == 10

        script.seen.clear()  # everything final now: no request at all
        assert run_cli(extract_argv(inp, out, server.base_url)) == 0
        assert script.counts() == {}
        # another teacher is a different resume key: all problems are new work for it
        assert run_cli(extract_argv(inp, out, server.base_url)[:-1] + ["--model", "teacher-y", "--no-progress"]) == 0
        assert sum(script.counts().values()) >= len(ids)


def test_torn_last_line_is_repaired_and_redone(tmp_path):
    script = Scripted({})
    ids = ["a", "b", "c", "d"]
    inp, out = write_input(tmp_path / "in.jsonl", ids), tmp_path / "out.jsonl"
    with LoopbackChatServer(script) as server:
        assert run_cli(extract_argv(inp, out, server.base_url)) == 0
        lines = out.read_text().splitlines(keepends=True)
        torn_id = json.loads(lines[-1])["id"]
        out.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # killed mid-append
        script.seen.clear()
        assert run_cli(extract_argv(inp, out, server.base_url)) == 0
        assert script.counts() == {torn_id: 1}
    rows = [json.loads(line) for line in out.read_text().splitlines()]  # every line parses
    assert sorted(r["id"] for r in rows) == ids and all(r["status"] == "ok" for r in rows)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path):
    ids = [f"q{i:02d}" for i in range(30)]
    script = Scripted({})
    inp, out = write_input(tmp_path / "in.jsonl", ids), tmp_path / "out.jsonl"
    with LoopbackChatServer(script, latency_s=0.2) as server:
        code = ("import argparse, sys\nfrom sgpo.strategies.cli import register\n"
                "p = argparse.ArgumentParser(); s = p.add_subparsers(dest='command'); register(s)\n"
                "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n")
        argv = extract_argv(inp, out, server.base_url, "--concurrency", "2")
        proc = subprocess.Popen([sys.executable, "-c", code, *argv], cwd=REPO, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 30
        while (not out.exists() or len(out.read_text().splitlines()) < 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        summary = json.loads((tmp_path / "out.summary.json").read_text())
        assert summary["interrupted"] is True and "interrupted" in err
        done = len(read_jsonl_tolerant(out))
        assert summary["statuses"] == {"ok": done, "leaked": 0, "invalid": 0, "failed": 0, "pending": 30 - done}
        assert 2 <= done < 30
        done_ids = set(latest_by_id(out))
        script.seen.clear()
        # a generous timeout: on a loaded machine a 0.5 s one times out and retries (counts of 2)
        assert run_cli(extract_argv(inp, out, server.base_url, "--concurrency", "8", "--timeout", "30")) == 0
        assert script.counts() == {i: 1 for i in ids if i not in done_ids}
    assert sorted(latest_by_id(out)) == ids


def _problems(ids):
    return [Problem(i, f"[{i}] Count it.", "42", None, "A solution.") for i in ids]


def _extract(problems, url, out, **kw):
    async def main():
        client = OpenAIChatClient(url, "t", timeout_s=2, concurrency=1, retry=RetryPolicy(1, 0.01))
        try:
            return await run_extraction(problems, client, out, ExtractConfig(teacher="t", show_progress=False, **kw))
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_server_ignoring_n_gets_repeated_requests(tmp_path):
    script = Scripted({}, default=Reply(texts=[VALID]))  # always one choice, whatever n says
    with LoopbackChatServer(script) as server:
        summary = _extract(_problems(["a", "b"]), server.base_url, tmp_path / "o.jsonl", num_candidates=3,
                           concurrency=1)
    # a: one n=3 request answered with 1 choice, then 2 single requests; b: 3 single requests
    assert [r.get("n") for r in server.requests] == [3, None, None, None, None, None]
    assert summary["statuses"]["ok"] == 2
    assert all(len(r["candidates"]) == 3 for r in read_jsonl_tolerant(tmp_path / "o.jsonl"))


def test_server_rejecting_n_gets_repeated_requests(tmp_path):
    def script(body):
        return Reply(status=400, body='{"error": "n > 1 not supported"}') if body.get("n") else Reply(texts=[VALID])

    with LoopbackChatServer(script) as server:
        summary = _extract(_problems(["a"]), server.base_url, tmp_path / "o.jsonl", num_candidates=2)
        assert [r.get("n") for r in server.requests] == [2, None, None]
    assert summary["statuses"]["ok"] == 1


def test_client_errors_fail_at_once(tmp_path):
    with LoopbackChatServer(lambda body: Reply(status=401, body='{"error": "bad key"}')) as server:
        summary = _extract(_problems(["a"]), server.base_url, tmp_path / "o.jsonl", num_candidates=1)
        assert len(server.requests) == 1
    rec = read_jsonl_tolerant(tmp_path / "o.jsonl")[0]
    assert rec["status"] == "failed" and rec["error"] == "HTTP 401 Unauthorized"  # the body is never stored
    assert summary["statuses"]["failed"] == 1


def test_unreadable_body_is_retried(tmp_path):
    replies = iter([Reply(body="<html>proxy error</html>"), Reply(texts=[VALID])])
    with LoopbackChatServer(lambda body: next(replies)) as server:
        summary = _extract(_problems(["a"]), server.base_url, tmp_path / "o.jsonl", num_candidates=1)
    assert summary["statuses"]["ok"] == 1 and summary["this_run"]["retries"] == 1


@pytest.mark.parametrize("rows, message", [
    ([{"id": "a", "problem": "p", "answer": "1"}], "in.jsonl, row 1, field 'teacher_response'"),
    ([{"id": "a", "problem": "p", "answer": "1", "teacher_response": "r"},
      {"id": "a", "problem": "q", "answer": "2", "teacher_response": "r"}], "row 2, field 'id': duplicate id 'a'"),
    ([{"id": "a", "problem": " ", "answer": "1", "teacher_response": "r"}], "row 1, field 'problem'"),
])
def test_bad_input_is_reported_before_any_request(tmp_path, capsys, rows, message):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with LoopbackChatServer(lambda body: Reply(texts=[VALID])) as server:
        assert run_cli(extract_argv(inp, tmp_path / "o.jsonl", server.base_url)) == 2
        assert server.requests == []
    assert message in capsys.readouterr().err


def test_custom_field_names(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"uid": 7, "question": "[7] Count.", "gold": 3, "solution": "It is 3."}) + "\n")
    with LoopbackChatServer(Scripted({})) as server:
        argv = extract_argv(inp, tmp_path / "o.jsonl", server.base_url, "--problem-field", "question",
                            "--answer-field", "gold", "--response-field", "solution", "--id-field", "uid")
        assert run_cli(argv) == 0
    rec = read_jsonl_tolerant(tmp_path / "o.jsonl")[0]
    assert (rec["id"], rec["answer"], rec["status"]) == ("7", "3", "ok")
