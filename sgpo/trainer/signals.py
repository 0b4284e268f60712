"""Stopping a run on SIGTERM or SIGINT without losing its steps: the signal only sets a flag;
the training loop finishes the running step, saves a checkpoint at it and raises
:class:`sgpo.errors.Interrupted` (exit 143 / 130). SLURM and Kubernetes send SIGTERM to a
preempted job and kill it after a grace period, which is meant for exactly this. A second
signal while the step finishes acts as it would without this handler (SIGINT raises
KeyboardInterrupt, SIGTERM ends the process)."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Context manager: while inside, SIGTERM and SIGINT set :attr:`signum` instead of
    stopping the process (main thread only; elsewhere it is inert)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        self._restore()

    def _restore(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # asked twice: stop now, as without this handler
            self._restore()
            signal.raise_signal(signum)
            return
        self.signum = signum
        print(f"sgpo: {signal.Signals(signum).name} received: finishing the current step, then saving a "
              "checkpoint (send it again to stop at once)", file=sys.stderr, flush=True)

    def requested(self, accelerator: Any) -> bool:
        """Whether any process got a signal (every process must stop at the same step, since
        saving a checkpoint is collective)."""
        if accelerator.num_processes == 1:
            return self.signum is not None
        import torch
        from accelerate.utils import gather

        flag = torch.tensor([self.signum or 0], device=accelerator.device)  # [1]
        got = int(gather(flag).max().item())  # [P] -> the largest signal number any process got
        if got and self.signum is None:
            self.signum = got
        return bool(got)


__all__ = ["StopSignals"]
