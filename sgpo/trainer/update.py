"""One optimiser update from a list of training sequences, under accelerate.

The loss of every micro-batch is divided by the token count of the whole update summed over
processes, so gradient accumulation and DDP averaging reproduce the whole-batch token mean
exactly. Processes run the same number of micro-batches (empty ones do a zero-weight
forward) so collective operations never hang."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch

from sgpo.trainer.batch import TrainSequence, collate, normalizer_tokens, split_micro_batches


def global_sum(accelerator: Any, value: float) -> float:
    t = torch.tensor([float(value)], device=accelerator.device)
    return float(accelerator.reduce(t, reduction="sum").item()) if accelerator.num_processes > 1 else float(t.item())


def global_max(accelerator: Any, value: int) -> int:
    t = torch.tensor([int(value)], device=accelerator.device)
    return int(accelerator.reduce(t, reduction="max").item()) if accelerator.num_processes > 1 else int(value)


def _dummy(pad_id: int) -> list[TrainSequence]:
    """A one-token sequence with zero advantage: keeps DDP collectives in step, adds nothing."""
    return [TrainSequence([pad_id], [pad_id], "rl", advantage=0.0)]


def accumulate_gradients(accelerator: Any, module: Any, seqs: list[TrainSequence], *, micro_batch_size: int,
                         pad_id: int, normalizer: str) -> tuple[float, list[dict[str, torch.Tensor]]]:
    """Forward/backward every micro-batch; returns the global loss of the update and the
    per-micro-batch metrics. Gradients are left in ``.grad`` (already averaged over processes).
    Every term is divided by N, the global count of the tokens ``normalizer`` counts (all loss
    tokens when that is 0, e.g. sft has no RL tokens)."""
    counted, total = normalizer_tokens(seqs, normalizer)
    n_tok = global_sum(accelerator, counted) or global_sum(accelerator, total)
    micro = split_micro_batches(seqs, micro_batch_size)
    n_micro = global_max(accelerator, len(micro))
    world = accelerator.num_processes  # DDP averages gradients; scale so the sum survives
    local_loss, metrics = 0.0, []
    for i in range(n_micro):
        batch = micro[i] if i < len(micro) else _dummy(pad_id)
        mb = collate(batch, pad_id, accelerator.device)
        sync = i == n_micro - 1
        ctx = accelerator.no_sync(module) if not sync and world > 1 else nullcontext()
        with ctx:
            loss, m = module(mb, max(n_tok, 1.0))
            accelerator.backward(loss * world)
        local_loss += float(loss.detach())
        if i < len(micro):
            metrics.append(m)
    return global_sum(accelerator, local_loss), metrics


def clip_and_check(accelerator: Any, module: Any, max_grad_norm: float, loss: float) -> tuple[float, bool]:
    """Clip gradients; returns (grad norm, finite). A non-finite loss or norm means skip."""
    if max_grad_norm > 0:
        norm = accelerator.clip_grad_norm_(module.parameters(), max_grad_norm)
        norm = float(norm.item() if torch.is_tensor(norm) else norm)
    else:
        norm = math.sqrt(sum(float(p.grad.float().pow(2).sum()) for p in module.parameters() if p.grad is not None))
    return norm, math.isfinite(loss) and math.isfinite(norm)
