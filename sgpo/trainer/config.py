"""Typed training configuration, split by concern: what is trained (``model``, ``data``), the
algorithm (``algorithm``: method, sampling, weights, teacher; ``reward``: reward functions and
weights; ``loss``: the objective's knobs,
:class:`sgpo.core.LossSettings`), the optimisation (``training``), system knobs that never change
the math, only speed and memory (``system``), and run bookkeeping (``run``). YAML files mirror
these sections; ``--set section.key=value`` overrides single fields. Every field is documented
by the comment on its line (or the comment lines just above it); docs/config.md is generated
from those comments (:func:`reference_markdown`)."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sgpo.core import (ADVANTAGE_SCALES, AGGREGATION_MODES, DIVERGENCES, NORMALIZERS, PROXIMAL_MODES, ROLLOUT_IS_MODES,
                       WEIGHT_MODES, LossSettings)
from sgpo.lora import LoraConfig
from sgpo.prompts import BOXED_INSTRUCTION, PromptStyle
from sgpo.rewards.functions import RewardConfig
from sgpo.trainer.checks import check_values
from sgpo.trainer.specs import METHODS, method_spec


@dataclass
class ModelConfig:
    name_or_path: str = "smollm2-135m-instruct"  # local folder, Hub id, or the SmolLM2 alias
    dtype: str = "auto"  # auto (bf16 on a bf16-capable GPU, else float32) | float32 | bfloat16 | float16
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, more compute
    lora: LoraConfig = field(default_factory=LoraConfig)  # LoRA adapter (docs: the model.lora.* keys below)


@dataclass
class DataConfig:
    path: str = ""  # JSONL, Parquet, a saved HF dataset folder or a Hub id (required)
    split: str = "train"  # dataset split (HF datasets)
    problem_field: str = "problem"  # column with the problem text
    answer_field: str = "answer"  # column with the gold answer
    strategy_field: str = "strategy"  # strategy text or the strategy JSON; optional per row
    teacher_response_field: str = "teacher_response"  # strong-model solution (sft, luffy)
    id_field: str = "id"  # optional; row number otherwise
    strategies_path: str = ""  # `sgpo extract` output, joined by id (overrides strategy_field)
    # strategy-guided methods (sgpo, imitation, guided_rl): share of problems whose id must be in
    # strategies_path (or that must have a strategy_field); below it the run stops, above it a warning
    min_strategy_coverage: float = 0.5
    # strategy-guided methods: strategies that give the gold answer away (extraction's leak
    # filters) are dropped with a warning; above this share of them the run stops before the model loads
    max_leak_share: float = 0.1
    max_problems: int = 0  # use the first N problems; 0 = all
    system_prompt: str = ""  # optional system turn (evaluate with the same one)
    instruction: str = BOXED_INSTRUCTION  # appended to every problem
    # few-shot exchanges shown before every problem, unguided: [{problem: ..., response: ...}]
    fewshot: list[dict[str, str]] = field(default_factory=list)
    # chat (the tokenizer's chat template; a tokenizer without one is an error) | plain ("role:
    # text" lines, for models without a template)
    prompt_format: str = "chat"

    def style(self) -> PromptStyle:
        """The prompt format of training (``sgpo eval --train-config`` evaluates with it)."""
        return PromptStyle.from_data_config(dataclasses.asdict(self))


@dataclass
class AlgorithmConfig:
    method: str = "sgpo"  # sgpo | grpo | sft | luffy | imitation | guided_rl (sgpo.trainer.specs.METHODS)
    # N trajectories sampled per problem, the same for every method: sgpo, imitation, guided_rl
    # take G_g guided + N - G_g autonomous; luffy N - 1 on-policy + the strong-model trace; grpo
    # N autonomous; sft samples none (sgpo.trainer.specs.MethodSpec.budget)
    samples_per_problem: int = 12
    group_guided: int = 4  # G_g of the N: strategy-guided rollouts per problem (guided methods)
    temperature: float = 1.0  # sampling temperature; log-probs of every term use the same one
    top_p: float = 1.0  # nucleus sampling of rollouts
    max_new_tokens: int = 512  # rollout length limit (longer completions are cut and score 0)
    adv_scale: str = "group"  # advantage (r - group mean) / std of: group | batch (all processes) | none
    top_k: int = 64  # teacher support: top-k tokens plus a tail bucket; 0 = full vocabulary
    distill_on: str = "correct"  # guided trajectories distilled: correct | all
    teacher: str = "rollout"  # rollout (params at rollout time) | initial (frozen initial policy)
    weight_mode: str = "marginal"  # instance weight: marginal (W1) | need (W2) | competence (W3) | constant
    competence_momentum: float = 0.9  # W3: running competence c <- m c + (1 - m) p_a
    luffy_adv_scale: str = "none"  # LUFFY advantage scale (r - group mean, as LUFFY)
    # optimiser updates per rollout batch: PPO epochs x mini-batches (1 x 1 = on-policy, old = current)
    ppo_epochs: int = 1
    mini_batches: int = 1  # mini-batches per epoch; > 1 makes the proximal constraint act


@dataclass
class TrainingConfig:
    """Optimisation: these change what is learned."""

    max_steps: int = 100  # rollout batches (each one or more optimiser updates)
    prompts_per_step: int = 8  # B, global over all processes
    learning_rate: float = 1e-6  # AdamW peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_steps: int = 0  # linear warmup to the learning rate, then constant
    max_grad_norm: float = 1.0  # gradient-norm clip; 0 = no clipping
    seed: int = 0  # problem order, sampling and initialisation seeds
    max_nonfinite_in_a_row: int = 3  # stop after this many steps in a row with a non-finite loss or gradient


@dataclass
class SystemConfig:
    """System knobs: none of these change the loss or gradient of a step, only speed and memory."""

    micro_batch_size: int = 8  # sequences per forward/backward (and per no-grad teacher forward)
    generation_backend: str = "hf"  # hf | vllm (colocated) | vllm-server (`vllm serve`, README)
    generation_batch_size: int = 64  # sequences (prompt x sample rows) sampled together (hf backend)
    # hf backend: lean (sgpo's KV-cached sampler, one prefill per distinct prompt; Llama models,
    # others fall back to generate, logged once) | generate (transformers model.generate, the reference)
    generation_sampler: str = "lean"
    # lean sampler with algorithm.teacher: rollout: keep the teacher's top-k targets of guided
    # trajectories while sampling them (their context is the teacher's) instead of a second forward
    sampler_teacher_targets: bool = True
    chunk_size: int = 1024  # tokens per LM-head chunk in the fused losses and teacher targets
    # the update puts a prompt's rows into micro-batches together and runs each distinct prompt
    # of a micro-batch once, its rows' completions on its keys and values (Llama/Qwen2; not with
    # gradient checkpointing, FSDP or DeepSpeed, where the full rows run, logged once); false:
    # every row's prompt + completion in the step's order, the reference
    share_prompt_forward: bool = True
    vllm_gpu_memory_utilization: float = 0.3  # share of GPU memory the colocated vLLM engine takes
    # colocated vllm: the engine frees its weights and KV cache while the policy trains (woken for
    # each rollout, weights reloaded from the policy): a 7B policy and its engine share one GPU
    vllm_sleep_mode: bool = False
    vllm_host: str = "127.0.0.1"  # vllm-server: host of the server
    vllm_port: int = 8000  # vllm-server: port of the server


@dataclass
class RunConfig:
    output_dir: str = "runs/sgpo"  # config.json, metrics.jsonl, checkpoint-STEP/, final/
    logging_steps: int = 1  # write a metrics.jsonl line every N steps
    save_steps: int = 50  # checkpoint every N steps; 0 = only at the end
    save_total_limit: int = 2  # checkpoints kept, newest first; 0 = keep all
    resume: bool = True  # continue from the latest checkpoint in output_dir if there is one
    overwrite: bool = False  # delete a run already in output_dir (else a mismatched or fresh start is refused)
    # resume although the problems or strategies changed since the run started (run-data.json); else refused
    allow_data_change: bool = False
    report_to: list[str] = field(default_factory=list)  # trackers: tensorboard, wandb, ...
    save_final_model: bool = True  # write the trained model to output_dir/final
    progress: bool = True  # show a progress bar


@dataclass
class ProbeConfig:
    """The learning-curve probe: unguided accuracy on a fixed problem file (guided accuracy, KL to the initial model)."""

    probe_every: int = 0  # probe every N steps and at the last step; 0 = no probe
    probe_file: str = ""  # JSONL/Parquet with id, problem, answer (strategies are ignored: unguided)
    probe_samples: int = 2  # k samples per probe problem (probe/avg@k)
    probe_temperature: float = 0.6  # sampling temperature of the probe
    probe_top_p: float = 0.95  # nucleus sampling of the probe
    # guided probe: the first N training problems that have a strategy (data order, after the leak
    # filter), rendered with it as the guided rollouts are (probe/guided_accuracy); 0 = none
    probe_guided_problems: int = 0
    # probe/kl_initial: mean per-token KL(policy || initial model) on the unguided probe's completions
    # (needs eval.probe_file); without LoRA a frozen copy of the initial model is kept for it
    probe_kl_initial: bool = False


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    loss: LossSettings = field(default_factory=LossSettings)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: ProbeConfig = field(default_factory=ProbeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def build(cls, **sections: dict[str, Any]) -> "TrainConfig":
        """A config from typed values, section by section, exactly as a YAML file is read:
        ``TrainConfig.build(algorithm={"method": "grpo"}, data={"path": "train.jsonl"})``.
        Unknown sections and keys are errors naming them (and where a key moved); call
        :meth:`validate` (the trainer does) for types, ranges and choices."""
        return apply_overrides(cls(), sections)

    def replace(self, **sections: dict[str, Any]) -> "TrainConfig":
        """A copy with the given ``section={key: value}`` fields changed, as :meth:`build`."""
        return apply_overrides(copy.deepcopy(self), sections)

    def validate(self) -> "TrainConfig":
        a, t, s, loss = self.algorithm, self.training, self.system, self.loss
        check_values(self)  # types, finite numbers, ranges
        _choice("algorithm.method", a.method, tuple(METHODS))
        _choice("algorithm.adv_scale", a.adv_scale, ADVANTAGE_SCALES)
        _choice("algorithm.luffy_adv_scale", a.luffy_adv_scale, ADVANTAGE_SCALES)
        _choice("algorithm.distill_on", a.distill_on, ("correct", "all"))
        _choice("algorithm.teacher", a.teacher, ("rollout", "initial"))
        _choice("algorithm.weight_mode", a.weight_mode, WEIGHT_MODES)
        _choice("loss.divergence", loss.divergence, DIVERGENCES)
        _choice("loss.proximal", loss.proximal, PROXIMAL_MODES)
        _choice("loss.normalizer", loss.normalizer, NORMALIZERS)
        _choice("loss.aggregation", loss.aggregation, AGGREGATION_MODES)
        _choice("loss.rollout_is", loss.rollout_is, ROLLOUT_IS_MODES)
        if not 0 <= loss.rollout_is_min < loss.rollout_is_max:
            raise ValueError(f"loss.rollout_is_min = {loss.rollout_is_min}, loss.rollout_is_max = {loss.rollout_is_max}: "
                             "need 0 <= rollout_is_min < rollout_is_max")
        if loss.aggregation_length < 0:
            raise ValueError(f"loss.aggregation_length = {loss.aggregation_length}: must be >= 0 "
                             "(0 = algorithm.max_new_tokens)")
        _choice("system.generation_backend", s.generation_backend, ("hf", "vllm", "vllm-server"))
        method_spec(a.method).check_budget(a.samples_per_problem, a.group_guided)
        _choice("system.generation_sampler", s.generation_sampler, ("lean", "generate"))
        if a.top_k < 0 or t.prompts_per_step < 1 or s.micro_batch_size < 1 or t.max_steps < 1 or s.chunk_size < 1:
            raise ValueError("algorithm.top_k >= 0, training.prompts_per_step >= 1, system.micro_batch_size >= 1, "
                             "training.max_steps >= 1, system.chunk_size >= 1 required")
        if loss.proximal == "c1" and loss.divergence != "forward":
            raise ValueError(f"loss.proximal = 'c1' is a clipped forward KL; loss.divergence = '{loss.divergence}' "
                             "needs another proximal constraint")
        if a.ppo_epochs < 1 or a.mini_batches < 1:
            raise ValueError("algorithm.ppo_epochs and algorithm.mini_batches must be >= 1")
        if self.run.save_total_limit < 0:
            raise ValueError(f"run.save_total_limit = {self.run.save_total_limit}: must be >= 0 (0 keeps every checkpoint)")
        if not 0 <= self.data.max_leak_share <= 1:
            raise ValueError(f"data.max_leak_share = {self.data.max_leak_share}: must be in [0, 1]")
        if not 0 <= self.data.min_strategy_coverage <= 1:
            raise ValueError(f"data.min_strategy_coverage = {self.data.min_strategy_coverage}: must be in [0, 1]")
        if not self.data.path:
            raise ValueError("data.path is required (a JSONL/Parquet file or a dataset)")
        e = self.eval
        if e.probe_every and not (e.probe_file or e.probe_guided_problems):
            raise ValueError(f"eval.probe_every = {e.probe_every} needs eval.probe_file (the probe problems) "
                             "or eval.probe_guided_problems")
        if e.probe_kl_initial and not (e.probe_every and e.probe_file):
            raise ValueError("eval.probe_kl_initial is measured on the unguided probe's completions: it needs "
                             f"eval.probe_every > 0 and eval.probe_file (got {e.probe_every}, {e.probe_file!r})")
        self.data.style()  # checks data.fewshot and data.prompt_format
        self.reward.validate()
        self.model.lora.validate()
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


# keys that moved to another section: old path -> new path (named in the error)
MOVED = {**{f"algorithm.{k}": f"loss.{k}" for k in ("eps_low", "eps_high", "distill_coef", "divergence", "jsd_beta",
                                                     "proximal", "tau", "c1_eps", "c3_clip", "luffy_gamma")},
         **{f"training.{k}": f"system.{k}" for k in ("micro_batch_size", "generation_backend", "generation_batch_size",
                                                      "vllm_gpu_memory_utilization", "vllm_host", "vllm_port")},
         "training.distill_chunk_size": "system.chunk_size",
         "algorithm.group_auto": "algorithm.samples_per_problem"}
# what changed beyond the name, appended to the error
MOVE_NOTES = {"algorithm.group_auto": " (N trajectories per problem for every method; the autonomous share "
                                      "G_a = N - algorithm.group_guided for the guided methods, N - 1 for luffy)"}


def _set(cfg: Any, section: str, key: str, value: Any, parse: bool) -> None:
    """Set ``section.key``; unknown names are errors that name the key (and where it moved).
    A nested section (``model.lora``) takes ``lora.rank=8`` or a mapping of its keys."""
    sections = [f.name for f in dataclasses.fields(cfg)]
    if section not in sections:
        raise ValueError(f"unknown config section '{section}' (expected {', '.join(sections)})")
    target = getattr(cfg, section)
    head, _, rest = key.partition(".")
    nested = getattr(target, head, None) if head in {f.name for f in dataclasses.fields(target)} else None
    if dataclasses.is_dataclass(nested):
        try:
            if rest:
                _set(target, head, rest, value, parse)
            elif isinstance(value, dict):
                for k, v in value.items():
                    _set(target, head, k, v, parse=False)
        except ValueError as e:
            raise ValueError(str(e).replace(f"'{head}.", f"'{section}.{head}.")) from None
        if not rest and not isinstance(value, dict):
            raise ValueError(f"config key '{section}.{key}' is a section: give a mapping of its keys "
                             f"({', '.join(f.name for f in dataclasses.fields(nested))})")
        return
    if key not in {f.name for f in dataclasses.fields(target)}:
        moved = MOVED.get(f"{section}.{key}")
        hint = f": it moved to '{moved}'{MOVE_NOTES.get(f'{section}.{key}', '')}" if moved else ""
        raise ValueError(f"unknown config key '{section}.{key}'{hint}")
    if parse:
        try:
            value = _coerce(value, getattr(target, key))
        except ValueError as e:
            raise ValueError(f"--set {section}.{key}: {e}") from None
    setattr(cfg, section, dataclasses.replace(target, **{key: value}))  # the loss section is frozen


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any] | None = None, sets: list[str] | None = None) -> TrainConfig:
    """Apply a nested dict (from YAML) and then ``section.key=value`` strings; unknown keys are errors."""
    for section, values in (overrides or {}).items():
        if not isinstance(values, dict):
            raise ValueError(f"config section '{section}' must be a mapping of keys, got {values!r}")
        for key, value in values.items():
            _set(cfg, section, key, value, parse=False)
    for item in sets or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        dotted, value = item.split("=", 1)
        section, key = dotted.split(".", 1)
        _set(cfg, section, key, value, parse=True)
    return cfg


def load_config(path: str | Path | None = None, sets: list[str] | None = None) -> TrainConfig:
    cfg = TrainConfig()
    if path:
        raw = _read_yaml(Path(path))
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping of sections")
        try:
            apply_overrides(cfg, raw)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return apply_overrides(cfg, sets=sets)


def _read_yaml(path: Path) -> Any:
    """A config file's YAML; a missing file, a folder, bad bytes or bad syntax is one line
    naming the file (and the line)."""
    if not path.is_file():
        raise ValueError(f"{path}: config file not found" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"{path}: invalid YAML{where}: {getattr(e, 'problem', None) or e}") from None


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its documentation: the comment on the field's line, else the comment
    lines just above it (the convention of every config dataclass)."""
    docs: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        text = line.strip()
        m = re.match(r"(\w+): [^#]+?(?:#\s*(.*))?$", text)
        if text.startswith("#"):
            above.append(text.lstrip("# "))
        elif m and m.group(1) in {f.name for f in dataclasses.fields(cls)}:
            docs[m.group(1)] = m.group(2) or " ".join(above)
            above = []
        else:
            above = []
    return docs


def _rows(prefix: str, cls: type, defaults: Any) -> list[str]:
    """Table rows of ``cls``'s keys; a nested section's keys follow it as ``prefix.name.key``."""
    docs, rows = field_docs(cls), []
    for sub in dataclasses.fields(cls):
        default = getattr(defaults, sub.name)
        if dataclasses.is_dataclass(default):
            rows += _rows(f"{prefix}.{sub.name}", type(default), default)
            continue
        shown = repr(round(default, 6) if isinstance(default, float) else default)
        rows.append(f"| `{prefix}.{sub.name}` | `{shown}` | {docs.get(sub.name, '').replace('|', chr(92) + '|')} |")
    return rows


def reference_markdown() -> str:
    """docs/config.md: every section and key with its default and documentation, generated from
    the dataclasses (tests/test_config.py checks the file is up to date)."""
    lines = ["# Training configuration", "",
             "Every key of `sgpo train --config FILE.yaml` and `--set section.key=value`, generated from the",
             "dataclasses in `sgpo/trainer/config.py` and `sgpo/core/settings.py` by",
             "`python -c 'from sgpo.trainer.config import reference_markdown as r; print(r(), end=\"\")' > docs/config.md`.",
             ""]
    for f in dataclasses.fields(TrainConfig):
        cls = f.default_factory  # type: ignore[misc]
        summary = (inspect.getdoc(cls) or "").splitlines()[0] if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(") else ""
        lines += [f"## `{f.name}`", ""] + ([summary, ""] if summary else [])
        lines += ["| key | default | meaning |", "|---|---|---|"]
        docs = field_docs(cls)
        defaults = cls()
        lines += _rows(f.name, cls, defaults)
        lines.append("")
    return "\n".join(lines)
