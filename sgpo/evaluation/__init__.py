"""Evaluation: benchmarks, sampling with the training prompt, grading with the training
reward, metrics (avg@k, pass@k, bootstrap CI) and reports. ``evaluate`` is the library
entry point; the CLI (`sgpo eval`, `sgpo report`) is a thin driver over it."""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate", "run_evaluation", "EvalConfig", "write_report"]


def __getattr__(name: str) -> Any:  # lazy: importing the package must not pull in torch
    if name in ("evaluate", "run_evaluation", "EvalConfig"):
        from sgpo.evaluation import runner

        return getattr(runner, name)
    if name == "write_report":
        from sgpo.evaluation.report import write_report

        return write_report
    raise AttributeError(name)
