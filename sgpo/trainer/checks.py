"""Value checks of a training config that no single field's parser can do: every field has
its declared type (a YAML file can hold anything), numbers are finite and in range. Each
failure is one line naming the ``section.key``, raised before anything is loaded."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from sgpo.models import DTYPES

# section.key -> (lowest allowed, whether the lowest is excluded, highest or None)
RANGES: dict[str, tuple[float, bool, float | None]] = {
    "algorithm.temperature": (0.0, True, None),  # rollouts sample; log-probs divide by it
    "algorithm.top_p": (0.0, True, 1.0),
    "algorithm.max_new_tokens": (1, False, None),
    "algorithm.competence_momentum": (0.0, False, 1.0),
    "training.learning_rate": (0.0, True, None),
    "training.weight_decay": (0.0, False, None),
    "training.warmup_steps": (0, False, None),
    "training.max_grad_norm": (0.0, False, None),
    "training.max_nonfinite_in_a_row": (1, False, None),
    "system.generation_batch_size": (1, False, None),
    "system.vllm_gpu_memory_utilization": (0.0, True, 1.0),
    "data.max_problems": (0, False, None),
    "run.logging_steps": (1, False, None),
    "run.save_steps": (0, False, None),
    "loss.distill_coef": (0.0, False, None),
    "loss.rl_coef": (0.0, False, None),
    "loss.jsd_beta": (0.0, False, 1.0),
    "reward.timeout_s": (0.0, True, None),
    "reward.max_failure_share": (0.0, False, 1.0),
    "reward.threads": (0, False, None),
    "eval.probe_every": (0, False, None),
    "eval.probe_samples": (1, False, None),
    "eval.probe_guided_problems": (0, False, None),
    "eval.probe_temperature": (0.0, False, None),
    "eval.probe_top_p": (0.0, True, 1.0),
}


def _type_error(key: str, value: Any, expected: type) -> str | None:
    if expected is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return None
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return None
    hint = ""
    if expected is float and isinstance(value, str):
        try:
            float(value)
            hint = " (YAML reads a number like 1e-4 without a dot as text: write 1.0e-4)"
        except ValueError:
            pass
    return f"{key} = {value!r}: expected {expected.__name__}, got {type(value).__name__}{hint}"


def check_values(cfg: Any) -> None:
    """Raise ValueError naming the first field of ``cfg`` (a TrainConfig) with a wrong type,
    a non-finite number, or a value out of range."""
    for section in dataclasses.fields(cfg):
        _check_section(section.name, getattr(cfg, section.name))
    if cfg.model.dtype not in DTYPES:
        raise ValueError(f"model.dtype = '{cfg.model.dtype}' is not one of {', '.join(DTYPES)}")


def _check_section(prefix: str, values: Any) -> None:
    defaults = type(values)()
    for f in dataclasses.fields(values):
        key, value, default = f"{prefix}.{f.name}", getattr(values, f.name), getattr(defaults, f.name)
        if dataclasses.is_dataclass(default):  # a nested section (model.lora)
            if not dataclasses.is_dataclass(value):
                raise ValueError(f"{key} = {value!r}: expected a mapping of its keys")
            _check_section(key, value)
            continue
        if default is not None:
            error = _type_error(key, value, type(default))
            if error:
                raise ValueError(error)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{key} = {value}: must be a finite number")
        if key in RANGES:
            low, open_low, high = RANGES[key]
            if value < low or (open_low and value == low) or (high is not None and value > high):
                bound = f"{'>' if open_low else '>='} {low}" + (f" and <= {high}" if high is not None else "")
                raise ValueError(f"{key} = {value}: must be {bound}")
