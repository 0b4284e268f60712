"""Extraction throughput: requests per second of ``sgpo extract``'s driver and HTTP client
against a loopback OpenAI-compatible server that takes a fixed latency per request, with
concurrency 16 vs 1. Real teachers are latency-bound, so concurrency should scale
throughput almost linearly. Target: >= 10x.

    python benchmarks/extract_throughput.py [--problems 64] [--latency 0.1] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from sgpo.data import Problem
from sgpo.strategies.extract import ExtractConfig, run_extraction
from sgpo.testing import LoopbackChatServer, Reply, strategy_reply
from sgpo.strategies.openai_client import OpenAIChatClient

REPLY = strategy_reply()


def requests_per_second(url: str, problems: list[Problem], concurrency: int, out: Path) -> float:
    async def main() -> dict:
        client = OpenAIChatClient(url, "bench-teacher", timeout_s=30, concurrency=concurrency)
        try:
            config = ExtractConfig(teacher="bench-teacher", num_candidates=1, concurrency=concurrency,
                                   show_progress=False)
            return await run_extraction(problems, client, out, config)
        finally:
            await client.aclose()

    summary = asyncio.run(main())
    run = summary["this_run"]
    # a retry would mean a connection error or timeout, which this measurement must not hide
    assert summary["statuses"]["ok"] == len(problems) and run["retries"] == 0, summary
    return run["requests_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.1, help="server seconds per request")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    problems = [Problem(f"p{i}", f"Problem {i}: count the arrangements.", "42", None, "A verified solution.")
                for i in range(args.problems)]
    with tempfile.TemporaryDirectory() as tmp, LoopbackChatServer(lambda body: Reply(texts=[REPLY]),
                                                                 latency_s=args.latency) as server:
        serial = requests_per_second(server.base_url, problems, 1, Path(tmp) / "c1.jsonl")
        parallel = requests_per_second(server.base_url, problems, args.concurrency, Path(tmp) / "cN.jsonl")
    print(f"{args.problems} problems, {args.latency * 1000:.0f} ms per request")
    print(f"concurrency 1:  {serial:7.2f} requests/s")
    print(f"concurrency {args.concurrency}: {parallel:7.2f} requests/s")
    print(f"speed-up: {parallel / serial:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
