"""One optimiser update from a list of training sequences, under accelerate.

The loss of every micro-batch is divided by the token count of the whole update summed over
processes, so gradient accumulation and DDP averaging reproduce the whole-batch token mean
exactly. Processes run the same number of micro-batches (empty ones do a zero-weight
forward) so collective operations never hang.

Accumulation follows accelerate's contract the way transformers' Trainer drives it: the
accelerator is built with ``gradient_accumulation_steps = 1`` (the loss is already
normalised, nothing may divide it again) and ``gradient_state.sync_gradients`` is set by
hand, False on every micro-batch but the last. DDP and FSDP skip the gradient reduction
under ``no_sync`` until then; DeepSpeed ignores ``no_sync`` at ZeRO >= 2 and instead reads
``sync_gradients`` as its accumulation boundary, where ``accelerator.backward`` runs the
engine's step (clip, optimiser, zero grads) once per update."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from sgpo.trainer.batch import TrainSequence, collate, group_by_prompt, normalizer_tokens, split_micro_batches


def global_sum(accelerator: Any, value: float) -> float:
    t = torch.tensor([float(value)], device=accelerator.device)
    return float(accelerator.reduce(t, reduction="sum").item()) if accelerator.num_processes > 1 else float(t.item())


def global_max(accelerator: Any, value: int) -> int:
    t = torch.tensor([int(value)], device=accelerator.device)
    return int(accelerator.reduce(t, reduction="max").item()) if accelerator.num_processes > 1 else int(value)


def _dummy(pad_id: int) -> list[TrainSequence]:
    """A one-token sequence with zero advantage: keeps DDP collectives in step, adds nothing."""
    return [TrainSequence([pad_id], [pad_id], "rl", advantage=0.0)]


def is_deepspeed(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def accumulate_gradients(accelerator: Any, module: Any, seqs: list[TrainSequence], *, micro_batch_size: int,
                         pad_id: int, normalizer: str, aggregation: str = "token-mean", share_prompts: bool = False
                         ) -> tuple[float, list[dict[str, torch.Tensor]]]:
    """Forward/backward every micro-batch; returns the global loss of the update and the
    per-micro-batch metrics. Gradients are left in ``.grad`` (already averaged over processes);
    under DeepSpeed the engine has already stepped at the last micro-batch.
    Every term is divided by N, the global count of the tokens ``normalizer`` counts (all loss
    tokens when that is 0, e.g. sft has no RL tokens). ``share_prompts``: a prompt's rows go
    into micro-batches together and each distinct prompt of a micro-batch runs once
    (:func:`sgpo.trainer.forward.shared_prompt_hidden`)."""
    if accelerator.gradient_accumulation_steps != 1:
        raise ValueError("sgpo normalises the loss itself: run accelerate with gradient_accumulation_steps = 1 "
                         f"(got {accelerator.gradient_accumulation_steps}); micro-batches are set by "
                         "system.micro_batch_size")
    counted, total = normalizer_tokens(seqs, normalizer, aggregation)
    n_tok = global_sum(accelerator, counted) or global_sum(accelerator, total)
    micro = split_micro_batches(group_by_prompt(seqs) if share_prompts else seqs, micro_batch_size)
    n_micro = global_max(accelerator, len(micro))
    world = accelerator.num_processes  # DDP/FSDP/ZeRO average gradients over processes; scale so the sum survives
    deepspeed = is_deepspeed(accelerator)
    backward_kwargs = {"scale_wrt_gas": False} if deepspeed else {}
    local_loss, metrics = 0.0, []
    try:
        for i in range(n_micro):
            batch = micro[i] if i < len(micro) else _dummy(pad_id)
            mb = collate(batch, pad_id, accelerator.device, share=share_prompts)
            last = i == n_micro - 1
            accelerator.gradient_state._set_sync_gradients(last)
            ctx = nullcontext() if last or deepspeed else accelerator.no_sync(module)
            with ctx:
                loss, m = module(mb, max(n_tok, 1.0))
                accelerator.backward(loss * world, **backward_kwargs)
            local_loss += float(loss.detach())
            if i < len(micro):
                metrics.append(m)
    finally:
        accelerator.gradient_state._set_sync_gradients(True)  # code outside an update sees the default
    return global_sum(accelerator, local_loss), metrics


@dataclass
class UpdateResult:
    loss: float  # global loss of the update (token mean over its sequences)
    grad_norm: float  # before clipping
    stepped: bool  # False: skipped because the loss or gradient norm was not finite


def clip_and_check(accelerator: Any, module: Any, max_grad_norm: float, loss: float) -> tuple[float, bool]:
    """Clip gradients; returns (grad norm, finite). A non-finite loss or norm means skip.
    Under DeepSpeed the engine clipped at its boundary; this reads the norm it computed."""
    if max_grad_norm > 0 or is_deepspeed(accelerator):
        norm = accelerator.clip_grad_norm_(module.parameters(), max_grad_norm if max_grad_norm > 0 else math.inf)
        norm = float("nan") if norm is None else float(norm.item() if torch.is_tensor(norm) else norm)
    else:
        norm = math.sqrt(sum(float(p.grad.float().pow(2).sum()) for p in module.parameters() if p.grad is not None))
    return norm, math.isfinite(loss) and math.isfinite(norm)


def optimizer_update(accelerator: Any, module: Any, optimizer: Any, seqs: list[TrainSequence], *,
                     micro_batch_size: int, pad_id: int, normalizer: str, max_grad_norm: float,
                     aggregation: str = "token-mean", share_prompts: bool = False
                     ) -> tuple[UpdateResult, list[dict[str, torch.Tensor]]]:
    """One optimiser update on ``seqs``: accumulate, clip, step unless non-finite, zero.
    DeepSpeed stepped inside the last backward (its optimizer.step is a no-op) and skips a
    non-finite gradient norm itself; ``optimizer_step_was_skipped`` reports that."""
    loss, metrics = accumulate_gradients(accelerator, module, seqs, micro_batch_size=micro_batch_size, pad_id=pad_id,
                                         normalizer=normalizer, aggregation=aggregation, share_prompts=share_prompts)
    norm, finite = clip_and_check(accelerator, module, max_grad_norm, loss)
    if finite:
        optimizer.step()
    stepped = finite and not accelerator.optimizer_step_was_skipped
    optimizer.zero_grad(set_to_none=True)
    return UpdateResult(loss, norm, stepped), metrics
