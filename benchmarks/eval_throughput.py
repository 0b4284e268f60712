"""CPU generation throughput of batched evaluation vs one prompt at a time: the same model,
the same problems, greedy decoding, the same evaluation prompt. Target: batched >= 3x.

Tokens/s counts completion tokens actually produced (EOS included, padding not).

    python benchmarks/eval_throughput.py [--model PATH] [--problems 16] [--tokens 64] [--batch-size 16] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from sgpo.evaluation.benchmarks import load_benchmark
from sgpo.generation import SamplingConfig, make_generator
from sgpo.prompts import messages, render

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks" / "math500.jsonl"


def throughput(generator, prompts: list[str], sampling: SamplingConfig, one_at_a_time: bool) -> tuple[float, int, float]:
    """(tokens/s, completion tokens, seconds) for generating one greedy completion per prompt."""
    start = time.perf_counter()
    if one_at_a_time:
        outs = [generator.generate([p], sampling, n=1)[0] for p in prompts]
    else:
        outs = generator.generate(prompts, sampling, n=1)
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for group in outs for c in group)
    return tokens / seconds, tokens, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model folder, Hub id or the SmolLM2 alias")
    parser.add_argument("--data", default=os.environ.get("SGPO_BENCH_DATA", str(DEFAULT_DATA)),
                        help="JSONL benchmark file (default: the shared math500.jsonl)")
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64, help="max new tokens")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        __import__("torch").set_num_threads(args.threads)

    from sgpo.models import load_model, load_tokenizer

    model, tok = load_model(args.model, dtype="float32"), load_tokenizer(args.model)
    bench = load_benchmark(args.data, limit=args.problems)
    prompts = [render(tok, messages(p["problem"])) for p in bench.problems]
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=args.tokens)
    batched = make_generator("hf", model, tok, batch_size=args.batch_size)
    single = make_generator("hf", model, tok, batch_size=1)
    single.generate(prompts[:1], SamplingConfig(temperature=0.0, max_new_tokens=4))  # warm-up
    b_rate, b_tok, b_s = throughput(batched, prompts, sampling, one_at_a_time=False)
    s_rate, s_tok, s_s = throughput(single, prompts, sampling, one_at_a_time=True)
    print(f"model {args.model}, {len(prompts)} {bench.name} problems, greedy, max_new_tokens {args.tokens}, "
          f"torch threads {__import__('torch').get_num_threads()}")
    print(f"batched (batch {args.batch_size}): {b_rate:7.1f} tokens/s  ({b_tok} tokens in {b_s:.1f} s)")
    print(f"one at a time       : {s_rate:7.1f} tokens/s  ({s_tok} tokens in {s_s:.1f} s)")
    print(f"speed-up            : {b_rate / s_rate:.2f}x  (target >= 3x)")


if __name__ == "__main__":
    main()
