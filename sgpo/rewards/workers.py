"""Worker processes for symbolic comparisons, each killed at its deadline and replaced.

Why processes: sympy can run for minutes on a short answer, and one big-integer operation
can hold the GIL for hours. Nothing inside a process can stop that safely: signals and
asynchronous exceptions are delivered only between bytecodes, and an exception injected into
arbitrary code can leave locks held (an earlier grader deadlocked exactly so). A worker
process can always be killed, and the caller's process is never touched.

Why a CPU-time deadline: the deadline is the worker's CPU time (user + system), enforced by
the kernel with ``setitimer(ITIMER_PROF)``; SIGPROF's default action terminates the worker,
even inside a C call. A wall-clock deadline makes rewards depend on machine load (8 grading
threads on 2 cores stretched a 0.4 s grading past 5 s); CPU time does not, and time a job
waits for a free worker is not counted either. A wall-clock backstop of ``WALL_FACTOR x
deadline + WALL_SLACK_S`` kills a worker that stalls without using CPU.

Why not pebble or concurrent.futures: pebble's pool manager notices timeouts and dead workers
by polling every 0.1 s (a 20 ms deadline would return after up to 120 ms); a
``ProcessPoolExecutor`` is marked broken when one of its workers is killed. Here the calling
thread waits on its worker's socket itself: a reply or the worker's death wakes it at once.

Why a zygote: workers are forked from one helper process per caller (started with
``subprocess``, so nothing of the caller is inherited or re-imported: multiprocessing's
spawn and forkserver methods re-run the caller's ``__main__`` module in each worker) that has
math-verify imported and warmed up, so starting or replacing a worker takes milliseconds.
The zygote is single-threaded, so forking it is safe, and as the workers' parent it reaps
them, so a killed worker's process id is never reused while the caller still names it.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection

from sgpo.rewards.matching import Comparison

WALL_FACTOR = 10.0
WALL_SLACK_S = 1.0
START_TIMEOUT_S = 120.0  # a zygote not ready by then (imports and warm-up) is given up
TRUE, FALSE, TIMEOUT, ERROR = "true", "false", "timeout", "error"


class GraderUnavailable(RuntimeError):
    """The worker processes cannot be started (a broken installation, not a bad answer):
    raised to the caller instead of silently scoring every non-trivial answer 0."""


# ---------------------------------------------------------------------------------------
# Inside the zygote and the workers
# ---------------------------------------------------------------------------------------


def _worker_loop(conn: Connection) -> None:
    """Receive (comparison, CPU seconds), reply with a verdict string, until EOF."""
    from sgpo.rewards.symbolic import GraderTimeout, compare

    signal.signal(signal.SIGPROF, signal.SIG_DFL)  # default action: terminate the process
    while True:
        try:
            cmp, cpu_s = conn.recv()
        except (EOFError, OSError):  # the caller went away
            return
        signal.setitimer(signal.ITIMER_PROF, max(cpu_s, 1e-3))
        try:
            verdict = TRUE if compare(cmp) else FALSE
        except GraderTimeout:
            verdict = TIMEOUT
        except Exception:  # a grader bug scores 0, the worker lives on
            verdict = ERROR
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
        conn.send(verdict)


def _reap_exiting_children(limit_s: float = 2.0) -> None:
    """Reap workers that exit as their sockets close, so none is left a zombie (a container's
    init process may not reap orphans). Busy ones are not waited for beyond ``limit_s``."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.01)


def zygote_main(fd: int) -> None:
    """Warm up math-verify, then serve requests on the control socket ``fd``: ``spawn`` forks
    a worker and sends back its pid and socket; ``reap PID`` kills and reaps a worker and
    sends back its exit code. Returns when the caller closes the socket."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    from sgpo.rewards.symbolic import math_verify

    math_verify()
    ctl = socket.socket(fileno=fd)
    ctl.send(b"ready")
    while True:
        try:
            msg = ctl.recv(64)
        except OSError:
            msg = b""
        if not msg:
            _reap_exiting_children()
            return
        if msg == b"spawn":
            mine, theirs = socket.socketpair()
            pid = os.fork()
            if pid == 0:
                ctl.close()
                mine.close()
                try:
                    _worker_loop(Connection(theirs.detach()))
                finally:
                    os._exit(0)
            theirs.close()
            socket.send_fds(ctl, [str(pid).encode()], [mine.fileno()])
            mine.close()
        elif msg.startswith(b"reap "):
            pid = int(msg[5:])
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, status = os.waitpid(pid, 0)
            ctl.send(str(os.waitstatus_to_exitcode(status)).encode())


# ---------------------------------------------------------------------------------------
# In the caller
# ---------------------------------------------------------------------------------------


class _Zygote:
    def __init__(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        code = ("import sys, json; sys.path[:0] = json.loads(sys.argv[2]); "
                "from sgpo.rewards.workers import zygote_main; zygote_main(int(sys.argv[1]))")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno()), json.dumps(sys.path)],
                                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        self.sock = mine
        self.lock = threading.Lock()
        ready, _, _ = select.select([mine], [], [], START_TIMEOUT_S)
        if not ready or mine.recv(64) != b"ready":
            self.close()
            raise GraderUnavailable(f"sgpo grader: the worker process did not start ({sys.executable} -c ...)")

    def spawn(self) -> tuple[int, Connection]:
        with self.lock:
            self.sock.send(b"spawn")
            msg, fds, _, _ = socket.recv_fds(self.sock, 64, 1)
        if not fds:
            raise OSError("sgpo grader: the worker zygote is gone")
        return int(msg), Connection(fds[0])

    def reap(self, pid: int) -> int:
        with self.lock:
            self.sock.send(f"reap {pid}".encode())
            return int(self.sock.recv(64) or 0)

    def close(self) -> None:
        self.sock.close()  # the zygote exits on EOF; its idle workers exit when their sockets close
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class _Worker:
    __slots__ = ("pid", "conn")

    def __init__(self, pid: int, conn: Connection) -> None:
        self.pid, self.conn = pid, conn


class WorkerPool:
    """Up to ``size`` workers, started on demand; any thread may call :meth:`run`."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._zygote: _Zygote | None = None
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._live = 0

    def run(self, cmp: Comparison, cpu_s: float) -> str:
        """TRUE / FALSE, TIMEOUT (CPU deadline, size guard or wall backstop), or ERROR."""
        for _ in range(2):  # an idle worker that died meanwhile (OOM killer, kill) is replaced once
            worker = self._acquire()
            try:
                worker.conn.send((cmp, cpu_s))
            except OSError:
                self._retire(worker)
                self._release(worker, healthy=False)
                continue
            return self._wait(worker, cpu_s)
        return ERROR

    def _wait(self, worker: _Worker, cpu_s: float) -> str:
        healthy, died = False, False
        try:
            if not worker.conn.poll(cpu_s * WALL_FACTOR + WALL_SLACK_S):
                return TIMEOUT
            verdict = worker.conn.recv()
            healthy = True
            return verdict
        except (EOFError, OSError):  # killed by its CPU deadline, or crashed
            died = True
            return TIMEOUT if self._retire(worker) == -signal.SIGPROF else ERROR
        finally:  # any other exit (KeyboardInterrupt too) leaves a reply in flight: retire it
            if not healthy and not died:
                self._retire(worker)
            self._release(worker, healthy)

    def _release(self, worker: _Worker, healthy: bool) -> None:
        with self._cond:
            if healthy:
                self._idle.append(worker)
            else:
                self._live -= 1
            self._cond.notify()

    def _acquire(self) -> _Worker:
        with self._cond:
            while not self._idle and self._live >= self.size:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._live += 1
        try:
            return self._spawn()
        except BaseException:
            with self._cond:
                self._live -= 1
                self._cond.notify()
            raise

    def _spawn(self) -> _Worker:
        for attempt in range(2):  # a zygote that died (OOM killer, kill -9) is replaced once
            with self._cond:
                if self._zygote is None:
                    self._zygote = _Zygote()
                zygote = self._zygote
            try:
                return _Worker(*zygote.spawn())
            except OSError:
                with self._cond:
                    if self._zygote is zygote:
                        self._zygote = None
                zygote.close()
                if attempt:
                    raise GraderUnavailable("sgpo grader: cannot start worker processes") from None
        raise AssertionError("unreachable")

    def _retire(self, worker: _Worker) -> int:
        """Kill and reap ``worker``; its exit code (negative: the signal that ended it)."""
        worker.conn.close()
        zygote = self._zygote
        try:
            return zygote.reap(worker.pid) if zygote is not None else 0
        except OSError:  # the zygote is gone, and its children with it
            return 0

    def close(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            zygote, self._zygote = self._zygote, None
        for w in idle:
            w.conn.close()
        if zygote is not None:
            zygote.close()

    def abandon(self) -> None:
        """In a forked child: close this process's copies of the parent's sockets, touching
        nothing else (the workers and the zygote are the parent's)."""
        for w in self._idle:
            w.conn.close()
        if self._zygote is not None:
            self._zygote.sock.close()


_POOL: WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def default_size() -> int:
    """Workers per process: ``SGPO_GRADER_WORKERS`` or min(4, CPU count)."""
    env = os.environ.get("SGPO_GRADER_WORKERS", "").strip()
    return max(int(env), 1) if env.isdigit() else max(min(4, os.cpu_count() or 1), 1)


def pool() -> WorkerPool:
    global _POOL
    if _POOL is None:
        with _POOL_LOCK:
            if _POOL is None:
                _POOL = WorkerPool(default_size())
    return _POOL


def run(cmp: Comparison, cpu_s: float) -> str:
    """The verdict for ``cmp`` from a worker within ``cpu_s`` CPU seconds."""
    return pool().run(cmp, cpu_s)


def _close_at_exit() -> None:
    if _POOL is not None:
        _POOL.close()


def _after_fork_in_child() -> None:
    global _POOL, _POOL_LOCK
    if _POOL is not None:
        _POOL.abandon()
    _POOL, _POOL_LOCK = None, threading.Lock()


atexit.register(_close_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
