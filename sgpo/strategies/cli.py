"""``sgpo extract`` and ``sgpo score-strategies``: argument parsing and wiring only; the work
is done by :mod:`sgpo.strategies.extract` and :mod:`sgpo.strategies.scoring`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any, Callable

from sgpo.io import DataError
from sgpo.strategies.prompt import PROMPT_VERSION

EXTRACT_HELP = f"""Extract one strategy per problem from strong-model solutions with a teacher LLM (prompt
{PROMPT_VERSION}), rejecting candidates that are malformed or leak the answer. Writes one JSONL
record per problem (status ok | leaked | invalid | failed) and OUTPUT.summary.json. Rerunning
with the same --output resumes: finished problems are skipped, failed ones retried."""

SCORE_HELP = """Score extracted strategies with the student model: a behavioural leak test (answer-only
success with vs without the strategy) and the guided success rate p_g. Keeps the best
non-leaking candidate per problem; writes the same record format plus scores."""


def _add_fields(p: argparse.ArgumentParser, response: bool) -> None:
    p.add_argument("--problem-field", default="problem", help="input field with the problem (default: problem)")
    p.add_argument("--answer-field", default="answer", help="input field with the gold answer (default: answer)")
    if response:
        p.add_argument("--response-field", default="teacher_response",
                       help="input field with the verified strong-model solution (default: teacher_response)")
    p.add_argument("--id-field", default="id", help="input field with a unique problem id; rows without one get "
                   "'row-N' (default: id)")
    p.add_argument("--split", default="train", help="split of a Hugging Face dataset input (default: train)")


def register(subparsers: Any) -> None:
    ex = subparsers.add_parser("extract", help="extract strategies from strong-model solutions",
                               description=EXTRACT_HELP)
    ex.add_argument("--input", required=True, help="JSONL, Parquet or Hugging Face dataset with problem, answer and "
                    "strong-model solution")
    ex.add_argument("--output", required=True, help="JSONL file to append records to (resumable)")
    ex.add_argument("--backend", choices=("openai", "hf"), default="openai",
                    help="openai: an OpenAI-compatible server at --base-url (vLLM, SGLang, hosted APIs); "
                    "hf: a local transformers model at --model (default: openai)")
    ex.add_argument("--base-url", help="server URL up to /v1, e.g. http://localhost:8000/v1 (backend openai)")
    ex.add_argument("--model", required=True, help="teacher model name on the server, or a local path (backend hf)")
    ex.add_argument("--api-key-env", default="OPENAI_API_KEY",
                    help="environment variable holding the API key, if the server needs one (default: OPENAI_API_KEY)")
    ex.add_argument("--concurrency", type=int, default=16, help="requests in flight (default: 16)")
    ex.add_argument("--num-candidates", type=int, default=4, help="strategies drawn per problem (default: 4)")
    ex.add_argument("--temperature", type=float, default=0.7, help="teacher sampling temperature (default: 0.7)")
    ex.add_argument("--max-tokens", type=int, default=1024, help="max tokens per teacher reply (default: 1024)")
    ex.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default: 120)")
    ex.add_argument("--max-retries", type=int, default=5, help="retries per request on 429/5xx/timeouts (default: 5)")
    ex.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds, doubled each retry "
                    "(default: 1)")
    ex.add_argument("--no-symbolic-filter", action="store_true", help="skip the math-verify leak filter")
    ex.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (backend hf, default: 8)")
    ex.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_fields(ex, response=True)
    ex.set_defaults(func=_reporting_data_errors(run_extract))

    sc = subparsers.add_parser("score-strategies", help="behavioural leak test and utility score of strategies",
                               description=SCORE_HELP)
    sc.add_argument("--input", required=True, help="output of `sgpo extract`")
    sc.add_argument("--model", required=True, help="student model path or Hub id (the policy to be trained)")
    sc.add_argument("--output", required=True, help="JSONL file for the scored records (resumable)")
    sc.add_argument("--data", help="problems with answers, joined by id, if the extracted records lack them")
    sc.add_argument("--samples", type=int, default=4, help="student samples per prompt (default: 4)")
    sc.add_argument("--leak-threshold", type=float, default=0.5, help="flag a behavioural leak when answer-only "
                    "success with minus without the strategy exceeds this (default: 0.5)")
    sc.add_argument("--temperature", type=float, default=1.0, help="student sampling temperature (default: 1.0)")
    sc.add_argument("--max-new-tokens", type=int, default=512, help="tokens per guided solution (default: 512)")
    sc.add_argument("--answer-max-new-tokens", type=int, default=32, help="tokens per answer-only probe (default: 32)")
    sc.add_argument("--backend", choices=("hf", "vllm"), default="hf", help="student generation engine (default: hf)")
    sc.add_argument("--batch-size", type=int, default=32, help="sequences per generate call (backend hf)")
    sc.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    sc.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_fields(sc, response=False)
    sc.set_defaults(func=_reporting_data_errors(run_score))


def _reporting_data_errors(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input data is the user's to fix: print the message (file, row, field), not a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except DataError as e:
            print(f"sgpo {args.command}: {e}", file=sys.stderr)
            return 2

    return run


def _make_client(args: argparse.Namespace) -> Any:
    if args.backend == "hf":
        from sgpo.strategies.hf_client import HFChatClient

        return HFChatClient.from_pretrained(args.model, batch_size=args.batch_size)
    from sgpo.strategies.openai_client import OpenAIChatClient
    from sgpo.strategies.retry import RetryPolicy

    retry = RetryPolicy(max_retries=args.max_retries, backoff_base_s=args.backoff)
    return OpenAIChatClient(args.base_url, args.model, api_key=os.environ.get(args.api_key_env) or None,
                            timeout_s=args.timeout, concurrency=args.concurrency, retry=retry)


def run_extract(args: argparse.Namespace) -> int:
    from sgpo.strategies.extract import ExtractConfig, load_inputs, run_extraction

    from sgpo.errors import UserError
    from sgpo.io import same_file

    if args.backend == "openai" and not args.base_url:
        print("sgpo extract: --base-url is required with --backend openai", file=sys.stderr)
        return 2
    if same_file(args.input, args.output):
        raise UserError(f"--output {args.output} is the input file; records would be appended to your data. "
                        "Choose another --output")
    if args.backend == "openai" and not os.environ.get(args.api_key_env):
        print(f"sgpo extract: warning: ${args.api_key_env} (--api-key-env) is not set; sending requests without "
              "an API key", file=sys.stderr)
    for name in ("concurrency", "num_candidates"):
        if getattr(args, name) < 1:
            print(f"sgpo extract: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    problems = load_inputs(args.input, split=args.split, problem_field=args.problem_field,
                           answer_field=args.answer_field, response_field=args.response_field, id_field=args.id_field)
    config = ExtractConfig(teacher=args.model, num_candidates=args.num_candidates, concurrency=args.concurrency,
                           temperature=args.temperature, max_tokens=args.max_tokens,
                           symbolic_filter=not args.no_symbolic_filter, show_progress=not args.no_progress)

    async def main() -> dict[str, Any]:
        client = _make_client(args)
        try:
            return await run_extraction(problems, client, args.output, config)
        finally:
            await client.aclose()

    summary = asyncio.run(main())
    if summary["interrupted"]:
        return 130
    run = summary["this_run"]
    if run["processed"] and run["statuses"]["failed"] == run["processed"]:  # `extract && train` must stop here
        errors = "; ".join(f"{e} ({n}x)" for e, n in run["errors"].items())
        print(f"sgpo extract: no request succeeded: {run['processed']} problems failed ({errors}); nothing was "
              "extracted in this run", file=sys.stderr)
        return 1
    return 0


def run_score(args: argparse.Namespace) -> int:
    from sgpo.data import load_problems
    from sgpo.generation import make_generator
    from sgpo.models import load_model, load_tokenizer
    from sgpo.strategies.scoring import ScoreConfig, attach_problems, score_records
    from sgpo.strategies.store import latest_records

    from sgpo.errors import UserError
    from sgpo.io import same_file

    if not os.path.exists(args.input):
        raise DataError(args.input, "file not found")
    if same_file(args.input, args.output):
        raise UserError(f"--output {args.output} is the input file; choose another --output")
    records = list(latest_records(args.input).values())
    data = None
    if args.data:
        ps = load_problems(args.data, split=args.split, problem_field=args.problem_field,
                           answer_field=args.answer_field, id_field=args.id_field)
        data = {p.id: (p.problem, p.answer) for p in ps.problems}
    attach_problems(records, data, args.input)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model) if args.backend == "hf" else args.model
    kwargs = {"batch_size": args.batch_size} if args.backend == "hf" else {}
    generator = make_generator(args.backend, model, tokenizer, **kwargs)
    config = ScoreConfig(student=args.model, samples=args.samples, leak_threshold=args.leak_threshold,
                         temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                         answer_max_new_tokens=args.answer_max_new_tokens, seed=args.seed,
                         show_progress=not args.no_progress)
    score_records(records, generator, tokenizer, args.output, config)
    return 0
