"""`sgpo eval` and `sgpo report`: thin drivers over :func:`sgpo.evaluation.runner.run_evaluation`
and :func:`sgpo.evaluation.report.write_report`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EVAL_HELP = """Evaluate a model on math benchmarks with the training prompt (chat template plus the
\\boxed{} instruction) and the training reward: math-verify on the last \\boxed{}, or the reward
functions of --train-config's reward section or of --reward-functions (docs/rewards.md).

Benchmarks: built-in names (math500, aime24, aime25, amc23, amc83, olympiadbench, minerva,
gsm8k) are read as NAME.jsonl from --data-dir or $SGPO_DATA_DIR, else from a public Hugging
Face copy; any JSONL or Parquet path with problem and answer columns works too.

--protocol sets the sampling and k per benchmark in one switch (an explicit --temperature,
--top-p, --max-new-tokens or --num-samples overrides it):
{protocols}
Results: avg@k, unbiased pass@k and a 95% bootstrap CI over problems, and the macro average
over benchmarks. Outputs in --output-dir: results.json, results.md and records/NAME.jsonl
(every completion with its grade). Rerunning with the same settings resumes: a finished
problem is not generated again while the model's weights, the prompt, the sampling, k and the
problem's text and answer are unchanged; the summary says how many records were reused and
how many regenerated."""

REPORT_HELP = """Compare several `sgpo eval` output directories: report.md with a table (one row per
run, one column per benchmark, cells "avg [lo, hi]" in %), accuracy.png (bars with 95% CI)
and, where a training metrics.jsonl sits in a run directory or its parent, training-curve
PNGs of every numeric metric logged. Runs evaluated with a protocol that has a published table
(--protocol luffy) also get that table first: its columns in the paper's order (AIME24, AIME25,
AMC, MATH-500, Minerva, OlympiadBench) and their average. Runs under different protocols are
flagged as not comparable."""


def _protocols_help() -> str:
    from sgpo.evaluation.protocols import PROTOCOLS

    return "".join(f"  {name}{' (default)' if name == 'default' else ''}: {p.summary}\n" for name, p in PROTOCOLS.items())


def register(sub: Any) -> None:
    from sgpo.evaluation.protocols import PROTOCOLS

    p = sub.add_parser("eval", help="evaluate a model on math benchmarks",
                       description=EVAL_HELP.replace("{protocols}", _protocols_help()),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder, Hugging Face id, or smollm2-135m-instruct")
    p.add_argument("--benchmarks", required=True, nargs="+", metavar="NAME_OR_PATH",
                   help="built-in names and/or JSONL/Parquet files (comma- or space-separated)")
    p.add_argument("--protocol", choices=tuple(PROTOCOLS), default="default",
                   help="sampling, length and k per benchmark in one switch (see above; default: default)")
    p.add_argument("--num-samples", type=int, help="k samples per problem for every benchmark "
                                                   "(default: the protocol's k per benchmark)")
    p.add_argument("--temperature", type=float, help="sampling temperature; 0 = greedy (default: the protocol's, 0.6)")
    p.add_argument("--top-p", type=float, help="nucleus sampling threshold (default: the protocol's; "
                                               "0.95 default, 1.0 luffy)")
    p.add_argument("--max-new-tokens", type=int, help="completion length limit (default: the protocol's, 8192; "
                                                      "use ~512 or less for CPU smoke tests)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--output-dir", default="eval", help="where results and records go (default ./eval)")
    p.add_argument("--data-dir", help="folder holding NAME.jsonl for built-in names (default $SGPO_DATA_DIR)")
    p.add_argument("--backend", choices=("hf", "vllm"), default="hf",
                   help="hf: transformers generate, batched (CPU or GPU); vllm: vLLM engine (GPU)")
    p.add_argument("--batch-size", type=int, help="sequences per generate call (default 32 for hf, 1024 for vllm)")
    p.add_argument("--limit", type=int, default=0, help="only the first N problems of each benchmark (smoke tests)")
    p.add_argument("--problem-field", default="problem", help="problem column of JSONL/Parquet files")
    p.add_argument("--answer-field", default="answer", help="gold answer column of JSONL/Parquet files")
    p.add_argument("--id-field", default="id", help="problem id column (row numbers when absent)")
    p.add_argument("--dtype", default="auto", help="model dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    p.add_argument("--train-config", metavar="PATH",
                   help="a training run's config.json (or its YAML): evaluate with the prompt format it trained "
                        "with (data.system_prompt, data.instruction, data.fewshot); default: the plain \\boxed{} prompt")
    p.add_argument("--reward-functions", nargs="+", metavar="MODULE:CALLABLE",
                   help="reward functions, each called as fn(completion, answer, row) -> float or None, summed with "
                        "--reward-weights into each sample's score (default: the --train-config's reward section, "
                        "else the built-in math grader sgpo.rewards.functions:math_reward)")
    p.add_argument("--reward-weights", nargs="+", type=float, metavar="W", help="one weight per reward function "
                                                                              "(default 1.0 each)")
    p.add_argument("--prompt-format", choices=("chat", "plain"),
                   help="chat: the model's chat template (a model without one is an error); plain: 'role: text' "
                        "lines, for models without a template (default: the --train-config's data.prompt_format, "
                        "else chat)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_eval)

    r = sub.add_parser("report", help="compare evaluation runs: markdown table and plots", description=REPORT_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="`sgpo eval` output directories")
    r.add_argument("--output", default="report", help="folder for report.md and PNGs (default ./report)")
    r.add_argument("--labels", nargs="+", help="one row label per RUN_DIR (default: folder names)")
    r.set_defaults(func=run_report)


def _split_names(values: list[str]) -> tuple[str, ...]:
    return tuple(n.strip() for v in values for n in v.split(",") if n.strip())


def run_eval(args: argparse.Namespace) -> int:
    from sgpo.evaluation.runner import RESULTS_JSON, EvalConfig, run_evaluation
    from sgpo.io import DataError

    cfg = EvalConfig(model=args.model, benchmarks=_split_names(args.benchmarks), output_dir=args.output_dir,
                     protocol=args.protocol, num_samples=args.num_samples, temperature=args.temperature, top_p=args.top_p,
                     max_new_tokens=args.max_new_tokens, seed=args.seed, data_dir=args.data_dir,
                     backend=args.backend, batch_size=args.batch_size, limit=args.limit,
                     problem_field=args.problem_field, answer_field=args.answer_field, id_field=args.id_field,
                     dtype=args.dtype, show_progress=not args.no_progress, train_config=args.train_config,
                     prompt_format=args.prompt_format or "",
                     reward_functions=tuple(args.reward_functions or ()),
                     reward_weights=tuple(args.reward_weights or ()))
    try:
        results = run_evaluation(cfg)
    except DataError as e:
        print(f"sgpo eval: data error: {e}", file=sys.stderr)
        return 2
    for name, r in results["benchmarks"].items():
        lo, hi = r["ci95"]
        print(f"{name:>14}: avg@{r['k']} {100 * r['avg@k']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]  "
              f"pass@{r['k']} {100 * r['pass@k']:.1f}  (n={r['n']}, {_reuse(r)})")
    print(f"{'macro':>14}: avg {100 * results['macro']['avg@k']:.1f} (protocol {cfg.protocol}); "
          f"outputs in {cfg.output_dir}/{RESULTS_JSON}")
    return 0


def _reuse(r: dict[str, Any]) -> str:
    text = f"{r.get('reused', 0)} reused from earlier records"
    if r.get("stale"):
        text += f", {r['stale']} regenerated because the model, prompt, sampling or problem changed"
    return text


def run_report(args: argparse.Namespace) -> int:
    from sgpo.evaluation.report import write_report
    from sgpo.io import DataError

    try:
        path = write_report(args.run_dirs, args.output, args.labels)
    except (DataError, ValueError) as e:
        print(f"sgpo report: {e}", file=sys.stderr)
        return 2
    print(f"report written to {path}")
    return 0
