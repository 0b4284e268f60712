"""Typed training configuration, split by concern: what is trained (model, data), the
algorithm's knobs (change the math), system knobs (never change the math, only speed and
memory), and run bookkeeping. YAML files mirror these sections; ``--set section.key=value``
overrides single fields."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sgpo.prompts import BOXED_INSTRUCTION, PromptStyle

METHODS = ("sgpo", "grpo", "sft", "luffy", "imitation", "guided_rl")


@dataclass
class ModelConfig:
    name_or_path: str = "smollm2-135m-instruct"  # local folder, Hub id, or the SmolLM2 alias
    dtype: str = "auto"  # auto: bf16 on a bf16-capable GPU, else float32
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    path: str = ""  # JSONL, Parquet, a saved HF dataset folder or a Hub id; "demo" = procedural problems
    split: str = "train"
    problem_field: str = "problem"
    answer_field: str = "answer"
    strategy_field: str = "strategy"  # text or the strategy JSON; optional per row
    teacher_response_field: str = "teacher_response"  # strong-model solution (sft, luffy)
    id_field: str = "id"  # optional; row number otherwise
    strategies_path: str = ""  # `sgpo extract` output, joined by id (overrides strategy_field)
    # strategy-guided methods (sgpo, imitation, guided_rl): share of problems whose id must be in
    # strategies_path (or that must have a strategy_field); below it the run stops, above it a warning
    min_strategy_coverage: float = 0.5
    max_problems: int = 0  # 0 = all
    system_prompt: str = ""  # optional system turn (evaluate with the same one)
    instruction: str = BOXED_INSTRUCTION  # appended to every problem
    # few-shot exchanges shown before every problem, unguided: [{problem: ..., response: ...}]
    fewshot: list[dict[str, str]] = field(default_factory=list)
    demo_problems: int = 256  # size of the procedural set when path == "demo"

    def style(self) -> PromptStyle:
        """The prompt format of training (``sgpo eval --train-config`` evaluates with it)."""
        return PromptStyle.from_data_config(dataclasses.asdict(self))


@dataclass
class AlgorithmConfig:
    method: str = "sgpo"  # sgpo | grpo | sft | luffy | imitation | guided_rl
    group_auto: int = 8  # G_a autonomous rollouts per problem
    group_guided: int = 4  # G_g strategy-guided rollouts per problem
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    # RL term (spec 2.3)
    eps_low: float = 0.2
    eps_high: float = 0.28
    adv_scale: str = "group"  # group | batch | none
    # distillation term (spec 2.4-2.7)
    distill_coef: float = 1.0  # lambda
    divergence: str = "forward"  # forward | reverse | jsd
    jsd_beta: float = 0.5
    top_k: int = 64  # teacher support; 0 = full vocabulary
    distill_on: str = "correct"  # correct | all guided trajectories
    teacher: str = "rollout"  # rollout (params at rollout time) | initial (frozen initial policy)
    proximal: str = "c2"  # c2 | c1 | c3 | none
    tau: float = math.log(1.28)  # C2 trust region
    c1_eps: float = 0.28
    c3_clip: float = math.log(2.0)
    weight_mode: str = "marginal"  # marginal (W1) | need (W2) | competence (W3) | constant
    competence_momentum: float = 0.9
    # LUFFY
    luffy_gamma: float = 0.1  # f(p) = p / (p + gamma) on off-policy tokens
    luffy_adv_scale: str = "none"  # spec: r - group mean
    # updates per rollout batch: PPO epochs x mini-batches (1 x 1 = on-policy, old = current)
    ppo_epochs: int = 1
    mini_batches: int = 1


@dataclass
class TrainingConfig:
    """System knobs: none of these change the loss or gradient of a step."""

    max_steps: int = 100
    prompts_per_step: int = 8  # B, global over all processes
    learning_rate: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    micro_batch_size: int = 8  # sequences per forward/backward
    generation_backend: str = "hf"  # hf | vllm | vllm-server
    generation_batch_size: int = 64
    vllm_gpu_memory_utilization: float = 0.3
    vllm_host: str = "127.0.0.1"
    vllm_port: int = 8000
    distill_chunk_size: int = 1024  # tokens per LM-head chunk in the fused losses
    seed: int = 0
    max_nonfinite_in_a_row: int = 3


@dataclass
class RunConfig:
    output_dir: str = "runs/sgpo"
    logging_steps: int = 1
    save_steps: int = 50  # 0 = only at the end
    save_total_limit: int = 2  # checkpoints kept, newest first; 0 = keep all
    resume: bool = True  # continue from the latest checkpoint in output_dir if there is one
    overwrite: bool = False  # delete a run already in output_dir (else a mismatched or fresh start is refused)
    report_to: list[str] = field(default_factory=list)  # tensorboard, wandb, ...
    save_final_model: bool = True
    progress: bool = True


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "TrainConfig":
        a, t = self.algorithm, self.training
        _choice("algorithm.method", a.method, METHODS)
        _choice("algorithm.adv_scale", a.adv_scale, ("group", "batch", "none"))
        _choice("algorithm.luffy_adv_scale", a.luffy_adv_scale, ("group", "batch", "none"))
        _choice("algorithm.divergence", a.divergence, ("forward", "reverse", "jsd"))
        _choice("algorithm.distill_on", a.distill_on, ("correct", "all"))
        _choice("algorithm.teacher", a.teacher, ("rollout", "initial"))
        _choice("algorithm.proximal", a.proximal, ("c2", "c1", "c3", "none"))
        _choice("algorithm.weight_mode", a.weight_mode, ("marginal", "need", "competence", "constant"))
        _choice("training.generation_backend", t.generation_backend, ("hf", "vllm", "vllm-server"))
        if a.method != "sft" and a.group_auto < (2 if a.method != "luffy" else 1):
            raise ValueError("algorithm.group_auto must be >= 2 (advantages need a group)")
        if a.method in ("sgpo", "imitation", "guided_rl") and a.group_guided < 1:
            raise ValueError(f"algorithm.group_guided must be >= 1 for method '{a.method}'")
        if a.top_k < 0 or t.prompts_per_step < 1 or t.micro_batch_size < 1 or t.max_steps < 1:
            raise ValueError("top_k >= 0, prompts_per_step >= 1, micro_batch_size >= 1, max_steps >= 1 required")
        if a.ppo_epochs < 1 or a.mini_batches < 1:
            raise ValueError("algorithm.ppo_epochs and algorithm.mini_batches must be >= 1")
        if self.run.save_total_limit < 0:
            raise ValueError(f"run.save_total_limit = {self.run.save_total_limit}: must be >= 0 (0 keeps every checkpoint)")
        if not 0 <= self.data.min_strategy_coverage <= 1:
            raise ValueError(f"data.min_strategy_coverage = {self.data.min_strategy_coverage}: must be in [0, 1]")
        if not self.data.path:
            raise ValueError("data.path is required (a JSONL/Parquet file, a dataset, or 'demo')")
        self.data.style()  # checks data.fewshot
        return self


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key} = '{value}' is not one of {', '.join(allowed)}")


def _coerce(value: str, current: Any) -> Any:
    """Parse a ``--set`` value with YAML, then check it fits the field's current type.
    Text fields take the value verbatim (YAML would read "a: b" as a mapping)."""
    if isinstance(current, str):
        return value
    parsed = yaml.safe_load(value)
    if isinstance(current, bool) or current is None:
        return parsed
    if isinstance(current, float) and isinstance(parsed, (int, str)):
        try:
            return float(parsed)  # YAML reads "1e-4" (no dot) as a string
        except ValueError:
            pass
    if isinstance(current, list) and isinstance(parsed, str):
        return [s for s in parsed.split(",") if s]
    if not isinstance(parsed, type(current)):
        raise ValueError(f"expected {type(current).__name__}, got {value!r}")
    return parsed


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any] | None = None, sets: list[str] | None = None) -> TrainConfig:
    """Apply a nested dict (from YAML) and then ``section.key=value`` strings; unknown keys are errors."""
    for section, values in (overrides or {}).items():
        if not hasattr(cfg, section) or not isinstance(values, dict):
            raise ValueError(f"unknown config section '{section}' (expected {', '.join(f.name for f in dataclasses.fields(cfg))})")
        target = getattr(cfg, section)
        for key, value in values.items():
            if not hasattr(target, key):
                raise ValueError(f"unknown config key '{section}.{key}'")
            setattr(target, key, value)
    for item in sets or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        dotted, value = item.split("=", 1)
        section, key = dotted.split(".", 1)
        target = getattr(cfg, section, None)
        if target is None or not hasattr(target, key):
            raise ValueError(f"unknown config key '{dotted}'")
        try:
            setattr(target, key, _coerce(value, getattr(target, key)))
        except ValueError as e:
            raise ValueError(f"--set {dotted}: {e}") from None
    return cfg


def load_config(path: str | Path | None = None, sets: list[str] | None = None) -> TrainConfig:
    cfg = TrainConfig()
    if path:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping of sections")
        try:
            apply_overrides(cfg, raw)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return apply_overrides(cfg, sets=sets)
