"""Deadlines of the grader: worker processes killed at a CPU-time deadline and replaced,
many threads at once, machine load, a forked or daemonic caller. Every test that could hang
runs its body in a thread joined with a time limit, so a hang fails the test instead of
hanging the suite."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pytest

from sgpo.rewards import score, score_detailed, workers
from sgpo.rewards.matching import Comparison


def box(s: str) -> str:
    return f"So the answer is \\boxed{{{s}}}."


def finishes_within(seconds: float, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a daemon thread; fail (not hang) if it has not returned in ``seconds``."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # re-raised in the test's thread
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"did not finish within {seconds} s (hang)")
    if "error" in out:
        raise out["error"]
    return out["value"]


def worker_pids() -> list[int]:
    """Live (non-zombie) children of this process's grader zygote."""
    zygote = workers.pool()._zygote
    if zygote is None or not Path("/proc").exists():
        return []
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == zygote.proc.pid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def test_eight_threads_with_20ms_deadlines_finish() -> None:
    """The old in-process watchdog deadlocked here: its asynchronous exception landed inside
    ``threading.Condition.__enter__`` and every grading thread blocked. Slow answers (each
    one different, so no verdict comes from the cache) mixed with quick and medium ones."""
    jobs = []
    for i in range(200):
        kind = i % 4
        if kind == 0:
            jobs.append((box(f"(x+1)^{{{1000 + i}}}"), "2", "timeout"))  # minutes of sympy
        elif kind == 1:
            jobs.append((box(str(i)), str(i), 1.0))  # cheap path, in-process
        elif kind == 2:
            jobs.append((box(f"\\frac{{\\sqrt{{2}}}}{{{i}}}"), f"\\sqrt{{2}}/{i}", 1.0))  # a quick sympy comparison
        else:
            jobs.append((box(f"{i}x"), f"{i + 1}x", 0.0))

    def grade_all() -> list:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(lambda job: score_detailed(job[0], job[1], timeout_s=0.02), jobs))

    results = finishes_within(120, grade_all)
    for (_, _, expected), result in zip(jobs, results):
        if expected == "timeout":
            assert result.reward == 0.0 and result.timed_out
        elif expected == 1.0:
            # a 20 ms deadline is tight for sympy on a loaded machine: correct or timed out, never wrong
            assert result.reward == 1.0 or result.timed_out
        else:
            assert result.reward == 0.0
    assert sum(r.timed_out for r in results) >= 50
    assert len(worker_pids()) <= workers.pool().size  # killed workers were reaped, not leaked


def test_deadline_is_cpu_time_so_load_does_not_change_rewards() -> None:
    """Sixteen different answers that each need about 0.15-0.2 s of sympy CPU time, graded by
    eight threads at once with a 0.75 s deadline. Under the old wall-clock deadline the eight
    threads shared one GIL (each call took over 1 s of wall time) and timed out; a worker's CPU
    time does not grow with load, and queueing for a free worker does not count."""
    jobs = [(box(f"(x+1)^{{{52 + i}}}"), f"(x+2)^{{{52 + i}}}", 0.0) for i in range(16)]
    jobs += [(box(f"(x+1)^{{{52 + i}}}"), f"(1+x)^{{{52 + i}}}", 1.0) for i in range(8)]

    def grade_all() -> list:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(lambda job: score_detailed(job[0], job[1], timeout_s=0.75), jobs))

    results = finishes_within(300, grade_all)
    assert [r.timed_out for r in results] == [False] * len(jobs)
    assert [r.reward for r in results] == [expected for _, _, expected in jobs]


def test_a_killed_worker_is_replaced_and_grading_goes_on() -> None:
    def run() -> tuple:
        slow = score_detailed(box("(x+1)^{999}"), "3", timeout_s=0.2)
        after = score_detailed(box("\\frac{\\sqrt{3}}{3}"), "\\frac{1}{\\sqrt{3}}", timeout_s=5.0)
        return slow, after

    slow, after = finishes_within(60, run)
    assert slow.timed_out and slow.reward == 0.0
    assert after.reward == 1.0 and not after.timed_out


def test_a_timed_out_answer_is_not_graded_again() -> None:
    """Verdicts are memoised, time-outs included (G rollouts often repeat one answer; CPU
    time barely depends on load, so a repeat would time out again)."""
    first = finishes_within(60, lambda: score_detailed(box("(x+1)^{998}"), "4", timeout_s=0.3))
    start = time.monotonic()
    again = score_detailed(box("(x+1)^{998}"), "4", timeout_s=0.3)
    assert first.timed_out and again.timed_out
    assert time.monotonic() - start < 0.2  # from the memo: no worker involved


def test_long_c_call_is_stopped_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """``10^{10^9}`` is one big-integer power in C that holds the GIL for minutes; no
    in-process deadline can interrupt it (the size guard normally refuses it: switched off
    here, in a pool of its own). The worker is killed at its CPU deadline."""
    monkeypatch.setenv("SGPO_GRADER_MAX_COST_BITS", str(1 << 62))  # read by the new zygote
    pool = workers.WorkerPool(1)
    try:
        start = time.monotonic()
        verdict = finishes_within(120, lambda: pool.run(Comparison(("10^{10^{9}}",), ("2",)), 0.5))
        elapsed = time.monotonic() - start
        assert verdict == workers.TIMEOUT
        assert finishes_within(60, lambda: pool.run(Comparison(("2^{3}",), ("8",)), 5.0)) == workers.TRUE
    finally:
        pool.close()
    assert elapsed < 0.5 * workers.WALL_FACTOR + workers.WALL_SLACK_S + 5.0  # + zygote start


@pytest.mark.slow
def test_grading_in_a_daemonic_process() -> None:
    """multiprocessing forbids children of daemonic processes (DataLoader workers are); the
    grader's zygote is a plain subprocess, so grading works there too."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def child() -> None:
        queue.put((score(box("\\frac{\\sqrt{2}}{2}"), "\\frac{1}{\\sqrt{2}}"),
                   score_detailed(box("(x+1)^{997}"), "2", timeout_s=0.2).timed_out))

    proc = ctx.Process(target=child, daemon=True)
    proc.start()
    try:
        assert queue.get(timeout=120) == (1.0, True)
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()


def test_grading_after_fork_uses_its_own_workers() -> None:
    """A forked child must not talk to the parent's workers (their replies would mix)."""
    score_detailed(box("x^2 - 1"), "(x-1)(x+1)")  # the parent's pool is running
    pid = os.fork()
    if pid == 0:  # child: exit status 0 only if grading works with fresh workers
        ok = False
        try:
            ok = (workers._POOL is None and score(box("x^2 - 4"), "(x-2)(x+2)") == 1.0
                  and score_detailed(box("(x+1)^{996}"), "2", timeout_s=0.2).timed_out)
        finally:
            os._exit(0 if ok else 1)  # noqa: B012
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert score(box("x^2 - 9"), "(x-3)(x+3)") == 1.0  # the parent's workers are intact


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").exists(), reason="reads process states from /proc")
def test_no_grader_process_outlives_a_killed_caller() -> None:
    """kill -9 of a process that was grading: its zygote and workers see their sockets close
    and exit, instead of lingering (or keeping a pipe such as the caller's stdout open)."""
    import subprocess
    import sys

    code = ("import time; from sgpo.rewards import score, workers\n"
            "assert score('\\\\boxed{\\\\frac{\\\\sqrt{2}}{2}}', '\\\\frac{1}{\\\\sqrt{2}}') == 1.0\n"
            "pool = workers.pool(); print(pool._zygote.proc.pid, *[w.pid for w in pool._idle], flush=True)\n"
            "time.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        line = finishes_within(120, proc.stdout.readline)  # type: ignore[union-attr]
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)  # the zygote and one worker
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)
