"""A training run's folder: what run it holds, checkpoints (writing, rotation, finding the one
to resume from) and metrics.jsonl. Kept apart from the training loop so the loop reads as
the algorithm and the rules for what a folder holds live in one place.

The rules: a folder holds one run. Its identity is the run's math-relevant settings (every
config field except run bookkeeping and system knobs, see :data:`NOT_IDENTITY`), recorded
in config.json and, as a hash, in every checkpoint. Resuming with other settings, or
starting from scratch (``--no-resume``) in a folder that holds a run, is refused unless
``run.overwrite`` clears the folder first. On resume, metrics.jsonl is cut on disk to the
checkpoint's step, so a rerun never logs a step twice.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from sgpo.errors import UserError
from sgpo.io import (WriteError, append_jsonl, ensure_writable_dir, read_jsonl_tolerant, write_json_atomic,
                     write_text_atomic)
from sgpo.trainer.trackers import cut_tensorboard_events

STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
DATA_FILE = "run-data.json"  # fingerprints of the problems and strategies the run trains on, leak counts
FINAL_DIR = "final"

# Settings that do not decide what the run computes: run bookkeeping, the length of the run
# (extending max_steps continues the same run) and system knobs (speed and memory only).
NOT_IDENTITY = frozenset({
    "run", "system", "model.gradient_checkpointing", "data.min_strategy_coverage", "data.max_leak_share",
    "training.max_steps",
    "training.max_nonfinite_in_a_row", "reward.max_failure_share", "reward.threads",
})


class RunFolderError(UserError):
    """The folder holds another run, or a run the command would silently mix with."""


def run_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The math-relevant settings of a config dict, flattened to ``section.key`` (a section
    named ``system`` is left out whole, like the keys in :data:`NOT_IDENTITY`)."""
    out: dict[str, Any] = {}
    for section, values in config.items():
        if section in NOT_IDENTITY or section == "system" or not isinstance(values, dict):
            continue
        for key, value in values.items():
            if f"{section}.{key}" not in NOT_IDENTITY:
                out[f"{section}.{key}"] = value
    return out


def identity_hash(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _differences(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> str:
    """The settings that differ, as text ("" when none). A key only one side has (a setting
    added in a later version) is not a difference."""
    keys = [k for k in new if k in old and old[k] != new[k]]
    shown = ", ".join(f"{k}={old[k]!r} (now {new[k]!r})" for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _io_cause(e: Exception) -> OSError | None:
    """The I/O failure behind an exception of a serialiser (torch.save raises RuntimeError,
    safetensors its own error type, on a full disk), or None for anything else."""
    if isinstance(e, OSError):
        return e
    text = str(e)
    m = re.search(r"os error (\d+)", text)
    if m:
        return OSError(int(m.group(1)), os.strerror(int(m.group(1))))
    if "write failed" in text or "I/O error" in text:
        return OSError(errno.EIO, "write failed (disk full?)")
    return None


class RunFolder:
    """``output_dir`` of one run: config.json (the run's settings), ``checkpoint-STEP/``
    (accelerate state plus trainer_state.json, written last), metrics.jsonl (one record per
    logged step) and final/."""

    def __init__(self, path: str | Path, save_total_limit: int):
        self.path = Path(path)
        self.save_total_limit = save_total_limit  # 0 = keep every checkpoint
        self.metrics_file = self.path / METRICS_FILE
        self._lock: Any = None
        self.tracker_dir = self.path / self.path.name  # trackers' logs (accelerate: project_dir/run name)

    # -- what the folder holds -----------------------------------------------------------------
    def _checkpoint_dirs(self) -> list[Path]:
        found = [p for p in self.path.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def checkpoints(self) -> list[Path]:
        """Checkpoints whose trainer_state.json was written (it is written last), oldest first."""
        return [p for p in self._checkpoint_dirs() if (p / STATE_FILE).exists()]

    def prepare(self, config: dict[str, Any], *, resume: bool, overwrite: bool, is_main_process: bool) -> None:
        """Check that this run may use the folder, before anything expensive. With
        ``overwrite`` the main process deletes the earlier run's outputs (call
        ``wait_for_everyone`` after this)."""
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"run.output_dir {self.path} is a file, not a folder")
        if is_main_process:
            ensure_writable_dir(self.path, "run.output_dir")
            self.lock()
        try:
            self._check(config, resume=resume, overwrite=overwrite, is_main_process=is_main_process)
        except BaseException:
            self.release()
            raise

    def _check(self, config: dict[str, Any], *, resume: bool, overwrite: bool, is_main_process: bool) -> None:
        held = self.holds_a_run()
        if not held:
            return
        if overwrite:
            if is_main_process:
                self._clear()
            return
        if not resume:
            raise RunFolderError(f"{self.path} already holds a run ({', '.join(held[:4])}); starting from scratch "
                                 "there would mix two runs. Pass --overwrite (run.overwrite=true) to delete it, "
                                 "or choose another --output-dir")
        new = run_identity(config)
        stored = self._stored_identity()
        if stored is not None:
            changed = _differences(stored, new)
        else:  # no config.json: compare with the newest checkpoint's hash
            latest = self._latest_readable()
            old_hash = latest[1].get("identity_hash") if latest else None
            changed = "" if old_hash in (None, identity_hash(new)) else f"settings hash {old_hash} (now {identity_hash(new)})"
        if changed:
            raise RunFolderError(f"{self.path} holds a run with other settings: {changed}; resuming would mix two "
                                 "runs. Choose another --output-dir, or pass --overwrite (run.overwrite=true) to "
                                 "delete the earlier run")

    def lock(self) -> None:
        """Take the folder's one-writer lock (:mod:`sgpo.locks`) until :meth:`release`: a second
        ``sgpo train`` into the folder, ``--overwrite`` included, stops at once naming this one."""
        from sgpo.locks import HeldLock, folder_lock

        if self._lock is None:
            self._lock = HeldLock(folder_lock(self.path, "sgpo train"))

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def holds_a_run(self) -> list[str]:
        """Names of the run outputs in the folder (empty for a new folder, or one where a run
        stopped before it logged anything)."""
        names = [p.name for p in self._checkpoint_dirs()]
        return names + [n for n in (METRICS_FILE, FINAL_DIR) if (self.path / n).exists()]

    def _stored_identity(self) -> dict[str, Any] | None:
        try:
            stored = json.loads((self.path / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return run_identity(stored) if isinstance(stored, dict) else None

    def _clear(self) -> None:
        for p in self._checkpoint_dirs():
            shutil.rmtree(p)
        for folder in (self.path / FINAL_DIR, self.tracker_dir):
            if folder.is_dir():
                shutil.rmtree(folder)
        for name in (METRICS_FILE, CONFIG_FILE, DATA_FILE):
            (self.path / name).unlink(missing_ok=True)

    def check_data(self, record: dict[str, Any], *, allow_change: bool, is_main_process: bool) -> None:
        """Refuse to resume a run on other data: ``record`` (the data's fingerprints,
        :meth:`sgpo.data.ProblemSet.fingerprints`, plus leak counts) is compared with the one
        the run started with; a changed fingerprint stops the run naming the file, unless
        ``allow_change``. The main process then records ``record`` in run-data.json."""
        stored = None
        if self.holds_a_run():
            try:
                stored = json.loads((self.path / DATA_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                stored = None  # a run from before run-data.json, or a fresh folder
        for key, new in record.items():
            old = stored.get(key) if isinstance(stored, dict) else None
            if not (isinstance(old, dict) and isinstance(new, dict) and "sha256" in new) or old.get("sha256") == new["sha256"]:
                continue
            what = (f"{new['source']}: the {key} changed since the run in {self.path} started ({old.get('rows')} rows "
                    f"then, {new['rows']} now, content hash {str(old.get('sha256'))[:12]} -> {new['sha256'][:12]})")
            if not allow_change:
                raise RunFolderError(f"{what}; resuming would train one run on two data sets. Choose another "
                                     "--output-dir, or pass --set run.allow_data_change=true to continue on the new data")
            if is_main_process:
                print(f"sgpo: warning: {what}; continuing on the new data (run.allow_data_change=true)")
        if is_main_process:
            write_json_atomic(self.path / DATA_FILE, record)

    def write_config(self, config: dict[str, Any]) -> None:
        write_json_atomic(self.path / CONFIG_FILE, config)

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self, accelerator: Any, step: int, state: dict[str, Any], config: dict[str, Any]) -> None:
        path = self.path / f"checkpoint-{step}"
        if accelerator.is_main_process and path.exists():  # a torn one from a killed run; resume skipped it
            shutil.rmtree(path)
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(str(path))
        except Exception as e:
            cause = _io_cause(e)
            if cause is None:
                raise
            shutil.rmtree(path, ignore_errors=True)  # incomplete; give the space back
            raise WriteError(path, cause) from None
        if accelerator.is_main_process:
            state = {**state, "method": config.get("algorithm", {}).get("method"),
                     "identity_hash": identity_hash(run_identity(config))}
            write_text_atomic(path / STATE_FILE, json.dumps(state))
            ckpts = self.checkpoints()
            if self.save_total_limit > 0:
                for old in ckpts[:-self.save_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def _latest_readable(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint whose trainer_state.json parses (one emptied or cut by a
        crash on a full disk is passed over for the one before)."""
        for path in reversed(self.checkpoints()):
            try:
                state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
                if isinstance(state, dict) and isinstance(state.get("step"), int):
                    return path, state
            except (OSError, ValueError):
                pass
            print(f"sgpo: {path / STATE_FILE} is unreadable; resuming from an earlier checkpoint")
        return None

    def resume(self, accelerator: Any) -> tuple[dict[str, Any], list[dict[str, Any]], Path] | None:
        """Load the latest readable checkpoint into ``accelerator``; returns (trainer state,
        the logged history up to its step, its path), or None when there is none. Either
        way metrics.jsonl is cut on disk to the step training continues from."""
        found = self._latest_readable()
        step = found[1]["step"] if found else 0
        history = self.trim_metrics(step, write=accelerator.is_main_process)
        if accelerator.is_main_process:
            cut_tensorboard_events(self.tracker_dir, step)
        accelerator.wait_for_everyone()
        if found is None:
            return None
        path, state = found
        accelerator.load_state(str(path))
        return state, history, path

    # -- metrics ---------------------------------------------------------------------------------
    def trim_metrics(self, step: int, *, write: bool = True) -> list[dict[str, Any]]:
        """Records up to ``step``; with ``write`` metrics.jsonl is replaced (atomically) by
        them, dropping steps logged after the checkpoint and a torn last line."""
        history = [h for h in read_jsonl_tolerant(self.metrics_file) if h.get("step", 0) <= step]
        if write and self.metrics_file.exists():
            write_text_atomic(self.metrics_file, "".join(json.dumps(h) + "\n" for h in history))
        return history

    def log_metrics(self, record: dict[str, Any]) -> None:
        append_jsonl(self.metrics_file, [record])


__all__ = ["RunFolder", "RunFolderError", "run_identity", "identity_hash", "STATE_FILE", "METRICS_FILE"]
