"""sgpo's GRPO against TRL 1.16's GRPOTrainer at equal work, side by side in one process.

Both train SmolLM2-135M-Instruct (``sgpo.models.smollm2_path()``) from the same weights on the
same prompts (procedural arithmetic in the demo's prompt format, rendered once by sgpo and
given to TRL as the same text, checked to encode to the same ids), with the same sampling
(temperature 1, top-p 1, no top-k, up to ``--tokens`` new tokens, G completions per prompt),
the same loss (DAPO: token mean over the batch, clip eps 0.2 / 0.28, no KL, group-normalised
advantages), the same batch (``--prompts`` x G completions per optimiser step, one update per
rollout batch, the whole batch in one forward) and optimiser (AdamW, lr 1e-6, no weight decay,
constant rate, gradient clip 1.0). The two alternate step by step: TRL runs its own training
loop and a callback runs one sgpo step after each of TRL's, so load changes on a shared machine
hit both alike. The first round is dropped.

Reported, per side (medians over rounds) and as sgpo / TRL ratios: completion tokens per second
of the whole step, generation seconds and generated tokens per second, update seconds (the
step less its rollout: generation, rewards, advantages), and peak GPU memory on CUDA.

    python benchmarks/vs_trl.py [--rounds 4] [--prompts 4] [--group 8] [--tokens 64]
                                [--device cpu|cuda] [--out benchmarks/results/vs_trl.md]

``scripts/gpu-check`` runs it on a GPU in bf16 (both sides load the weights in bfloat16 and
train them as they are, no autocast).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_results  # noqa: E402


class _NoBar:
    def update(self, *_: object) -> None: ...
    def set_postfix(self, **_: object) -> None: ...


class Meter:
    """Per-step counters of one side: generation and rollout seconds, generated tokens."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.gen_s, self.rollout_s, self.tokens = 0.0, 0.0, 0


def _peak_reset(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> float:
    import torch

    if device != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def sgpo_trainer(path: str, problems: Any, args: argparse.Namespace, out: Path, dtype: str, meter: Meter) -> Any:
    from sgpo.demo.run import DEMO_PROMPT
    from sgpo.generation.hf import HFGenerator
    from sgpo.models import load_model, load_tokenizer
    from sgpo.trainer.config import load_config
    from sgpo.trainer.trainer import Trainer

    sets = ["algorithm.method=grpo", "data.path=procedural", f"model.name_or_path={path}", f"model.dtype={dtype}",
            f"algorithm.samples_per_problem={args.group}", "algorithm.temperature=1.0", "algorithm.top_p=1.0",
            f"algorithm.max_new_tokens={args.tokens}", "algorithm.adv_scale=group", "loss.eps_low=0.2",
            "loss.eps_high=0.28", "loss.aggregation=token-mean", f"training.prompts_per_step={args.prompts}",
            "training.learning_rate=1e-6", "training.weight_decay=0.0", "training.warmup_steps=0",
            "training.max_grad_norm=1.0", f"training.max_steps={args.rounds + 1}",
            f"system.micro_batch_size={args.prompts * args.group}",
            f"system.generation_batch_size={args.prompts * args.group}", f"system.generation_sampler={args.sampler}",
            "run.save_steps=0", "run.save_final_model=false", "run.progress=false", f"run.output_dir={out}"]
    cfg = load_config(None, sets)
    for key, value in DEMO_PROMPT.items():
        setattr(cfg.data, key, value)
    generate = HFGenerator.generate

    def counted(self: Any, *a: Any, **k: Any) -> Any:  # sgpo's only generator in this process
        t0 = time.perf_counter()
        groups = generate(self, *a, **k)
        meter.gen_s += time.perf_counter() - t0
        meter.tokens += sum(len(c.token_ids) for g in groups for c in g)
        return groups

    HFGenerator.generate = counted  # type: ignore[method-assign]
    model = load_model(path, dtype=dtype, device=args.device)
    return Trainer(cfg, problems=problems, model=model, tokenizer=load_tokenizer(path))


def trl_trainer(path: str, texts: list[str], answers: list[str], args: argparse.Namespace, out: Path, dtype: str,
                meter: Meter, callback: Any) -> Any:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from sgpo.models import load_model, load_tokenizer
    from sgpo.rewards import score

    tok = load_tokenizer(path)

    def correct(completions: list[str], answer: list[str], **_: Any) -> list[float]:
        return [score(c, a) for c, a in zip(completions, answer)]

    batch = args.prompts * args.group
    config = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        num_generations=args.group, max_completion_length=args.tokens, temperature=1.0, top_p=1.0, top_k=0,
        repetition_penalty=1.0, learning_rate=1e-6, weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=1.0, beta=0.0, epsilon=0.2, epsilon_high=0.28, loss_type="dapo", scale_rewards="group",
        num_iterations=1, max_steps=args.rounds + 1, logging_steps=1, report_to=[], save_strategy="no",
        use_cpu=args.device == "cpu", bf16=False, fp16=False, seed=0, disable_tqdm=True, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=load_model(path, dtype=dtype, device=args.device), reward_funcs=correct, args=config,
                          train_dataset=Dataset.from_list([{"prompt": t, "answer": a} for t, a in zip(texts, answers)]),
                          processing_class=tok, callbacks=[callback])
    generate = trainer._generate_single_turn

    def counted(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        completion_ids, logprobs = generate(*a, **k)
        meter.gen_s += time.perf_counter() - t0
        meter.tokens += sum(len(c) for c in completion_ids)
        return completion_ids, logprobs

    trainer._generate_single_turn = counted
    rollout = trainer._generate_and_score_completions

    def timed_rollout(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        out = rollout(*a, **k)
        meter.rollout_s += time.perf_counter() - t0
        return out

    trainer._generate_and_score_completions = timed_rollout
    return trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4, help="measured steps per side (one warm-up step more)")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step")
    ap.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    ap.add_argument("--tokens", type=int, default=64, help="max new tokens")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--sampler", default="lean", choices=("lean", "generate"), help="sgpo's HF sampler")
    ap.add_argument("--out", default="benchmarks/results/vs_trl.md")
    args = ap.parse_args()
    import torch
    import trl
    from transformers import TrainerCallback

    from sgpo.data import build_problems
    from sgpo.arithmetic import make_problems
    from sgpo.demo.run import DEMO_PROMPT
    from sgpo.generation import encode_prompts
    from sgpo.models import load_tokenizer, smollm2_path
    from sgpo.prompts import PromptStyle

    dtype = "bfloat16" if args.device == "cuda" else "float32"
    path = str(smollm2_path())
    tok = load_tokenizer(path)
    rows = make_problems(args.prompts * (args.rounds + 1), seed=0)
    style = PromptStyle.from_data_config(DEMO_PROMPT)
    texts = [style.render(tok, r["problem"], None) for r in rows]
    if tok(texts)["input_ids"] != encode_prompts(tok, texts):  # TRL encodes text prompts with the tokenizer's defaults
        raise SystemExit("the tokenizer adds special tokens to rendered prompts: TRL and sgpo would see different ids")
    problems = build_problems(rows, "procedural")
    sgpo_meter, trl_meter = Meter(), Meter()
    steps: dict[str, list[dict[str, float]]] = {"sgpo": [], "trl": []}

    with tempfile.TemporaryDirectory() as tmp:
        sgpo = sgpo_trainer(path, problems, args, Path(tmp) / "sgpo", dtype, sgpo_meter)

        class Alternate(TrainerCallback):
            def on_step_begin(self, *_: Any, **__: Any) -> None:
                trl_meter.reset()
                _peak_reset(args.device)
                self.t0 = time.perf_counter()

            def on_step_end(self, *_: Any, **__: Any) -> None:
                step = time.perf_counter() - self.t0
                steps["trl"].append({"step": step, "generate": trl_meter.gen_s, "tokens": trl_meter.tokens,
                                     "update": step - trl_meter.rollout_s, "peak_gib": _peak(args.device)})
                sgpo_meter.reset()
                _peak_reset(args.device)
                t0 = time.perf_counter()
                sgpo.train_step(_NoBar())
                step = time.perf_counter() - t0
                h = sgpo.history[-1]
                steps["sgpo"].append({"step": step, "generate": sgpo_meter.gen_s, "tokens": sgpo_meter.tokens,
                                      "update": h["time_update"], "peak_gib": _peak(args.device)})
                print(f"round {len(steps['sgpo'])}: trl {steps['trl'][-1]['step']:.1f} s, sgpo {step:.1f} s, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)

        trainer = trl_trainer(path, texts, [r["answer"] for r in rows], args, Path(tmp) / "trl", dtype, trl_meter,
                              Alternate())
        load_start = os.getloadavg()[0]
        trainer.train()
    med = {side: {k: statistics.median(s[k] for s in v[1:]) for k in v[0]} for side, v in steps.items()}
    for side in med.values():
        side["tokens_per_s"] = side["tokens"] / side["step"]
        side["gen_tokens_per_s"] = side["tokens"] / side["generate"]
    s, t = med["sgpo"], med["trl"]
    rows_md = [("completion tokens / s (whole step)", "tokens_per_s", True),
               ("generated tokens / s (generation only)", "gen_tokens_per_s", True),
               ("step s", "step", False), ("generation s", "generate", False), ("update s", "update", False),
               ("completion tokens per step", "tokens", None), ("peak GPU memory GiB", "peak_gib", False)]
    lines = ["# sgpo GRPO vs TRL GRPOTrainer, side by side", "",
             f"`python benchmarks/vs_trl.py --rounds {args.rounds} --prompts {args.prompts} --group {args.group} "
             f"--tokens {args.tokens} --device {args.device} --sampler {args.sampler}`: SmolLM2-135M-Instruct in "
             f"{dtype}, TRL {trl.__version__}, torch {torch.__version__}, {os.cpu_count()} CPU cores, torch threads "
             f"{torch.get_num_threads()}, load average {load_start:.1f} at the start and {os.getloadavg()[0]:.1f} at "
             "the end (a shared machine: read the ratios, measured alternately in one process). Medians over "
             f"{args.rounds} rounds after one warm-up round.", "",
             "| quantity | sgpo | TRL | sgpo / TRL |", "|---|---:|---:|---:|"]
    for label, key, higher in rows_md:
        ratio = s[key] / t[key] if t[key] == t[key] and t[key] else float("nan")
        note = "" if higher is None else (" (higher is better)" if higher else "")
        lines.append(f"| {label} | {s[key]:.3g} | {t[key]:.3g} | {ratio:.2f}x{note} |")
    lines += ["", f"sgpo's throughput is **{s['tokens_per_s'] / t['tokens_per_s']:.2f}x** TRL's, its generation "
              f"**{s['gen_tokens_per_s'] / t['gen_tokens_per_s']:.2f}x** (tokens/s), its update takes "
              f"{s['update'] / t['update']:.2f}x TRL's time."]
    write_results(args.out, "\n".join(lines) + "\n", {"args": vars(args), "median": med, "steps": steps,
                                                       "load_average_start": load_start})


if __name__ == "__main__":
    main()
