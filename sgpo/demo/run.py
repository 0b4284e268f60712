"""The demo driver: initial model -> guidance measurement -> GRPO and SGPO from the same start
-> evaluation on held-out problems, held-out combinations and (the pair world) keyword pairs
never trained -> report. Every stage is resumable: training continues from its checkpoints and
evaluation skips problems already graded in the output directory."""

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
DEMO_WORLD = "pair"  # sgpo.world.pretrain.WORLDS: the sweep's world, with the transfer split


@dataclass(frozen=True)
class Schedule:
    """One method's optimiser schedule in the demo."""

    learning_rate: float
    steps: int  # optimiser steps


# The learning rate and step count of each method on the strategy world: the tuning rule's choice
# in benchmarks/sweep.py on the pair world (tuning seeds 100-101, never reported; every rate of
# its grid trained for the shared 200-step budget; the rule: sgpo.evaluation.stats.tuning_choice;
# the tried rates and the choice: benchmarks/results/sweep.md). tests/test_demo_run.py recomputes
# the choice from the committed tuning cells (benchmarks/results/cells/pair/tune/) and fails
# when these differ: change them only with the cells.
TUNED_SCHEDULES: dict[str, Schedule] = {"sgpo": Schedule(1e-4, 200), "grpo": Schedule(3e-5, 200)}
TUNED_SOURCE = ("the sweep's tuning on the pair world (benchmarks/sweep.py, tuning seeds 100-101, 200-step "
                "budget; benchmarks/results/sweep.md)")
# SmolLM2: chosen by hand, not tuned (3e-5 keeps a 135M model's updates small over a few steps)
SMOLLM2_SCHEDULES: dict[str, Schedule] = {"sgpo": Schedule(3e-5, 4), "grpo": Schedule(3e-5, 4)}
SMOLLM2_SOURCE = "a hand choice for SmolLM2-135M-Instruct (not tuned)"


def rate(x: float) -> str:
    """A learning rate as the sweep names it: 1e-4, 3e-5."""
    mantissa, exponent = f"{x:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


@dataclass
class DemoSettings:
    """One demo run. :meth:`for_model` gives each model's defaults."""

    model: str = "world"  # world: the strategy world (sgpo.world, DEMO_WORLD); smollm2: SmolLM2-135M-Instruct
    # method -> learning rate and steps; the strategy world's are the sweep's tuned ones
    schedules: dict[str, Schedule] = field(default_factory=lambda: dict(TUNED_SCHEDULES))
    schedule_source: str = TUNED_SOURCE
    common_steps: int | None = None  # train every method this many steps instead of its schedule's (--steps)
    train_problems: int = 256
    eval_problems: int = 64  # per held-out split (problems, and combinations for the world)
    eval_samples: int = 4  # k for avg@k on held-out problems
    prompts_per_step: int = 8
    samples_per_problem: int = 8  # trajectories per problem, every method (algorithm.samples_per_problem)
    group_guided: int = 4  # of which SGPO samples this many guided, GRPO none
    max_new_tokens: int = 32
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
                return cls(common_steps=12, train_problems=96, eval_problems=32, eval_samples=2)
            return cls()
        smollm2 = {"model": "smollm2", "schedules": dict(SMOLLM2_SCHEDULES), "schedule_source": SMOLLM2_SOURCE}
        if quick:
            return cls(**smollm2, common_steps=2, train_problems=32, eval_problems=16, eval_samples=1,
                       prompts_per_step=2, samples_per_problem=4, group_guided=2, max_new_tokens=48,
                       train_temperature=0.7, top_k=32)
        # measured: 5 steps made the SmolLM2 run 14.3 min; 0.7, not the spec's 1.0: at 1.0
        # SmolLM2-135M's samples are mostly noise (measured p_a = 0)
        return cls(**smollm2, train_problems=128, eval_problems=32, eval_samples=2,
                   prompts_per_step=4, samples_per_problem=6, group_guided=2, max_new_tokens=48,
                   train_temperature=0.7, top_k=32)

    def schedule(self, method: str) -> Schedule:
        """The learning rate and step count ``method`` trains with (``common_steps`` replaces
        the schedule's steps)."""
        if method not in self.schedules:
            raise ValueError(f"the demo has no learning rate for method {method!r} (schedules: "
                             f"{', '.join(self.schedules)}); set DemoSettings.schedules[{method!r}]")
        sch = self.schedules[method]
        return sch if self.common_steps is None else Schedule(sch.learning_rate, self.common_steps)

    def schedule_note(self, methods: tuple[str, ...] = ("sgpo", "grpo")) -> str:
        """One sentence for the output and the report: each method's rate and steps, and where
        they come from."""
        runs = "; ".join(f"{m.upper()} lr {rate(self.schedule(m).learning_rate)} for {self.schedule(m).steps} steps"
                         for m in methods)
        if self.common_steps is None:
            return f"{runs}: learning rates and step counts from {self.schedule_source}."
        scheduled = ", ".join(f"{m.upper()} {self.schedules[m].steps}" for m in methods)
        return (f"{runs}: learning rates from {self.schedule_source}; every method trains {self.common_steps} "
                f"steps instead of its scheduled count ({scheduled}).")

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
    transfer_rows: list[dict] = field(default_factory=list)  # keyword pairs never trained (the pair world)


def prepare_world(out: Path, s: DemoSettings) -> DemoData:
    """Pre-train (or load) world seed ``s.seed`` of :data:`DEMO_WORLD` (the sweep's world: the
    same :func:`seeded_world`, so the same cached model and problems as the sweep's cells of that
    seed) and write its problems as JSONL files, so training reads them like any data set."""
    from sgpo.data import load_problems
    from sgpo.io import write_jsonl
    from sgpo.world.pretrain import seeded_world, world_model_path
    from sgpo.world.tasks import make_problems

    world = seeded_world(DEMO_WORLD, s.seed)
    model_path = str(world_model_path(world))
    sizes = {"train": s.train_problems, "heldout": s.eval_problems, "combos": s.eval_problems,
             **({"transfer": s.eval_problems} if "transfer" in world.tasks.available_splits() else {})}
    rows = {split: make_problems(world.tasks, n, seed=s.seed, split=split) for split, n in sizes.items()}  # type: ignore[arg-type]
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, recs in rows.items():
        write_jsonl(data_dir / f"{split}.jsonl", recs)
    path = str(data_dir / "train.jsonl")
    return DemoData(model_path, f"strategy world '{DEMO_WORLD}', world seed {s.seed} (pre-trained from scratch, "
                    "sgpo.world)", path, load_problems(path), rows["heldout"], rows["combos"], rows.get("transfer", []))


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

    sch = s.schedule(method)
    return TrainConfig.build(
        model={"name_or_path": model_path, "dtype": "float32"},
        # the prompt format evaluation uses too (DemoSettings.style)
        data={"path": data_path, **copy.deepcopy(s.prompt)},
        algorithm={"method": method, "samples_per_problem": s.samples_per_problem, "group_guided": s.group_guided,
                   "max_new_tokens": s.max_new_tokens, "top_k": s.top_k, "temperature": s.train_temperature},
        training={"max_steps": sch.steps, "prompts_per_step": s.prompts_per_step, "learning_rate": sch.learning_rate,
                  "seed": s.seed},
        # the world's 64 rows of a 0.67M model in one micro-batch: each prompt runs once for all
        # its rows (system.share_prompt_forward); SmolLM2 keeps 32
        system={"micro_batch_size": 64 if s.model == "world" else 32, "generation_batch_size": 64},
        run={"output_dir": str(out / "runs" / method), "save_steps": max(1, sch.steps // 2), "save_final_model": False})


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


# the held-out splits besides held-out problems: DemoData field, the eval folder's suffix
EXTRA_SPLITS = (("combos", "combo_rows"), ("transfer", "transfer_rows"))


def _evaluate_splits(model: Any, tok: Any, d: DemoData, label: str, out: Path, s: DemoSettings) -> dict[str, Any]:
    """Unguided avg@k of one model on every held-out split the data has: split -> result."""
    results = {"heldout": _evaluate(model, tok, _unguided(d.eval_rows), label, out, s)}
    for split, attr in EXTRA_SPLITS:
        if getattr(d, attr):
            results[split] = _evaluate(model, tok, _unguided(getattr(d, attr)), f"{label}-{split}", out, s)
    return results


def _initial_guidance(model: Any, tok: Any, d: DemoData, out: Path, s: DemoSettings,
                      unguided: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """p_a and p_g of the initial model on every split (the premise), and a guided example."""
    guided = _evaluate(model, tok, _guided(d.eval_rows), "initial-guided", out, s)
    guidance = _guidance(unguided["heldout"], guided)
    for split, attr in EXTRA_SPLITS:
        if getattr(d, attr):
            g = _evaluate(model, tok, _guided(getattr(d, attr)), f"initial-{split}-guided", out, s)
            guidance[split] = _guidance(unguided[split], g)
    return guidance, guided["example"]


def _minutes(t0: float) -> float:
    return round((time.perf_counter() - t0) / 60, 2)


def run_demo(output_dir: str | Path, s: DemoSettings) -> Path:
    from tqdm.auto import tqdm

    from sgpo.demo.report import write_report
    from sgpo.io import read_jsonl_tolerant
    from sgpo.models import load_model, load_tokenizer
    from sgpo.trainer.trainer import train

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = ("grpo", "sgpo")
    for m in methods:
        s.schedule(m)  # a method without a schedule fails here, before any work
    tqdm.write(f"demo: {s.schedule_note()}")
    stages = tqdm(total=3 + 2 * len(methods), desc="demo", unit="stage", position=0)
    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    stages.set_postfix_str(f"preparing {s.model}")
    d = prepare_world(out, s) if s.model == "world" else prepare_smollm2(out, s)
    tok = load_tokenizer(d.model_path)
    timing["preparing_model"] = _minutes(t0)
    stages.update(1)

    stages.set_postfix_str("initial model: held-out, unguided and guided")
    t = time.perf_counter()
    initial = load_model(d.model_path, dtype="float32")
    evals = {"initial": _evaluate_splits(initial, tok, d, "initial", out, s)}
    guidance, guided_example = _initial_guidance(initial, tok, d, out, s, evals["initial"])
    tqdm.write(f"guidance at the start (held-out, k={guidance['k']}): p_a = {guidance['p_auto']:.3f} "
               f"{guidance['ci95_auto']}, p_g = {guidance['p_guided']:.3f} {guidance['ci95_guided']}")
    examples = {"unguided (initial)": evals["initial"]["heldout"]["example"], "guided (initial)": guided_example}
    del initial
    timing["evaluating_initial"] = _minutes(t)
    stages.update(1)

    histories: dict[str, list[dict]] = {}
    for method in methods:
        stages.set_postfix_str(f"training {method}")
        t = time.perf_counter()
        cfg = _train_config(method, out, s, d.model_path, d.data_path)
        result = train(cfg, problems=d.problems, model=load_model(d.model_path, dtype="float32"), tokenizer=tok)
        # the run's own log, which holds every step whether this call trained or resumed them
        histories[method] = read_jsonl_tolerant(Path(cfg.run.output_dir) / "metrics.jsonl")
        timing[f"training_{method}"] = _minutes(t)
        stages.update(1)
        stages.set_postfix_str(f"evaluating {method}")
        t = time.perf_counter()
        evals[method] = _evaluate_splits(result.model, tok, d, method, out, s)
        examples[f"unguided ({method})"] = evals[method]["heldout"]["example"]
        del result
        timing[f"evaluating_{method}"] = _minutes(t)
        stages.update(1)
    stages.set_postfix_str("report")
    settings = {**asdict(s), "model": d.model_label, "schedule": s.schedule_note(),
                "minutes": _minutes(t0), "minutes_by_stage": timing}
    split_results = {split: {label: r[split] for label, r in evals.items() if split in r}
                     for split, _ in EXTRA_SPLITS}
    report = write_report(out, eval_results={label: r["heldout"] for label, r in evals.items()},
                          train_metrics=histories, examples=examples, guidance=guidance, settings=settings,
                          combo_results=split_results["combos"], transfer_results=split_results["transfer"],
                          notes=[s.schedule_note()])
    (out / "demo_settings.json").write_text(json.dumps(settings, indent=2))
    stages.update(1)
    stages.close()
    return report
