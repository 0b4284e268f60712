"""The extraction driver: problem + gold answer + strong-model solution in,
one strategy record per problem out, through any :class:`TeacherClient`.

Every input problem ends with exactly one current record (ok | leaked | invalid | failed),
appended atomically as soon as it is known, so a killed run loses at most the requests in
flight; a rerun on the same output skips problems whose record is final under the same
(id, input hash, prompt version, teacher) and retries the failed ones.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgpo.data import Problem, build_problems
from sgpo.io import append_jsonl, exclusive_lock, read_records, repair_jsonl_tail, write_json_atomic
from sgpo.strategies.client import TeacherClient, TeacherError, Usage, scrub_error
from sgpo.strategies.leaks import Equivalence, leak_reasons
from sgpo.strategies.prompt import PROMPT_VERSION, extraction_messages, parse_strategy
from sgpo.schema import Strategy, StrategyError
from sgpo.strategies.store import FINAL_STATUSES, STATUSES, input_hash, latest_records, record_key


@dataclass(frozen=True)
class ExtractConfig:
    teacher: str  # teacher model name: recorded in every record and part of the resume key
    num_candidates: int = 4  # strategies drawn per problem; the first clean one is kept
    concurrency: int = 16  # problems (and HTTP requests) in flight
    temperature: float = 0.7
    max_tokens: int = 1024  # per teacher reply
    symbolic_filter: bool = True  # run the math-verify leak filter after the string filter
    show_progress: bool = True


@dataclass
class RunStats:
    """What this invocation did (resumed problems are counted as skipped, not processed)."""

    statuses: Counter[str] = field(default_factory=Counter)
    rejections: Counter[str] = field(default_factory=Counter)  # per candidate, by filter
    errors: Counter[str] = field(default_factory=Counter)  # failed problems, by (scrubbed) error
    usage: Usage = field(default_factory=Usage)
    skipped: int = 0
    elapsed_s: float = 0.0
    interrupted: bool = False

    def add(self, rec: dict[str, Any]) -> None:
        self.statuses[rec["status"]] += 1
        if rec.get("error"):
            self.errors[rec["error"]] += 1
        for r in rec.get("rejected", []):
            self.rejections[r["reason"].split(":", 1)[0]] += 1
        self.usage.add(Usage(**rec["usage"]))


def load_inputs(path: str, *, split: str = "train", problem_field: str = "problem", answer_field: str = "answer",
                response_field: str = "teacher_response", id_field: str = "id") -> list[Problem]:
    """Read and validate every row before any request is sent: a missing or empty field or a
    duplicate id is a :class:`~sgpo.io.DataError` naming the file, row and field."""
    records = read_records(path, split=split)
    # strategies={} skips parsing any strategy column the input may carry: it is not used here
    return build_problems(records, str(path), problem_field=problem_field, answer_field=answer_field,
                          teacher_response_field=response_field, id_field=id_field, strategies={},
                          need_teacher_response=True).problems


def problem_key(p: Problem, config: ExtractConfig) -> tuple[str, str, str, str]:
    return record_key({"id": p.id, "input_hash": input_hash(p.problem, p.answer, p.teacher_response or ""),
                       "prompt_version": PROMPT_VERSION, "teacher": config.teacher})


def judge_candidate(text: str, gold: str, *, symbolic: bool = True,
                    equivalent: Equivalence | None = None) -> tuple[Strategy | None, str]:
    """(strategy, "") if the reply is a valid strategy that does not leak ``gold``, else
    (None, reason) with the reason prefixed by the filter that fired."""
    try:
        strategy = parse_strategy(text)
    except StrategyError as e:
        return None, f"invalid: {e}"
    reasons = leak_reasons(strategy.render(), gold, symbolic=symbolic, equivalent=equivalent)
    return (None, reasons[0]) if reasons else (strategy, "")


def build_record(p: Problem, config: ExtractConfig, usage: Usage, texts: list[str] | None = None,
                 error: str = "", equivalent: Equivalence | None = None) -> dict[str, Any]:
    """The output record of one problem; ``texts`` are the teacher replies, or ``error`` says
    why there are none."""
    accepted: list[Strategy] = []
    rejected: list[dict[str, str]] = []
    for text in texts or []:
        strategy, reason = judge_candidate(text, p.answer, symbolic=config.symbolic_filter, equivalent=equivalent)
        if strategy is not None:
            accepted.append(strategy)
        else:
            rejected.append({"candidate": text, "reason": reason})
    if error:
        status = "failed"
    elif accepted:
        status = "ok"
    elif any("leak" in r["reason"].split(":", 1)[0] for r in rejected):
        status = "leaked"
    else:
        status = "invalid"
    rec: dict[str, Any] = {"id": p.id, "status": status}
    if accepted:
        rec.update(strategy=accepted[0].to_dict(), strategy_text=accepted[0].render(),
                   candidates=[s.to_dict() for s in accepted])
    if error:
        rec["error"] = scrub_error(error)
    rec.update(rejected=rejected, problem=p.problem, answer=p.answer, teacher=config.teacher,
               prompt_version=PROMPT_VERSION, input_hash=input_hash(p.problem, p.answer, p.teacher_response or ""),
               usage={"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                      "requests": usage.requests, "retries": usage.retries})
    return rec


async def extract_one(p: Problem, client: TeacherClient, config: ExtractConfig,
                      equivalent: Equivalence | None = None) -> dict[str, Any]:
    """Ask the teacher for candidates and judge them; any failure becomes a ``failed`` record."""
    msgs = extraction_messages(p.problem, p.answer, p.teacher_response or "")
    try:
        texts, usage = await client.complete(msgs, config.num_candidates, temperature=config.temperature,
                                             max_tokens=config.max_tokens)
    except TeacherError as e:
        return build_record(p, config, e.usage, error=str(e))
    except Exception as e:  # a local backend crashing must not take the other problems down
        return build_record(p, config, Usage(), error=f"{type(e).__name__}: {e}")
    return build_record(p, config, usage, texts, equivalent=equivalent)


async def run_extraction(problems: list[Problem], client: TeacherClient, output: str | os.PathLike,
                         config: ExtractConfig, equivalent: Equivalence | None = None) -> dict[str, Any]:
    """Extract strategies for every unfinished problem, appending records to ``output``.
    Cancellation (Ctrl-C) stops cleanly: in-flight problems stay pending and the summary
    says so. Returns the summary, also written to ``OUTPUT.summary.json`` and stderr. The
    output is locked for the run: a second run on it fails at once instead of sending every
    request again."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(lock_path(output), "sgpo extract"):
        return await _run_locked(problems, client, output, config, equivalent)


async def _run_locked(problems: list[Problem], client: TeacherClient, output: Path, config: ExtractConfig,
                      equivalent: Equivalence | None) -> dict[str, Any]:
    from tqdm.auto import tqdm

    repair_jsonl_tail(output)
    prior = latest_records(output)
    todo = [p for p in problems if prior.get(problem_key(p, config), {}).get("status") not in FINAL_STATUSES]
    stats = RunStats(skipped=len(problems) - len(todo))
    queue: asyncio.Queue[Problem] = asyncio.Queue()
    for p in todo:
        queue.put_nowait(p)
    bar = tqdm(total=len(todo), desc="extract", unit="problem", disable=not config.show_progress)
    writes: list[asyncio.Future[None]] = []

    async def worker() -> None:
        while not queue.empty():
            rec = await extract_one(queue.get_nowait(), client, config, equivalent)
            stats.add(rec)
            bar.update()
            bar.set_postfix(ok=stats.statuses["ok"], failed=stats.statuses["failed"], refresh=False)
            # fsync takes milliseconds: off the event loop, so other requests keep flowing; shielded
            # and awaited below, so a record whose answer arrived is written even on Ctrl-C
            write = asyncio.ensure_future(asyncio.to_thread(append_jsonl, output, [rec]))
            writes.append(write)
            await asyncio.shield(write)

    start = time.monotonic()
    workers = [asyncio.create_task(worker()) for _ in range(min(config.concurrency, len(todo)))]
    try:
        await asyncio.gather(*workers)
    except asyncio.CancelledError:
        stats.interrupted = True
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await asyncio.gather(*writes, return_exceptions=True)
        stats.elapsed_s = time.monotonic() - start
        bar.close()
    summary = summarize(problems, output, config, stats)
    write_json_atomic(summary_path(output), summary)
    print(format_summary(summary), file=sys.stderr)
    return summary


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file of an extraction output (``OUTPUT.lock``; it names the running extract)."""
    return Path(output).with_name(Path(output).name + ".lock")


def summary_path(output: str | os.PathLike) -> Path:
    return Path(output).with_suffix(".summary.json")


def summarize(problems: list[Problem], output: Path, config: ExtractConfig, stats: RunStats) -> dict[str, Any]:
    """Final status of every input problem (``pending`` = no record yet) and this run's cost."""
    latest = latest_records(output)
    final = Counter(latest.get(problem_key(p, config), {}).get("status", "pending") for p in problems)
    u = stats.usage
    return {
        "output": str(output), "teacher": config.teacher, "prompt_version": PROMPT_VERSION,
        "problems": len(problems), "interrupted": stats.interrupted,
        "statuses": {s: final.get(s, 0) for s in (*STATUSES, "pending")},
        "this_run": {
            "processed": sum(stats.statuses.values()), "skipped_finished": stats.skipped,
            "statuses": {s: stats.statuses.get(s, 0) for s in STATUSES},
            "rejected_candidates": dict(stats.rejections),
            "errors": dict(stats.errors.most_common(3)),
            "requests": u.requests, "retries": u.retries,
            "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "elapsed_s": round(stats.elapsed_s, 3),
            "requests_per_s": round(u.requests / stats.elapsed_s, 2) if stats.elapsed_s > 0 else 0.0,
        },
    }


def format_summary(s: dict[str, Any]) -> str:
    statuses = ", ".join(f"{k} {v}" for k, v in s["statuses"].items())
    r = s["this_run"]
    line = (f"extract: {s['problems']} problems: {statuses}\n"
            f"  this run: {r['processed']} processed, {r['skipped_finished']} already done, "
            f"{r['requests']} requests ({r['retries']} retries) in {r['elapsed_s']:.1f} s "
            f"= {r['requests_per_s']} req/s, "
            f"tokens {r['prompt_tokens']} prompt + {r['completion_tokens']} completion")
    if s["statuses"]["failed"] or s["statuses"]["pending"]:
        line += "\n  rerun the same command to retry failed and pending problems"
    if s["interrupted"]:
        line += "\n  interrupted"
    return line
