"""Group-relative advantages (GRPO / DAPO / LUFFY).

Every RL-style term of the objective needs per-sequence advantages computed from the
rewards of the other samples drawn for the same prompt. Kept apart from the trainer so
the normalisation convention is decided (and tested) in exactly one place.
"""

from __future__ import annotations

import torch

ADVANTAGE_SCALES = ("group", "batch", "none")


def group_advantages(
    rewards: torch.Tensor,  # [N] with N = B x G, G consecutive samples per prompt
    group_size: int,
    scale: str = "group",
    eps: float = 1e-6,
    batch_std: torch.Tensor | float | None = None,  # scale="batch": std of the whole batch (all processes)
) -> torch.Tensor:  # [N]
    """Advantage ``A = r - mean_group(r)``, optionally divided by a standard deviation.

    ``scale="group"`` divides by (std within the group + eps) as in GRPO, ``"batch"`` by
    (std over the batch + eps), ``"none"`` leaves the centred reward (Dr. GRPO / LUFFY).
    The batch std is ``batch_std`` when given (a trainer passes the std of the rewards gathered
    over all processes, so every process scales by the same number), else the std of ``rewards``.
    Standard deviations are the unbiased estimate (``torch.std`` default, Bessel's
    correction), the convention of the common GRPO implementations, so numbers match them.

    A group whose rewards are all equal carries no learning signal and gets exactly 0, even
    when float rounding would leave a tiny non-zero centred value or the std is undefined
    (``group_size == 1``).
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; expected one of {ADVANTAGE_SCALES}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"number of rewards ({rewards.numel()}) must be a positive multiple of group_size ({group_size})"
        )
    r = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    grouped = r.view(-1, group_size)  # [B, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [B, G]
    if scale == "group":
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
        adv = centred / (std + eps)  # [B, G]
    elif scale == "batch":
        if batch_std is not None:
            std = torch.as_tensor(batch_std, dtype=r.dtype)
        else:
            std = r.std() if r.numel() > 1 else r.new_zeros(())
        adv = centred / (std + eps)
    else:
        adv = centred
    flat_group = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)  # [B, 1]
    adv = torch.where(flat_group, torch.zeros_like(adv), adv)
    return adv.reshape(-1)
