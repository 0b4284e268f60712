"""The sweep that accumulates: every (setting, method, learning rate, seed) cell of the
strategy-world comparison is its own resumable job whose finished result is one small JSON
file under ``benchmarks/results/cells/``; cells already there are skipped, so the sweep can be
stopped and restarted anywhere, and one command rebuilds every table and plot from the files.

Phases of a setting (``SETTINGS``):

* ``tune``: every variant at every learning rate of ``LR_GRID`` on the tuning seeds (never
  reported), trained for the shared step budget with the validation split probed every
  ``probe_every`` steps. :func:`sgpo.evaluation.stats.tuning_choice` then picks each variant's
  learning rate and step count (one rule for all; benchmarks/results/sweep-plan.md).
* ``initial``: the pre-trained model of each reported seed, unguided and guided.
* ``report``: every variant at its tuned learning rate and step count on seeds 0-9, with a
  learning-curve probe (held-out and transfer problems) and the final evaluation on every
  split.

A seed is a world (sgpo.world.pretrain.seeded_world): its own keyword -> procedure map, its
own pre-trained model (built into the cache on first use), problems and training seed.

    PYTHONPATH=. python benchmarks/sweep.py run --jobs 2 --until 15:35   # run cells, resumable
    PYTHONPATH=. python benchmarks/sweep.py status                       # what is done / next
    PYTHONPATH=. python benchmarks/sweep.py report                       # tables, plot, README
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

LR_GRID = (3e-5, 1e-4, 3e-4, 1e-3)
# Where the rule's choice lands on an edge of the grid, that variant's grid grows one rung of this
# ladder beyond it, and again while the choice stays on the new edge (sweep-plan.md, 2026-12-02 16:55)
LR_LADDER = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
TUNE_SEEDS = (100, 101)
REPORT_SEEDS = tuple(range(10))
CELLS_DIR = ROOT / "benchmarks" / "results" / "cells"
WORK_DIR = ROOT / "runs" / "sweep"


@dataclass(frozen=True)
class Variant:
    """A method or ablation: the trainer's method and config overrides (nested, typed)."""

    label: str
    method: str
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    tune_as: str = ""  # with Setting.tune_from: take this variant's tuning choice (default: its own label)
    init_from: str = ""  # start from the final model of this variant's report cell (same setting and seed)


VARIANTS: tuple[Variant, ...] = (
    Variant("sgpo", "sgpo"),
    Variant("grpo", "grpo"),
    Variant("sft", "sft"),
    Variant("luffy", "luffy"),
    Variant("imitation", "imitation"),
    Variant("guided_rl", "guided_rl"),
    Variant("sgpo-constant", "sgpo", {"algorithm": {"weight_mode": "constant"}}),
)


@dataclass(frozen=True)
class Setting:
    """One world and the shared training and evaluation settings of its cells. A dial of the
    world is a new entry (another world name, world overrides, or config overrides every cell
    gets); the claims' dials (issue 17) are in ``sweep_claims.py``."""

    name: str
    world: str = "pair"  # a name in sgpo.world.pretrain.WORLDS
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[str, Any] = field(default_factory=dict)  # WorldSpec overrides (seeded_world's tasks)
    pretrain: dict[str, Any] = field(default_factory=dict)  # PretrainSpec overrides (seeded_world's pretrain)
    variants: tuple[str, ...] = ()  # variant labels that run here; () = VARIANTS
    tune_from: str = ""  # take the tuning choices of this setting (no tuning cells here) ...
    retune: tuple[str, ...] = ()  # ... except for these variants, tuned here
    fixed_lr: float | None = None  # no tuning: every variant at this rate for step_budget steps
    report_steps: int | None = None  # reported cells train this long at the tuned rate (a longer curve)
    seeds: tuple[int, ...] = tuple(range(10))  # reported seeds
    record_metrics: tuple[str, ...] = ()  # trainer metrics kept per step in the cell (metrics.jsonl keys)
    budget: int = 8  # trajectories per problem and step, every method
    group_guided: int = 4  # of which guided, for the guided methods
    step_budget: int = 200  # the shared step budget of tuning (and the most a reported run trains)
    probe_every: int = 20
    probe_samples: int = 2
    prompts_per_step: int = 8
    train_problems: int = 256
    eval_problems: int = 64  # per split
    eval_samples: int = 4  # k of the final evaluation
    probe_problems: int = 32  # per probed split
    max_new_tokens: int = 32
    train_temperature: float = 1.0
    eval_temperature: float = 0.6
    top_k: int = 0


SETTINGS: dict[str, Setting] = {
    "pair": Setting("pair"),
    # GRPO's and LUFFY's validation curves still rise at the shared 200-step budget: longer curves at
    # the tuned rates on reported seeds 0-4 (sweep-plan.md, 2026-12-02 16:55); no tuning, no new choice
    "pair-long": Setting("pair-long", variants=("grpo", "luffy", "sgpo"), tune_from="pair", report_steps=600,
                         step_budget=600, probe_every=40, seeds=tuple(range(5))),
}
DEFAULT_SETTINGS = ("pair", "pair-long")  # what run/status/report do without --settings
EXTRA_VARIANTS: tuple[Variant, ...] = ()  # variants only some settings run (Setting.variants)
GROUPS: dict[str, tuple[str, ...]] = {}  # a name for several settings (--settings GROUP)
# setting name -> whether its cells may run yet, read from the done cells (a setting chosen by
# other settings' results: the proximal dial's controls, sweep_claims.py); ungated settings always may
GATES: dict[str, Callable[[dict[str, dict[str, Any]]], bool]] = {}
# (setting, variant) -> whether that variant's cells may run yet (a pruned grid's second stage: the
# proximal dial's constraint modes run only at the learning rate its `none` cells select)
VARIANT_GATES: dict[tuple[str, str], Callable[[dict[str, dict[str, Any]]], bool]] = {}
GUIDED_PROBE_SPLIT = "train-guided-probe"  # the trainer's guided probe problems (eval.probe_guided_problems)


def setting_variants(s: Setting) -> list[Variant]:
    return [variant(label) for label in s.variants] if s.variants else list(VARIANTS)


def world_of(s: Setting, seed: int) -> Any:
    from sgpo.world.pretrain import seeded_world

    return seeded_world(s.world, seed, tasks=s.tasks, pretrain=s.pretrain)


def settings_named(names: str) -> list[Setting]:
    out = []
    for n in names.split(","):
        for m in GROUPS.get(n, (n,)):
            if m not in SETTINGS:
                raise SystemExit(f"unknown setting {m!r} (have {', '.join(SETTINGS)}; groups {', '.join(GROUPS)})")
            out.append(SETTINGS[m])
    return out
COMPARISONS = ("grpo", "sft", "luffy", "imitation", "guided_rl", "sgpo-constant")  # each against sgpo
REPORTED_SPLITS = ("heldout", "combos", "transfer")


@dataclass(frozen=True)
class Cell:
    setting: str
    phase: str  # tune | initial | report
    variant: str  # a Variant label, or "initial"
    seed: int
    lr: float | None = None
    steps: int | None = None

    @property
    def id(self) -> str:
        lr = f"/lr-{self.lr:.0e}" if self.lr is not None else ""
        return f"{self.setting}/{self.phase}/{self.variant}{lr}/seed-{self.seed}"

    @staticmethod
    def parse(cell_id: str, steps: int | None = None) -> "Cell":
        parts = cell_id.split("/")
        try:
            lr = float(parts[3][3:]) if len(parts) == 5 else None
            cell = Cell(parts[0], parts[1], parts[2], int(parts[-1].removeprefix("seed-")), lr, steps)
        except (IndexError, ValueError):
            raise SystemExit(f"bad cell id {cell_id!r} (expected SETTING/PHASE/VARIANT[/lr-X]/seed-N)") from None
        if cell.setting not in SETTINGS or cell.phase not in ("tune", "initial", "report"):
            raise SystemExit(f"cell {cell_id!r}: unknown setting or phase")
        return cell


def variant(label: str) -> Variant:
    for v in VARIANTS + EXTRA_VARIANTS:
        if v.label == label:
            return v
    raise SystemExit(f"unknown variant {label!r} (have {', '.join(v.label for v in VARIANTS + EXTRA_VARIANTS)})")


def setting_name(rec: dict[str, Any]) -> str:
    """The setting a cell record belongs to, from its id (a record's ``setting`` field holds
    the whole setting as a dict; test records may hold the name)."""
    return rec["cell"].split("/", 1)[0]


def cell_path(cells_dir: Path, cell: Cell) -> Path:
    return cells_dir / f"{cell.id}.json"


def load_cells(cells_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted(cells_dir.rglob("*.json")):
        rec = json.loads(p.read_text())
        out[rec["cell"]] = rec
    return out


# -- the plan ------------------------------------------------------------------------------------
def _tune_variant_cells(s: Setting, label: str, grid: list[float]) -> list[Cell]:
    return [Cell(s.name, "tune", label, seed, lr, s.step_budget) for lr in grid for seed in TUNE_SEEDS]


def _choice(cells: list[Cell], done: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from sgpo.evaluation.stats import tuning_choice

    curves: dict[float, list[list[tuple[int, float]]]] = {}
    for c in cells:
        curves.setdefault(c.lr, []).append([(p["step"], p["accuracy"]) for p in done[c.id]["curve"]])
    return tuning_choice(curves)


def variant_grid(s: Setting, label: str, done: dict[str, dict[str, Any]] | None) -> tuple[list[float], bool]:
    """The learning rates one variant is tuned at, and whether all their cells are done: LR_GRID,
    grown one rung of LR_LADDER beyond an edge where the rule's choice lands, and again while
    the choice stays on the new edge (as far as the ladder goes). Without ``done``: LR_GRID."""
    grid = list(LR_GRID)
    while True:
        cells = _tune_variant_cells(s, label, grid)
        if done is None or any(c.id not in done for c in cells):
            return grid, False
        lr = _choice(cells, done)["lr"]
        rung = LR_LADDER.index(lr)
        if lr == grid[0] and rung > 0:
            grid.insert(0, LR_LADDER[rung - 1])
        elif lr == grid[-1] and rung < len(LR_LADDER) - 1:
            grid.append(LR_LADDER[rung + 1])
        else:
            return grid, True


def tune_cells(s: Setting, done: dict[str, dict[str, Any]] | None = None) -> list[Cell]:
    """The setting's tuning cells: LR_GRID for every variant tuned here, and, given the cells
    done so far, the rungs an edge choice adds (:func:`variant_grid`)."""
    if s.fixed_lr is not None:
        return []
    labels = [v.label for v in setting_variants(s) if not s.tune_from or v.label in s.retune]
    return [c for v in labels for c in _tune_variant_cells(s, v, variant_grid(s, v, done)[0])]


def tuned(s: Setting, done: dict[str, dict[str, Any]], label: str) -> dict[str, Any] | None:
    """The tuning rule's choice for one variant, once all its tuning cells (edge rungs
    included) are done; with ``Setting.report_steps`` the reported step count is that."""
    if s.fixed_lr is not None:
        return {"lr": s.fixed_lr, "steps": s.step_budget}
    if s.tune_from and label not in s.retune:
        ch = tuned(SETTINGS[s.tune_from], done, variant(label).tune_as or label)
    else:
        grid, complete = variant_grid(s, label, done)
        ch = _choice(_tune_variant_cells(s, label, grid), done) if complete else None
    if ch is not None and s.report_steps is not None:
        ch = {**ch, "steps": s.report_steps}
    return ch


def plan(done: dict[str, dict[str, Any]], settings: list[Setting]) -> list[Cell]:
    """Cells not done yet whose prerequisites are, in the order they run: tuning first, then
    seed by seed the seed's initial cell (it pre-trains the seed's world model) and, once that is
    done, the seed's cells of the variants already tuned (so no cell sits waiting on a model
    another cell is pre-training)."""
    todo: list[Cell] = []
    for s in settings:
        if s.name in GATES and not GATES[s.name](done):
            continue
        todo += [c for c in tune_cells(s, done) if c.id not in done]
        choices = {v.label: tuned(s, done, v.label) for v in setting_variants(s)}
        for seed in s.seeds:
            initial = Cell(s.name, "initial", "initial", seed)
            if initial.id not in done:
                todo.append(initial)
                continue
            for v in setting_variants(s):
                gate = VARIANT_GATES.get((s.name, v.label))
                if gate is not None and not gate(done):
                    continue
                ch, src = choices[v.label], choices.get(v.init_from)
                if v.init_from and (src is None or Cell(s.name, "report", v.init_from, seed, src["lr"]).id not in done):
                    continue  # a two-stage variant waits for its first stage
                if ch is not None:
                    c = Cell(s.name, "report", v.label, seed, ch["lr"], ch["steps"])
                    if c.id not in done:
                        todo.append(c)
    return todo


# -- one cell ------------------------------------------------------------------------------------
def write_data(s: Setting, seed: int, work: Path) -> dict[str, Path]:
    """The seed's problem files (deterministic; rewritten identically each time)."""
    from sgpo.io import write_jsonl
    from sgpo.world.tasks import make_problems

    spec = world_of(s, seed).tasks
    d = work / s.name / "data" / f"seed-{seed}"
    d.mkdir(parents=True, exist_ok=True)
    sizes = {"train": s.train_problems, "valid": s.eval_problems,
             **{split: s.eval_problems for split in REPORTED_SPLITS if split in spec.available_splits()}}
    rows = {split: make_problems(spec, n, seed=seed, split=split) for split, n in sizes.items()}  # type: ignore[arg-type]
    paths = {}
    for split, recs in rows.items():
        paths[split] = d / f"{split}.jsonl"
        write_jsonl(paths[split], recs)
    paths["probe-valid"] = d / "probe-valid.jsonl"
    write_jsonl(paths["probe-valid"], rows["valid"])  # tuning reads the whole validation split
    paths["probe-test"] = d / "probe-test.jsonl"
    write_jsonl(paths["probe-test"], [r for split in ("heldout", "transfer") if split in rows
                                      for r in rows[split][: s.probe_problems]])
    guided = s.overrides.get("eval", {}).get("probe_guided_problems", 0)
    if guided:  # the problems the trainer's guided probe takes: the first training rows with a strategy
        paths[GUIDED_PROBE_SPLIT] = d / f"{GUIDED_PROBE_SPLIT}.jsonl"
        write_jsonl(paths[GUIDED_PROBE_SPLIT], [r for r in rows["train"] if r.get("strategy")][:guided])
    return paths


def train_config(s: Setting, v: Variant, lr: float, steps: int, seed: int, data: dict[str, Path], probe: Path,
                 model: str, out: Path) -> Any:
    """The cell's TrainConfig, from typed values. Every method that samples spends
    ``s.budget`` trajectories per problem and step (``algorithm.samples_per_problem``, split by
    :meth:`sgpo.trainer.specs.MethodSpec.budget`); the trainer logs the split as ``samples/*``
    and the cell checks it (:func:`check_budget`)."""
    from sgpo.trainer.config import TrainConfig, apply_overrides

    cfg = TrainConfig()
    apply_overrides(cfg, {
        "model": {"name_or_path": model, "dtype": "float32"},
        "data": {"path": str(data["train"])},
        "algorithm": {"method": v.method, "samples_per_problem": s.budget, "group_guided": s.group_guided,
                      "max_new_tokens": s.max_new_tokens, "top_k": s.top_k, "temperature": s.train_temperature},
        "training": {"max_steps": steps, "prompts_per_step": s.prompts_per_step, "learning_rate": lr, "seed": seed},
        "system": {"micro_batch_size": 32, "generation_batch_size": 64},
        "run": {"output_dir": str(out), "save_steps": s.probe_every, "save_final_model": False, "progress": False},
        "eval": {"probe_every": s.probe_every, "probe_file": str(probe), "probe_samples": s.probe_samples,
                 "probe_temperature": s.eval_temperature},
    })
    for overrides in (s.overrides, v.overrides):
        apply_overrides(cfg, overrides)
    return cfg.validate()


def evaluate_split(model: Any, tok: Any, path: Path, name: str, s: Setting, seed: int, out: Path,
                   guided: bool = False) -> dict[str, Any]:
    """avg@k with its interval, and per problem (id, keyword, accuracy) for the statistics."""
    from sgpo.evaluation.metrics import per_problem_accuracy
    from sgpo.evaluation.runner import evaluate_records
    from sgpo.generation import SamplingConfig
    from sgpo.io import read_jsonl_tolerant

    rows = read_jsonl_tolerant(path)
    probs = [dict(r, strategy=r["strategy"] if guided else None) for r in rows]
    sampling = SamplingConfig(temperature=s.eval_temperature, top_p=0.95, max_new_tokens=s.max_new_tokens, seed=seed)
    result, records = evaluate_records(model, tok, probs, name, sampling, s.eval_samples, output_dir=out,
                                       batch_size=64, model_id=name, show_progress=False)
    acc = per_problem_accuracy([r["scores"] for r in records])
    keyword = {r["id"]: r["keyword"] for r in rows}
    per_kw: dict[str, list[float]] = {}
    for r, a in zip(records, acc):
        per_kw.setdefault(keyword[r["id"]], []).append(a)
    return {**{k: result[k] for k in ("avg@k", "pass@k", "ci95", "n", "k", "truncation_rate")},
            "per_keyword": {k: sum(v) / len(v) for k, v in sorted(per_kw.items())},
            "problems": [[r["id"], keyword[r["id"]], a] for r, a in zip(records, acc)]}


def code_version() -> dict[str, Any]:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", "sgpo", "benchmarks"))}


def curve(history: list[dict[str, Any]], s: Setting) -> list[dict[str, Any]]:
    """(step, trajectories sampled per training problem so far, probe accuracy) at each probe."""
    out, sampled = [], 0.0
    for r in history:
        per_problem = sum(r.get(f"samples/{k}", 0.0) for k in ("auto", "guided", "reference"))
        sampled += s.prompts_per_step * per_problem / s.train_problems
        if "probe/avg@k" in r:
            out.append({"step": int(r["step"]), "trajectories_per_problem": sampled, "accuracy": r["probe/avg@k"]})
    return out


def samples_per_problem(history: list[dict[str, Any]]) -> dict[str, float]:
    """Mean trajectories per problem and step, as the trainer logged them (``samples/*``)."""
    out = {}
    for key in ("samples/auto", "samples/guided", "samples/reference"):
        vals = [r[key] for r in history if key in r]
        out[key.split("/")[1]] = sum(vals) / len(vals) if vals else 0.0
    out["logged"] = float(any("samples/auto" in r for r in history))
    return out


def check_budget(cell: Cell, v: Variant, spp: dict[str, float], budget: int) -> None:
    """Budget parity from the trainer's own counts: every method but SFT spends ``budget``
    trajectories per problem and step, LUFFY's strong-model trace counted as one (a count the
    trainer did not log is an error, not a pass)."""
    if v.method == "sft":
        return
    if not spp.get("logged"):
        raise SystemExit(f"{cell.id}: the trainer logged no samples/auto, so budget parity cannot be checked")
    total = spp["auto"] + spp["guided"] + spp["reference"]
    if abs(total - budget) > 1e-9:
        raise SystemExit(f"{cell.id}: spent {spp} trajectories per problem and step, not the budget {budget}")


def capability(model: Any, tok: Any, data: dict[str, Path]) -> dict[str, Any]:
    """The initial model's axes for the claims' dials (sgpo.world.capability): per-token NLL of
    the training split's strong traces (in the setting's trace style) and execution accuracy on
    ``heldout`` when the procedure is given."""
    from sgpo.io import read_jsonl_tolerant
    from sgpo.world.capability import execution_accuracy, trace_nll

    return {"trace_nll": trace_nll(model, tok, read_jsonl_tolerant(data["train"]))["nll_per_token"],
            "execution": execution_accuracy(model, tok, read_jsonl_tolerant(data["heldout"]))["accuracy"],
            "parameters": sum(p.numel() for p in model.parameters())}


def run_cell(cell: Cell, cells_dir: Path, work: Path) -> dict[str, Any]:
    import torch

    from sgpo.io import write_json_atomic
    from sgpo.models import load_model, load_tokenizer
    from sgpo.world.pretrain import world_model_path

    target = cell_path(cells_dir, cell)
    if target.exists():
        return json.loads(target.read_text())
    t0 = time.perf_counter()
    s = SETTINGS[cell.setting]
    world = world_of(s, cell.seed)
    model_path = str(world_model_path(world, progress=False))
    data = write_data(s, cell.seed, work)
    out = work / cell.id
    tok = load_tokenizer(model_path)
    rec: dict[str, Any] = {"cell": cell.id, **asdict(cell), "world": {
        "name": s.world, "key": world.key(), "map": {c: world.tasks.rl_method(c).name for c in world.tasks.cues},
        "transfer_pairs": world.tasks.transfer_pairs()}, "setting": json.loads(json.dumps(asdict(s)))}  # as the file holds it (tuples -> lists)
    if cell.phase == "initial":
        model = load_model(model_path, dtype="float32")
        splits = {split: evaluate_split(model, tok, data[split], split, s, cell.seed, out / "eval")
                  for split in REPORTED_SPLITS if split in data}
        splits["heldout-guided"] = evaluate_split(model, tok, data["heldout"], "heldout-guided", s, cell.seed,
                                                  out / "eval", guided=True)
        if GUIDED_PROBE_SPLIT in data:  # the guided probe's step-0 value (the proximal dial's collapse reference)
            splits[GUIDED_PROBE_SPLIT] = evaluate_split(model, tok, data[GUIDED_PROBE_SPLIT], GUIDED_PROBE_SPLIT, s,
                                                        cell.seed, out / "eval", guided=True)
        probe = evaluate_split(model, tok, data["probe-test"], "probe-test", s, cell.seed, out / "eval")
        rec.update(splits=splits, probe_accuracy=probe["avg@k"], capability=capability(model, tok, data))
    else:
        from sgpo.trainer.trainer import train

        v = variant(cell.variant)
        probe = data["probe-valid" if cell.phase == "tune" else "probe-test"]
        assert cell.lr is not None and cell.steps is not None
        start = model_path
        if v.init_from:  # two stages: the first stage's trained model, from its run folder
            src = tuned(s, load_cells(cells_dir), v.init_from)
            first = work / Cell(s.name, "report", v.init_from, cell.seed, src and src["lr"]).id / "run" / "final"
            if not (first / "config.json").exists():
                raise SystemExit(f"{cell.id}: starts from {first}, which is not there: run (or rerun) the "
                                 f"{v.init_from} cell of seed {cell.seed} on this machine first")
            start = str(first)
        cfg = train_config(s, v, cell.lr, cell.steps, cell.seed, data, probe, start, out / "run")
        if cell.phase == "report" and any(x.init_from == v.label for x in setting_variants(s)):
            cfg.run.save_final_model = True  # a later stage starts from it
        result = train(cfg)
        hist = result.history
        spp = samples_per_problem(hist)
        check_budget(cell, v, spp, s.budget)
        if s.record_metrics:
            rec["metrics"] = {k: [[int(r["step"]), r[k]] for r in hist if k in r] for k in s.record_metrics}
        rec.update(method=v.method, overrides=v.overrides, samples_per_problem=spp, curve=curve(hist, s),
                   final_p_auto=hist[-1].get("p_auto"), config=cfg.to_dict(), skipped_updates=result.skipped_updates)
        if cell.phase == "report":
            rec["splits"] = {split: evaluate_split(result.model, tok, data[split], split, s, cell.seed, out / "eval")
                             for split in REPORTED_SPLITS if split in data}
        del result
    rec.update(code=code_version(), minutes=round((time.perf_counter() - t0) / 60, 2),
               torch_threads=torch.get_num_threads(), load_average=round(os.getloadavg()[0], 2),
               finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(target, rec)
    return rec


# -- the runner ----------------------------------------------------------------------------------
def _deadline(until: str) -> float:
    if not until:
        return float("inf")
    now = dt.datetime.now(dt.timezone.utc)
    h, m = (int(x) for x in until.split(":"))
    end = now.replace(hour=h, minute=m, second=0, microsecond=0)
    return time.time() + (end - now).total_seconds()


def run(args: argparse.Namespace) -> int:
    """Start pending cells in up to ``--jobs`` processes until none is left or ``--until``
    (UTC) passes; a cell running then finishes (or, killed, resumes next time)."""
    cells_dir, work = Path(args.cells_dir), Path(args.work_dir)
    settings = settings_named(args.settings)
    deadline = _deadline(args.until)
    running: dict[str, subprocess.Popen] = {}
    failed: set[str] = set()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    (work / "logs").mkdir(parents=True, exist_ok=True)
    while True:
        for cid, proc in list(running.items()):
            if proc.poll() is not None:
                del running[cid]
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
                if proc.returncode:
                    failed.add(cid)
                print(f"{dt.datetime.now(dt.timezone.utc):%H:%M:%S} {cid}: {status}", flush=True)
        pending = [c for c in plan(load_cells(cells_dir), settings) if c.id not in running and c.id not in failed]
        while pending and len(running) < args.jobs and time.time() < deadline:
            c = pending.pop(0)
            log = open(work / "logs" / (c.id.replace("/", "__") + ".log"), "a")
            cmd = [sys.executable, __file__, "cell", c.id, "--cells-dir", str(cells_dir), "--work-dir", str(work)]
            running[c.id] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            print(f"{dt.datetime.now(dt.timezone.utc):%H:%M:%S} {c.id}: started", flush=True)
        if not running:
            left = len(pending)
            print(f"stopping: {left} cells pending, {len(failed)} failed this run" +
                  (" (deadline)" if left and time.time() >= deadline else ""), flush=True)
            return 1 if failed else 0
        time.sleep(5)


def status(args: argparse.Namespace) -> int:
    done = load_cells(Path(args.cells_dir))
    settings = settings_named(args.settings)
    todo = plan(done, settings)
    print(f"{len(done)} cells done, {len(todo)} runnable now; next: " + ", ".join(c.id for c in todo[:4]))
    for s in settings:
        for v in setting_variants(s):
            ch = tuned(s, done, v.label)
            print(f"  {s.name}/{v.label}: " + (f"tuned lr {ch['lr']:g}, {ch['steps']} steps" if ch else "not tuned yet"))
    return 0


def cell_main(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rec = run_cell(Cell.parse(args.cell, args.steps), Path(args.cells_dir), Path(args.work_dir))
    print(json.dumps({k: rec.get(k) for k in ("cell", "minutes")}))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("run", "status", "cell", "report"):
        p = sub.add_parser(name)
        p.add_argument("--cells-dir", default=str(CELLS_DIR), help="finished cells (committed)")
        p.add_argument("--work-dir", default=str(WORK_DIR), help="run folders, checkpoints, eval records, logs")
        p.add_argument("--settings", default=",".join(DEFAULT_SETTINGS),
                       help=f"comma-separated settings or groups (default: {','.join(DEFAULT_SETTINGS)}; "
                            "the claims' dials: benchmarks/sweep_claims.py)")
        if name == "run":
            p.add_argument("--jobs", type=int, default=2, help="cells in parallel (default 2)")
            p.add_argument("--threads", type=int, default=1, help="torch threads per cell (default 1)")
            p.add_argument("--until", default="", help="UTC HH:MM after which no cell starts")
        if name == "cell":
            p.add_argument("cell", help="a cell id, SETTING/PHASE/VARIANT[/lr-X]/seed-N")
            p.add_argument("--steps", type=int, default=None,
                           help="training steps (default: the step budget for tune cells, the tuned count for report cells)")
        if name == "report":
            p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sweep.md"))
            p.add_argument("--readme", default=str(ROOT / "README.md"), help="README whose sweep table is regenerated")
    args = ap.parse_args(argv)
    if args.command == "cell" and args.steps is None:
        cell = Cell.parse(args.cell)
        if cell.phase == "tune":
            args.steps = SETTINGS[cell.setting].step_budget
        elif cell.phase == "report":  # the tuning rule's step count, from the committed tuning cells
            ch = tuned(SETTINGS[cell.setting], load_cells(Path(args.cells_dir)), cell.variant)
            if ch is None or f"{ch['lr']:.0e}" != f"{cell.lr:.0e}":
                raise SystemExit(f"{cell.id}: its variant is not tuned yet, or tuned to another learning rate "
                                 f"({ch and ch['lr']})")
            args.steps = ch["steps"]
    if args.command == "report":
        from sweep_report import report

        return report(args)
    return {"run": run, "status": status, "cell": cell_main}[args.command](args)


import sweep_claims  # noqa: E402  (beside this file)

sweep_claims.register(sys.modules[__name__])  # the claims' dials: settings, variants, groups

if __name__ == "__main__":
    sys.exit(main())
