"""Peak memory and time of the chunked distillation loss against the naive full-logits path.

Compares :func:`sgpo.core.distill_loss_from_hidden` (fused, chunked) with
:func:`sgpo.core.distill_loss_reference` (full [M, V] logits, plain autograd), forward plus
backward (gradients w.r.t. the hidden states and the LM-head weight), float32 on CPU, with
SmolLM2-135M's head shape (V = 49152, H = 576), the teacher's top-64 support and the default
objective (forward KL, C2 mask), for T = M in {512, 2048, 8192} tokens.

How memory is measured: every (path, T) case runs in a fresh Python subprocess. The child
runs the path once on a tiny problem (V = 256, so lazy one-off costs such as thread pools are
paid without allocating anything large), allocates its inputs, then reads the process's peak
resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) as the baseline. It then runs the full
forward and backward and reads the peak again; the difference is the extra memory the loss
needed at its worst moment, including the gradients it returns. Inputs are built without any
[M, V] temporary so the baseline is not inflated. Time is the wall clock of the same run (the
best of ``--repeats`` runs; peak RSS is a maximum, so repeats do not change it).

On a GPU (``--device cuda``), memory is ``torch.cuda.max_memory_allocated`` above what the
inputs hold, and time is the best of the repeats after a synchronize; ``--dtype bfloat16``
and ``--vocab``/``--hidden`` give the shapes of a 7B model's head.

Usage:
    .venv/bin/python benchmarks/distill_memory.py            # T in {512, 2048, 8192}
    .venv/bin/python benchmarks/distill_memory.py --quick    # T in {256, 1024}, smaller run
    python benchmarks/distill_memory.py --device cuda --dtype bfloat16 --vocab 152064 --hidden 3584
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

V, H, K = 49152, 576, 64
PATHS = ("naive", "chunked")


def _inputs(m: int, vocab: int = V, hidden_size: int = H, seed: int = 0, device: str = "cpu",
            dtype: torch.dtype = torch.float32) -> dict:
    """Random inputs of the distillation term for M = m tokens, with no [M, V] temporary.
    Hidden states and head weight in ``dtype``; teacher targets stay float32 as in training."""
    gen = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(m, hidden_size, generator=gen) * 0.5).to(device, dtype).requires_grad_()
    weight = (torch.randn(vocab, hidden_size, generator=gen) * 0.05).to(device, dtype).requires_grad_()
    start = torch.randint(vocab, (m, 1), generator=gen)
    support = (start + torch.arange(K)) % vocab  # [M, K] distinct ids per row (K <= V)
    teacher = torch.log_softmax(torch.randn(m, K, generator=gen) * 2, -1) + torch.log(torch.tensor(0.9))
    sampled = support[:, 0].clone()
    x = dict(support=support, teacher=teacher, sampled=sampled, coef=torch.full((m,), 1.0 / m),
             old_logp=teacher[:, 0] - 0.1, teacher_sampled=teacher[:, 0])
    return dict(hidden=hidden, weight=weight, **{k: v.to(device) for k, v in x.items()})


def _step(path: str, x: dict, rows: slice, chunk_size: int) -> None:
    from sgpo.core import distill_loss_from_hidden, distill_loss_reference

    fn = distill_loss_from_hidden if path == "chunked" else distill_loss_reference
    loss, _ = fn(x["hidden"][rows], x["weight"], x["support"][rows], x["teacher"][rows], x["coef"][rows],
                 sampled_ids=x["sampled"][rows], old_logp=x["old_logp"][rows],
                 teacher_logp_sampled=x["teacher_sampled"][rows], chunk_size=chunk_size)
    loss.backward()
    x["hidden"].grad = None
    x["weight"].grad = None


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def run_case(path: str, m: int, chunk_size: int, repeats: int, shape: argparse.Namespace) -> dict:
    """Body of the child process: one path, one size."""
    cuda = shape.device.startswith("cuda")
    dtype = getattr(torch, shape.dtype)
    kw = dict(device=shape.device, dtype=dtype)
    _step(path, _inputs(64, vocab=4 * K, hidden_size=shape.hidden, **kw), slice(0, 64), chunk_size)  # warm-up
    x = _inputs(m, vocab=shape.vocab, hidden_size=shape.hidden, **kw)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / 2**20
    else:
        baseline = _peak_rss_mib()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _step(path, x, slice(0, m), chunk_size)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mib()
    return {"path": path, "T": m, "seconds": min(times), "peak_mib": peak - baseline}


def _spawn(path: str, m: int, chunk_size: int, repeats: int, shape: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--case", path, str(m), "--chunk-size", str(chunk_size),
           "--repeats", str(repeats), "--device", shape.device, "--dtype", shape.dtype,
           "--vocab", str(shape.vocab), "--hidden", str(shape.hidden)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="T in {256, 1024} instead of {512, 2048, 8192}")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs per case (default: 3 at T <= 512, else 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", help="of hidden states and head weight: float32, bfloat16")
    parser.add_argument("--vocab", type=int, default=V, help=f"V (default {V}, SmolLM2)")
    parser.add_argument("--hidden", type=int, default=H, help=f"H (default {H}, SmolLM2)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="T values (overrides --quick)")
    parser.add_argument("--case", nargs=2, metavar=("PATH", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case[0], int(args.case[1]), args.chunk_size, args.repeats or 1, args)))
        return
    sizes = args.sizes or ((256, 1024) if args.quick else (512, 2048, 8192))
    where = f"{torch.get_num_threads()} CPU threads" if args.device == "cpu" else torch.cuda.get_device_name()
    print(f"V={args.vocab} H={args.hidden} K={K} {args.dtype} on {where}, chunk_size={args.chunk_size}")
    print(f"{'T':>6} | {'naive s':>8} {'chunked s':>9} {'ratio':>6} | {'naive MiB':>9} {'chunked MiB':>11} {'ratio':>6}")
    for m in sizes:
        repeats = args.repeats or (3 if m <= 512 else 1)
        naive, chunked = (_spawn(p, m, args.chunk_size, repeats, args) for p in PATHS)
        print(f"{m:>6} | {naive['seconds']:>8.2f} {chunked['seconds']:>9.2f} "
              f"{chunked['seconds'] / naive['seconds']:>6.2f} | {naive['peak_mib']:>9.0f} "
              f"{chunked['peak_mib']:>11.0f} {chunked['peak_mib'] / naive['peak_mib']:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
