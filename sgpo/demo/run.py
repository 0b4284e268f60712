"""The demo driver: initial model -> guidance measurement -> GRPO and SGPO from the same start
-> held-out evaluation -> report. Every stage is resumable: training continues from its
checkpoints and evaluation skips problems already graded in the output directory."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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


@dataclass
class DemoSettings:
    steps: int = 4  # optimiser steps per method (measured: 5 steps made the default run 14.3 min)
    train_problems: int = 128
    eval_problems: int = 32
    eval_samples: int = 2  # k for avg@k on held-out problems
    prompts_per_step: int = 4
    group_auto: int = 4  # SGPO: G_a autonomous + G_g guided; GRPO: G_a + G_g autonomous
    group_guided: int = 2
    max_new_tokens: int = 48  # with the few-shot format most answers end well before this
    learning_rate: float = 3e-5
    # 0.7, not the default 1.0: at 1.0 SmolLM2-135M's samples are mostly noise (measured p_a = 0)
    train_temperature: float = 0.7
    eval_temperature: float = 0.6
    top_k: int = 32
    seed: int = 0

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(steps=2, train_problems=32, eval_problems=16, eval_samples=1, prompts_per_step=2,
                   group_auto=2, group_guided=2, max_new_tokens=48)

    @property
    def style(self) -> PromptStyle:
        return PromptStyle.from_data_config(DEMO_PROMPT)


def _train_config(method: str, out: Path, s: DemoSettings, model_path: str) -> Any:
    from sgpo.trainer.config import load_config

    g_a = s.group_auto if method == "sgpo" else s.group_auto + s.group_guided  # same trajectories per problem
    sets = [f"algorithm.method={method}", "data.path=procedural", f"model.name_or_path={model_path}",
            "model.dtype=float32", f"algorithm.group_auto={g_a}", f"algorithm.group_guided={s.group_guided}",
            f"algorithm.max_new_tokens={s.max_new_tokens}", f"algorithm.top_k={s.top_k}",
            f"algorithm.temperature={s.train_temperature}",
            f"training.max_steps={s.steps}", f"training.prompts_per_step={s.prompts_per_step}",
            f"training.learning_rate={s.learning_rate}", "system.micro_batch_size=8",
            "system.generation_batch_size=32", f"training.seed={s.seed}", f"run.output_dir={out / 'runs' / method}",
            f"run.save_steps={max(1, s.steps // 2)}", "run.save_final_model=false"]
    cfg = load_config(None, sets)
    for key, value in DEMO_PROMPT.items():  # the prompt format evaluation uses too (DemoSettings.style)
        setattr(cfg.data, key, copy.deepcopy(value))
    return cfg


def _evaluate(model: Any, tok: Any, rows: list[dict], label: str, out: Path, s: DemoSettings) -> dict[str, Any]:
    from sgpo.evaluation.runner import evaluate_records

    sampling = SamplingConfig(temperature=s.eval_temperature, top_p=0.95, max_new_tokens=s.max_new_tokens,
                              seed=s.seed)
    result, records = evaluate_records(model, tok, rows, "heldout", sampling, s.eval_samples,
                                       output_dir=out / "eval" / label, model_id=f"demo-{label}", batch_size=32,
                                       style=s.style)
    result["example"] = records[0]["completions"][0] if records and records[0].get("completions") else ""
    return result


def run_demo(output_dir: str | Path, s: DemoSettings) -> Path:
    from tqdm.auto import tqdm

    from sgpo.data import build_problems
    from sgpo.demo.problems import make_problems, make_eval_problems
    from sgpo.demo.report import write_report
    from sgpo.models import load_model, load_tokenizer, smollm2_path
    from sgpo.schema import strategy_text
    from sgpo.trainer.trainer import train

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = tqdm(total=7, desc="demo", unit="stage", position=0)
    t0 = time.perf_counter()
    stages.set_postfix_str("preparing SmolLM2-135M-Instruct")
    model_path = str(smollm2_path())
    tok = load_tokenizer(model_path)
    train_rows = make_problems(s.train_problems, seed=s.seed)
    eval_rows = make_eval_problems(s.eval_problems, seed=s.seed)
    problems = build_problems(train_rows, "demo", teacher_response_field="solution")
    stages.update(1)

    stages.set_postfix_str("initial model: held-out, unguided and guided")
    initial = load_model(model_path, dtype="float32")
    evals = {"initial": _evaluate(initial, tok, eval_rows, "initial", out, s)}
    guided_rows = [dict(r, strategy=strategy_text(r["strategy"])) for r in eval_rows]
    guided = _evaluate(initial, tok, guided_rows, "initial-guided", out, s)
    guidance = {"p_auto": evals["initial"]["avg@k"], "p_guided": guided["avg@k"], "n": guided["n"],
                "k": guided["k"], "ci95_auto": evals["initial"]["ci95"], "ci95_guided": guided["ci95"]}
    tqdm.write(f"guidance at the start (held-out, k={guided['k']}): p_a = {guidance['p_auto']:.3f} "
               f"{evals['initial']['ci95']}, p_g = {guidance['p_guided']:.3f} {guided['ci95']}")
    examples = {"unguided (initial)": evals["initial"]["example"], "guided (initial)": guided["example"]}
    del initial
    stages.update(1)

    histories: dict[str, list[dict]] = {}
    for method in ("grpo", "sgpo"):
        stages.set_postfix_str(f"training {method}")
        result = train(_train_config(method, out, s, model_path), problems=problems,
                       model=load_model(model_path, dtype="float32"), tokenizer=tok)
        histories[method] = result.history
        stages.update(1)
        stages.set_postfix_str(f"evaluating {method}")
        evals[method] = _evaluate(result.model, tok, eval_rows, method, out, s)
        examples[f"unguided ({method})"] = evals[method]["example"]
        del result
        stages.update(1)
    stages.set_postfix_str("report")
    settings = {**asdict(s), "model": "SmolLM2-135M-Instruct", "minutes": round((time.perf_counter() - t0) / 60, 2)}
    report = write_report(out, eval_results={k: v for k, v in evals.items()}, train_metrics=histories,
                          examples=examples, guidance=guidance, settings=settings)
    (out / "demo_settings.json").write_text(json.dumps(settings, indent=2))
    stages.update(1)
    stages.close()
    return report
