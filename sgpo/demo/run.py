"""The demo driver: initial model -> guidance measurement -> GRPO and SGPO from the same start
-> held-out evaluation -> report. Every stage is resumable: training continues from its
checkpoints and evaluation skips problems already graded in the output directory."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sgpo.data import ProblemSet
from sgpo.generation import SamplingConfig
from sgpo.prompts import PromptStyle

# A 135M model rambles under the default "reason step by step" instruction and rarely boxes an
# answer within ~100 tokens. A short format instruction plus one worked exchange (its numbers
# outside every family's range, so it answers no demo problem) lifts its measured unguided
# success on the default families from 5-11% to 23% (benchmarks/measure_guidance.py).
# The demo's prompt format as a training config's data section: training sets these fields,
# evaluation reads the same dict through PromptStyle.from_data_config.
DEMO_PROMPT: dict[str, Any] = {
    "system_prompt": ("You are a careful math assistant. Solve the problem briefly and end with the final answer "
                      "in \\boxed{}, for example: 3 + 4 = 7, so the answer is \\boxed{7}."),
    "instruction": "Answer briefly and put the final answer in \\boxed{}.",
    "fewshot": [{"problem": "What is 40 + 35?", "response": "40 + 35 = 75. The answer is \\boxed{75}."}],
}


MODELS = ("world", "smollm2")


@dataclass
class DemoSettings:
    """One demo run. :meth:`for_model` gives each model's defaults."""

    model: str = "world"  # world: the strategy world (sgpo.world); smollm2: SmolLM2-135M-Instruct
    steps: int = 60  # optimiser steps per method
    train_problems: int = 256
    eval_problems: int = 64  # per held-out split (problems, and combinations for the world)
    eval_samples: int = 4  # k for avg@k on held-out problems
    prompts_per_step: int = 8
    samples_per_problem: int = 8  # trajectories per problem, every method (algorithm.samples_per_problem)
    group_guided: int = 4  # of which SGPO samples this many guided, GRPO none
    max_new_tokens: int = 32
    learning_rate: float = 1e-4  # 3e-4 already degrades the tiny model's guided success within 10 steps
    train_temperature: float = 1.0
    eval_temperature: float = 0.6
    top_k: int = 0  # teacher support: the world's whole vocabulary
    seed: int = 0

    @classmethod
    def for_model(cls, model: str = "world", quick: bool = False) -> "DemoSettings":
        if model not in MODELS:
            raise ValueError(f"unknown demo model {model!r} (have {', '.join(MODELS)})")
        if model == "world":
            if quick:
                return cls(steps=12, train_problems=96, eval_problems=32, eval_samples=2)
            return cls()
        if quick:
            return cls(model="smollm2", steps=2, train_problems=32, eval_problems=16, eval_samples=1,
                       prompts_per_step=2, samples_per_problem=4, group_guided=2, max_new_tokens=48, learning_rate=3e-5,
                       train_temperature=0.7, top_k=32)
        # measured: 5 steps made the SmolLM2 run 14.3 min; 0.7, not the spec's 1.0: at 1.0
        # SmolLM2-135M's samples are mostly noise (measured p_a = 0)
        return cls(model="smollm2", steps=4, train_problems=128, eval_problems=32, eval_samples=2,
                   prompts_per_step=4, samples_per_problem=6, group_guided=2, max_new_tokens=48, learning_rate=3e-5,
                   train_temperature=0.7, top_k=32)

    @property
    def prompt(self) -> dict[str, Any]:
        """The prompt format as a training config's data section: the world is pre-trained with
        the spec's default format; SmolLM2 gets :data:`DEMO_PROMPT`."""
        return {} if self.model == "world" else DEMO_PROMPT

    @property
    def style(self) -> PromptStyle:
        return PromptStyle.from_data_config(self.prompt)


@dataclass
class DemoData:
    """What a demo run trains and evaluates on, whatever the model."""

    model_path: str
    model_label: str
    data_path: str  # the training problems as the trainer's data.path (a label where they are built in memory)
    problems: ProblemSet
    eval_rows: list[dict]  # held-out problems
    combo_rows: list[dict] = field(default_factory=list)  # held-out combinations (world only)


def prepare_world(out: Path, s: DemoSettings) -> DemoData:
    """Pre-train (or load) the strategy-world model and write its problems as JSONL files,
    so training reads them like any data set."""
    from sgpo.data import load_problems
    from sgpo.io import write_jsonl
    from sgpo.world.pretrain import world_model_path
    from sgpo.world.tasks import WorldSpec, make_problems

    spec = WorldSpec()
    model_path = str(world_model_path())
    rows = {split: make_problems(spec, n, seed=s.seed, split=split)
            for split, n in (("train", s.train_problems), ("heldout", s.eval_problems), ("combos", s.eval_problems))}
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, recs in rows.items():
        write_jsonl(data_dir / f"{split}.jsonl", recs)
    path = str(data_dir / "train.jsonl")
    return DemoData(model_path, "strategy world (pre-trained from scratch, sgpo.world)", path,
                    load_problems(path), rows["heldout"], rows["combos"])


def prepare_smollm2(out: Path, s: DemoSettings) -> DemoData:
    from sgpo.data import build_problems
    from sgpo.arithmetic import make_eval_problems, make_problems
    from sgpo.models import smollm2_path

    problems = build_problems(make_problems(s.train_problems, seed=s.seed), "procedural",
                              teacher_response_field="solution")
    return DemoData(str(smollm2_path()), "SmolLM2-135M-Instruct", "procedural", problems,
                    make_eval_problems(s.eval_problems, seed=s.seed))


def _train_config(method: str, out: Path, s: DemoSettings, model_path: str, data_path: str = "procedural") -> Any:
    from sgpo.trainer.config import TrainConfig

    return TrainConfig.build(
        model={"name_or_path": model_path, "dtype": "float32"},
        # the prompt format evaluation uses too (DemoSettings.style)
        data={"path": data_path, **copy.deepcopy(s.prompt)},
        algorithm={"method": method, "samples_per_problem": s.samples_per_problem, "group_guided": s.group_guided,
                   "max_new_tokens": s.max_new_tokens, "top_k": s.top_k, "temperature": s.train_temperature},
        training={"max_steps": s.steps, "prompts_per_step": s.prompts_per_step, "learning_rate": s.learning_rate,
                  "seed": s.seed},
        system={"micro_batch_size": 32, "generation_batch_size": 64},
        run={"output_dir": str(out / "runs" / method), "save_steps": max(1, s.steps // 2), "save_final_model": False})


def _evaluate(model: Any, tok: Any, rows: list[dict], label: str, out: Path, s: DemoSettings) -> dict[str, Any]:
    from sgpo.evaluation.runner import evaluate_records

    sampling = SamplingConfig(temperature=s.eval_temperature, top_p=0.95, max_new_tokens=s.max_new_tokens,
                              seed=s.seed)
    result, records = evaluate_records(model, tok, rows, "heldout", sampling, s.eval_samples,
                                       output_dir=out / "eval" / label, model_id=f"demo-{label}", batch_size=64,
                                       style=s.style, show_progress=False)
    result["example"] = records[0]["completions"][0] if records and records[0].get("completions") else ""
    return result


def _guided(rows: list[dict]) -> list[dict]:
    from sgpo.schema import strategy_text

    return [dict(r, strategy=strategy_text(r["strategy"])) for r in rows]


def _unguided(rows: list[dict]) -> list[dict]:
    return [dict(r, strategy=None) for r in rows]


def _guidance(auto: dict[str, Any], guided: dict[str, Any]) -> dict[str, Any]:
    return {"p_auto": auto["avg@k"], "p_guided": guided["avg@k"], "n": guided["n"], "k": guided["k"],
            "ci95_auto": auto["ci95"], "ci95_guided": guided["ci95"]}


def run_demo(output_dir: str | Path, s: DemoSettings) -> Path:
    from tqdm.auto import tqdm

    from sgpo.demo.report import write_report
    from sgpo.models import load_model, load_tokenizer
    from sgpo.trainer.trainer import train

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = tqdm(total=7, desc="demo", unit="stage", position=0)
    t0 = time.perf_counter()
    stages.set_postfix_str(f"preparing {s.model}")
    d = prepare_world(out, s) if s.model == "world" else prepare_smollm2(out, s)
    tok = load_tokenizer(d.model_path)
    stages.update(1)
    t_prepared = time.perf_counter()

    stages.set_postfix_str("initial model: held-out, unguided and guided")
    initial = load_model(d.model_path, dtype="float32")
    evals = {"initial": _evaluate(initial, tok, _unguided(d.eval_rows), "initial", out, s)}
    guided = _evaluate(initial, tok, _guided(d.eval_rows), "initial-guided", out, s)
    guidance = _guidance(evals["initial"], guided)
    combos: dict[str, Any] = {}
    if d.combo_rows:
        combos["initial"] = _evaluate(initial, tok, _unguided(d.combo_rows), "initial-combos", out, s)
        combo_guided = _evaluate(initial, tok, _guided(d.combo_rows), "initial-combos-guided", out, s)
        guidance["combos"] = _guidance(combos["initial"], combo_guided)
    tqdm.write(f"guidance at the start (held-out, k={guided['k']}): p_a = {guidance['p_auto']:.3f} "
               f"{evals['initial']['ci95']}, p_g = {guidance['p_guided']:.3f} {guided['ci95']}")
    examples = {"unguided (initial)": evals["initial"]["example"], "guided (initial)": guided["example"]}
    del initial
    stages.update(1)

    histories: dict[str, list[dict]] = {}
    for method in ("grpo", "sgpo"):
        stages.set_postfix_str(f"training {method}")
        result = train(_train_config(method, out, s, d.model_path, d.data_path), problems=d.problems,
                       model=load_model(d.model_path, dtype="float32"), tokenizer=tok)
        histories[method] = result.history
        stages.update(1)
        stages.set_postfix_str(f"evaluating {method}")
        evals[method] = _evaluate(result.model, tok, _unguided(d.eval_rows), method, out, s)
        if d.combo_rows:
            combos[method] = _evaluate(result.model, tok, _unguided(d.combo_rows), f"{method}-combos", out, s)
        examples[f"unguided ({method})"] = evals[method]["example"]
        del result
        stages.update(1)
    stages.set_postfix_str("report")
    settings = {**asdict(s), "model": d.model_label, "minutes": round((time.perf_counter() - t0) / 60, 2),
                "minutes_preparing_model": round((t_prepared - t0) / 60, 2)}
    report = write_report(out, eval_results=evals, train_metrics=histories, examples=examples, guidance=guidance,
                          settings=settings, combo_results=combos)
    (out / "demo_settings.json").write_text(json.dumps(settings, indent=2))
    stages.update(1)
    stages.close()
    return report
