"""A training run's folder: checkpoints (writing, rotation, finding the one to resume from)
and metrics.jsonl. Kept apart from the training loop so the loop reads as the algorithm and
the rules for what a folder holds live in one place."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"


class RunFolder:
    """``output_dir`` of one run: ``checkpoint-STEP/`` (accelerate state plus
    trainer_state.json), ``metrics.jsonl`` (one record per logged step)."""

    def __init__(self, path: str | Path, save_total_limit: int):
        self.path = Path(path)
        self.save_total_limit = save_total_limit
        self.metrics_file = self.path / METRICS_FILE

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints (trainer_state.json is written last), oldest first."""
        found = [p for p in self.path.glob("checkpoint-*") if (p / STATE_FILE).exists()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def save(self, accelerator: Any, step: int, state: dict[str, Any]) -> None:
        path = self.path / f"checkpoint-{step}"
        accelerator.save_state(str(path))
        if accelerator.is_main_process:
            (path / STATE_FILE).write_text(json.dumps(state))
            for old in self.checkpoints()[:-self.save_total_limit or None]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def resume(self, accelerator: Any) -> tuple[dict[str, Any], list[dict[str, Any]], Path] | None:
        """Load the latest checkpoint into ``accelerator``; returns (trainer state, the logged
        history up to its step, its path), or None when there is nothing to resume."""
        ckpts = self.checkpoints()
        if not ckpts:
            return None
        accelerator.load_state(str(ckpts[-1]))
        state = json.loads((ckpts[-1] / STATE_FILE).read_text())
        history: list[dict[str, Any]] = []
        if self.metrics_file.exists():  # drop lines logged after the checkpoint
            lines = [json.loads(x) for x in self.metrics_file.read_text().splitlines() if x.strip()]
            history = [h for h in lines if h["step"] <= state["step"]]
            if accelerator.is_main_process:
                self.metrics_file.write_text("".join(json.dumps(h) + "\n" for h in history))
        return state, history, ckpts[-1]

    def log_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_file.open("a") as f:
            f.write(json.dumps(record) + "\n")


__all__ = ["RunFolder", "STATE_FILE", "METRICS_FILE"]
