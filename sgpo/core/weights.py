"""Instance-level weights of the distillation term ("when to distill").

SGPO strengthens strategy guidance where autonomous exploration falls short and fades it as
the policy's own competence grows. The weight of problem i is a function of its autonomous
success rate p_a, its strategy-guided success rate p_g and, for the competence schedule, a
running average of past p_a. Every variant is a pure function of those tensors so the
trainer can switch between them with one config key.
"""

from __future__ import annotations

import torch

WEIGHT_MODES = ("marginal", "need", "competence", "constant")


def instance_weights(
    p_auto: torch.Tensor,  # [B] autonomous success rate
    p_guided: torch.Tensor,  # [B] strategy-guided success rate
    mode: str = "marginal",
    competence: torch.Tensor | None = None,  # [B] running average of past p_auto
    eps: float = 1e-6,
) -> torch.Tensor:  # [B]
    """Weight w_i of problem i's distillation term.

    - ``marginal`` (W1, default): ``clip(p_g - p_a, 0, 1)``, the benefit the strategy brings.
    - ``need`` (W2): ``(1 - p_a) * 1[p_g > 0]``, distill where the policy fails, if guidance works.
    - ``competence`` (W3): ``clip((p_g - p_a) / (p_g + eps), 0, 1) * (1 - competence)``,
      relative benefit faded by the problem's running competence (required for this mode).
    - ``constant``: ones (ablation).
    """
    if mode not in WEIGHT_MODES:
        raise ValueError(f"unknown weight mode {mode!r}; expected one of {WEIGHT_MODES}")
    if p_auto.shape != p_guided.shape:
        raise ValueError(f"p_auto {tuple(p_auto.shape)} and p_guided {tuple(p_guided.shape)} differ in shape")
    if mode == "marginal":
        return (p_guided - p_auto).clamp(0.0, 1.0)
    if mode == "need":
        return (1.0 - p_auto) * (p_guided > 0).to(p_auto.dtype)
    if mode == "competence":
        if competence is None:
            raise ValueError("weight mode 'competence' needs the running competence tensor (got None)")
        if competence.shape != p_auto.shape:
            raise ValueError(f"competence {tuple(competence.shape)} must match p_auto {tuple(p_auto.shape)}")
        relative = ((p_guided - p_auto) / (p_guided + eps)).clamp(0.0, 1.0)
        return relative * (1.0 - competence)
    return torch.ones_like(p_auto)


def update_competence(
    previous: torch.Tensor | None,  # [B] running competence, or None before the first observation
    p_auto: torch.Tensor,  # [B] this step's autonomous success rate
    momentum: float,
) -> torch.Tensor:  # [B]
    """Exponential moving average ``c <- momentum * c + (1 - momentum) * p_a``.

    The first observation initialises the average to ``p_auto`` (no bias toward 0).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
    if previous is None:
        return p_auto.clone()
    if previous.shape != p_auto.shape:
        raise ValueError(f"previous {tuple(previous.shape)} must match p_auto {tuple(p_auto.shape)}")
    return momentum * previous + (1.0 - momentum) * p_auto
