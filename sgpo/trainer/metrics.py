"""Turn a step's rollout statistics and per-micro-batch loss metrics into one flat record of
numbers (gathered over processes) for metrics.jsonl, the progress bar and trackers.
Every key is described in docs/metrics.md."""

from __future__ import annotations

from typing import Any

import torch

# loss terms are already divided by their update's global token count: they add up over the
# micro-batches and processes of one update; a step with several updates logs their mean
# per-token statistics of the rollout correction (sgpo.core.rollout_correction) -> logged mean
ROLLOUT_NAMES = {"rollout/is_ratio": "rollout/is_ratio_mean", "rollout/is_masked": "rollout/is_masked_frac",
                 "rollout/logprob_abs_diff": "rollout/logprob_abs_diff"}
_SUMMED = ("loss", "loss/rl", "loss/offpolicy", "loss/nll", "loss/distill")


def _gather(acc: Any, t: torch.Tensor) -> torch.Tensor:
    if acc.num_processes == 1:
        return t.float()
    from accelerate.utils import gather_object

    return torch.tensor([x for part in gather_object([t.float().tolist()]) for x in part])


def top_share(values: torch.Tensor, frac: float = 0.1) -> float:
    """Share of the total carried by the largest ``frac`` of the values (selectivity of the KL)."""
    if values.numel() == 0 or float(values.sum()) <= 0:
        return float("nan")
    k = max(1, int(round(frac * values.numel())))
    return float(values.topk(k).values.sum() / values.sum())


class StepMetrics:
    @staticmethod
    def build(acc: Any, step: int, batch: Any, micro: list[dict[str, torch.Tensor]], updates: int = 1,
              **scalars: float) -> dict[str, float]:
        """``micro``: the loss metrics of every micro-batch of the step's ``updates`` optimiser
        updates on this process."""
        rec: dict[str, float] = {"step": step, "updates": float(updates)}
        for key, t in sorted(batch.stats.items()):
            v = _gather(acc, t.flatten())
            v = v[~v.isnan()]
            if key == "no_strategy":
                rec["problems/no_strategy"] = float(v.sum())
            elif key in ("p_auto", "p_guided") or key.startswith("samples/"):
                rec[key] = float(v.mean()) if v.numel() else float("nan")
            elif key == "weight":
                rec["weight/mean"] = float(v.mean()) if v.numel() else float("nan")
                rec["weight/nonzero_frac"] = float((v > 0).float().mean()) if v.numel() else float("nan")
            elif key.startswith("reward/failed/"):  # 0/1 per call of one reward function
                rec[f"reward/failure_share/{key[len('reward/failed/'):]}"] = float(v.mean()) if v.numel() else 0.0
                rec["reward/failures"] = rec.get("reward/failures", 0.0) + float(v.sum())
            elif key == "perf/tokens":  # per trajectory: the step's total, exact in float64
                rec["perf/total_tokens"] = float(v.double().sum())
            elif key in ROLLOUT_NAMES:  # per-token values of the rollout correction
                rec[ROLLOUT_NAMES[key]] = float(v.mean()) if v.numel() else float("nan")
            elif key == "weight_guided":
                rec["weight/mean_with_strategy"] = float(v.mean()) if v.numel() else float("nan")
            else:
                rec[f"{key}_mean"] = float(v.mean()) if v.numel() else float("nan")
        rec.update(_loss_metrics(acc, micro, updates))
        rec.update({k: float(v) for k, v in scalars.items()})
        rec.update(throughput(rec.get("perf/total_tokens"), rec.get("time_rollout", 0.0) + rec.get("time_update", 0.0),
                              acc.num_processes))
        return rec


def throughput(total_tokens: float | None, step_seconds: float, devices: int) -> dict[str, float]:
    """``perf/tokens_per_s``: the step's tokens (every trajectory's prompt + completion, all
    processes) over its wall time (rollout + update); ``perf/throughput``: that per device, as
    verl defines it (total tokens / step time / GPUs)."""
    if total_tokens is None or step_seconds <= 0:
        return {}
    per_s = total_tokens / step_seconds
    return {"perf/tokens_per_s": per_s, "perf/throughput": per_s / devices}


RATIO_QUANTILES = {"rl/ratio_p05": 0.05, "rl/ratio_p50": 0.5, "rl/ratio_p95": 0.95}


def quantile(sorted_values: torch.Tensor, q: float) -> float:
    """The q-quantile of ascending values, linear between the two nearest ranks (torch.quantile's
    default, which refuses more than 2^24 values: a long run's step has more RL tokens)."""
    pos = q * (sorted_values.numel() - 1)
    lo, frac = int(pos), pos - int(pos)
    hi = min(lo + 1, sorted_values.numel() - 1)
    return float(sorted_values[lo] + frac * (sorted_values[hi] - sorted_values[lo]))


def ratio_quantiles(ratios: torch.Tensor) -> dict[str, float]:
    """``rl/ratio_p05``, ``_p50``, ``_p95``, ``_min``, ``_max`` of the RL importance ratios of every
    token of the step's updates (all 1 with one update per rollout); {} without RL tokens."""
    if not ratios.numel():
        return {}
    v = ratios.double().sort().values
    return {**{k: quantile(v, q) for k, q in RATIO_QUANTILES.items()},
            "rl/ratio_min": float(v[0]), "rl/ratio_max": float(v[-1])}


def _loss_metrics(acc: Any, micro: list[dict[str, torch.Tensor]], updates: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in _SUMMED:
        local = sum(float(m[key]) for m in micro if key in m)
        present = any(key in m for m in micro)
        if key != "loss" and not _any_process(acc, present):
            continue
        out[key] = float(_gather(acc, torch.tensor([local])).sum()) / updates
    kl = [m["distill/kl_per_token"].float() for m in micro if "distill/kl_per_token" in m]
    kl_all = _gather(acc, torch.cat(kl) if kl else torch.zeros(0))
    if kl_all.numel():
        out["distill/kl_mean"] = float(kl_all.mean())
        out["distill/top10_share"] = top_share(kl_all, 0.1)
        out["distill/tokens"] = float(kl_all.numel())
    ratios = [m["rl/ratio_per_token"].float() for m in micro if "rl/ratio_per_token" in m]
    out.update(ratio_quantiles(_gather(acc, torch.cat(ratios) if ratios else torch.zeros(0))))
    for key in ("distill/masked_frac", "rl/clip_frac_low", "rl/clip_frac_high", "rl/ratio_mean"):
        vals = torch.tensor([float(m[key]) for m in micro if key in m])
        vals = _gather(acc, vals)
        if vals.numel():
            out[key] = float(vals.mean())
    return out


def _any_process(acc: Any, flag: bool) -> bool:
    return bool(_gather(acc, torch.tensor([float(flag)])).sum() > 0)
