"""One optimiser update (sgpo.trainer.update) and the per-step metric record
(sgpo.trainer.metrics) with several updates per step."""

from types import SimpleNamespace

import pytest
import torch

from sgpo.trainer.metrics import StepMetrics


def test_loss_keys_are_means_over_the_steps_updates():
    """Two updates with losses 0.5 (rl 0.3 + distill 0.2) and 0.25 (rl 0.05 + distill 0.2),
    each split into micro-batches: every loss key is the mean over updates, loss/rl =
    (0.3 + 0.05) / 2 = 0.175, loss/distill = 0.2, loss = 0.375 = their sum."""
    t = torch.tensor
    micro = [{"loss": t(0.4), "loss/rl": t(0.2), "loss/distill": t(0.2)},  # update 1, micro-batch 1
             {"loss": t(0.1), "loss/rl": t(0.1)},  # update 1, micro-batch 2
             {"loss": t(0.25), "loss/rl": t(0.05), "loss/distill": t(0.2)}]  # update 2
    acc = SimpleNamespace(num_processes=1)
    rec = StepMetrics.build(acc, 1, SimpleNamespace(stats={}), micro, updates=2, lr=1e-6)
    assert rec["updates"] == 2
    assert rec["loss/rl"] == pytest.approx(0.175) and rec["loss/distill"] == pytest.approx(0.2)
    assert rec["loss"] == pytest.approx(0.375) == pytest.approx(rec["loss/rl"] + rec["loss/distill"])


def _setup(tiny_model_dir):
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from sgpo.core import LossSettings
    from sgpo.trainer.loss import PolicyLoss

    acc = Accelerator(cpu=True)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    module = PolicyLoss(lm, LossSettings(), temperature=1.0, chunk_size=8)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    module, optimizer = acc.prepare(module, optimizer)
    return acc, module, optimizer


def test_a_non_finite_update_is_skipped_and_a_finite_one_steps(tiny_model_dir):
    from sgpo.trainer.batch import TrainSequence
    from sgpo.trainer.update import optimizer_update

    acc, module, optimizer = _setup(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    seqs = [TrainSequence([5, 6, 7], [8, 9, 10], "nll"), TrainSequence([5, 6], [11, 12], "nll")]
    bad = [TrainSequence(s.prompt_ids, s.completion_ids, "nll", weight=float("nan")) for s in seqs]
    kw = dict(micro_batch_size=1, pad_id=0, normalizer="all", max_grad_norm=1.0)
    result, _ = optimizer_update(acc, module, optimizer, bad, **kw)
    assert not result.stepped and not torch.isfinite(torch.tensor(result.loss))
    assert all(torch.equal(p, before[n]) for n, p in module.named_parameters())
    assert all(p.grad is None for p in module.parameters())  # nothing carried into the next update
    result, _ = optimizer_update(acc, module, optimizer, seqs, **kw)
    assert result.stepped and result.loss > 0 and result.grad_norm > 0
    assert any(not torch.equal(p, before[n]) for n, p in module.named_parameters())
