"""The rollout correction in one real training step: an engine that reports sampled-token
log-probs (vLLM cannot run here: a scripted generator stands in for it and reports the policy's
own log-probs shifted by a known amount), the trainer's rollout-time log-probs pi_old, the
weights rho_t on the RL term (loss.rollout_is) and the rollout/* metrics."""

from __future__ import annotations

import math

import pytest
import torch

from sgpo.generation import Completion
from sgpo.trainer.metrics import StepMetrics
from sgpo.trainer.trainer import PhaseTimer
from tests.test_trainer_step import ScriptedGenerator, _terms, _trainer

SHIFT = 0.05  # the engine's log-probs are the policy's minus this: rho_t = exp(0.05) on every token


class EngineGenerator(ScriptedGenerator):
    """SCRIPT's completions, each with "engine" log-probs: ``model``'s (full forward in the
    sampling context at the sampling temperature) minus ``shift``, as an engine with other
    numerics (tests/test_gpu.py passes a float32 copy of a bf16 policy and no shift)."""

    reports_logprobs = True

    def __init__(self, tokenizer, model, shift: float = SHIFT):
        super().__init__(tokenizer)
        self.model, self.shift = model, shift

    @torch.no_grad()
    def generate(self, prompts, sampling, n=1):
        out = super().generate(prompts, sampling, n)
        for ids, group in zip(prompts, out):
            for j, c in enumerate(group):
                device = next(self.model.parameters()).device
                logits = self.model(input_ids=torch.tensor([list(ids) + c.token_ids], device=device)).logits[0].float()
                logp = torch.log_softmax(logits[len(ids) - 1:-1] / sampling.temperature, -1)  # [T, V]
                exact = logp.gather(-1, torch.tensor(c.token_ids, device=device)[:, None])[:, 0]
                group[j] = Completion(c.text, c.token_ids, c.finish_reason, (exact - self.shift).tolist())
        return out


def _step(tmp_path, model_dir, *sets, name):
    trainer, _ = _trainer(tmp_path, model_dir, "algorithm.method=grpo", "algorithm.samples_per_problem=4", *sets,
                          name=name)
    trainer.generator = EngineGenerator(trainer.tokenizer, trainer.accelerator.unwrap_model(trainer.module).lm)
    batch = trainer.rollout(PhaseTimer())
    metrics, updates = trainer.update(batch.sequences)
    record = StepMetrics.build(trainer.accelerator, 1, batch, metrics, updates=len(updates))
    return batch, metrics, record


@pytest.mark.slow
def test_rollout_correction_weights_the_rl_term(tmp_path, tiny_model_dir) -> None:
    """token_truncate: every RL token's rho is exp(0.05) (below the cap), so the RL term is
    exp(0.05) times the uncorrected one; sequence_mask with cap 1.2: a sequence of T tokens has
    rho = exp(0.05 T) > 1.2 for T >= 4 (all of them), so every RL token is masked and the term
    is 0; none: weight 1, the mismatch still measured."""
    none_batch, none_m, none_rec = _step(tmp_path, tiny_model_dir, "loss.rollout_is=none", name="none")
    tok_batch, tok_m, tok_rec = _step(tmp_path, tiny_model_dir, "loss.rollout_is=token_truncate", name="tok")
    seq_batch, seq_m, seq_rec = _step(tmp_path, tiny_model_dir, "loss.rollout_is=sequence_mask",
                                      "loss.rollout_is_max=1.2", name="seq")
    rl = [s for s in tok_batch.sequences if s.role == "rl"]
    assert rl and all(s.rollout_logp is not None and s.num_tokens >= 4 for s in rl)
    for s in rl:  # the trainer's old log-probs are the policy's: rho = exp(SHIFT) up to float32
        torch.testing.assert_close(s.pg_weight, torch.full((s.num_tokens,), math.exp(SHIFT)), rtol=1e-4, atol=1e-4)
    assert _terms(tok_m, "loss/rl") == pytest.approx(math.exp(SHIFT) * _terms(none_m, "loss/rl"), rel=1e-4)
    assert _terms(none_m, "loss/rl") != 0
    assert _terms(seq_m, "loss/rl") == 0 and all(float(s.pg_weight.abs().max()) == 0
                                                 for s in seq_batch.sequences if s.role == "rl")
    assert tok_rec["rollout/is_ratio_mean"] == pytest.approx(math.exp(SHIFT), rel=1e-4)
    assert tok_rec["rollout/is_masked_frac"] == 0 and seq_rec["rollout/is_masked_frac"] == 1
    assert seq_rec["rollout/is_ratio_mean"] == 0 and none_rec["rollout/is_ratio_mean"] == 1
    for rec in (none_rec, tok_rec, seq_rec):
        assert rec["rollout/logprob_abs_diff"] == pytest.approx(SHIFT, abs=1e-4)
    # one update per rollout: the loss still takes the current policy as pi_old
    assert all(s.old_logp is None for s in tok_batch.sequences)


def test_engines_without_logprobs_leave_the_step_unchanged(tmp_path, tiny_model_dir) -> None:
    """The transformers generator reports no log-probs: no correction, no rollout/* metrics."""
    trainer, _ = _trainer(tmp_path, tiny_model_dir, "algorithm.method=grpo", "algorithm.samples_per_problem=4",
                          name="hf")
    batch = trainer.rollout(PhaseTimer())
    assert all(s.pg_weight is None and s.rollout_logp is None for s in batch.sequences)
    assert not [k for k in batch.stats if k.startswith("rollout/")]
