"""The rollout-engine importance-sampling correction against a looped reference written here,
hand-derived values, and edge cases (identical log-probs, NaN from the engine, no tokens)."""

from __future__ import annotations

import math

import pytest
import torch

from sgpo.core import ROLLOUT_IS_MODES, rollout_is_weights


def reference(old, rollout, seq, mode, cap, floor):
    """One token at a time in plain floats; a sequence's ratio from the sum over its tokens."""
    old, rollout, seq = old.tolist(), rollout.tolist(), seq.tolist()
    d = [0.0 if math.isnan(r) else o - r for o, r in zip(old, rollout)]
    seq_sum = {i: sum(x for x, j in zip(d, seq) if j == i) for i in set(seq)}
    weights, masked = [], []
    for t in range(len(old)):
        rho = 1.0 if mode == "none" else math.exp(seq_sum[seq[t]] if mode.startswith("sequence") else d[t])
        out = mode != "none" and not floor <= rho <= cap
        weights.append(min(max(rho, floor), cap) if mode.endswith("truncate") else (0.0 if out else rho))
        masked.append(1.0 if out else 0.0)
    diffs = [abs(o - r) for o, r in zip(old, rollout) if not math.isnan(r)]
    return weights, masked, diffs


@pytest.mark.parametrize("mode", ROLLOUT_IS_MODES)
@pytest.mark.parametrize("floor", [0.0, 0.5])
def test_matches_the_looped_reference(mode: str, floor: float) -> None:
    g = torch.Generator().manual_seed(2)  # a draw where the cap binds on some tokens in every mode
    seq = torch.tensor([0] * 6 + [3] * 5 + [4] * 1 + [7] * 8)  # [M] four sequences of 6, 5, 1 and 8 tokens
    old = -torch.rand(len(seq), generator=g) * 3
    rollout = old + torch.randn(len(seq), generator=g) * 0.3
    rollout[2] = float("nan")  # a token the engine could not score
    w, m = rollout_is_weights(old, rollout, seq, mode, max_ratio=1.5, min_ratio=floor)
    ref_w, ref_masked, ref_diff = reference(old, rollout, seq, mode, 1.5, floor)
    torch.testing.assert_close(w, torch.tensor(ref_w), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m["is_ratio"], w)
    assert m["is_masked"].tolist() == ref_masked
    torch.testing.assert_close(m["logprob_abs_diff"], torch.tensor(ref_diff), rtol=1e-5, atol=1e-6)
    if mode != "none":
        assert 0 < sum(ref_masked) < len(ref_masked)  # the cap binds on some tokens, not all


def test_hand_derived_values() -> None:
    """Sequence 0: log-ratios (old - rollout) 0.2 and 0.9; sequence 1: one token, -0.3. Cap 2.
    token: exp(0.2) = 1.2214, exp(0.9) = 2.4596 > 2 -> 2 (truncate) / 0 (mask), exp(-0.3) = 0.7408.
    sequence: exp(1.1) = 3.0042 > 2 -> both tokens of sequence 0 at 2 or 0; sequence 1 exp(-0.3)."""
    old = torch.tensor([-1.0, -0.5, -2.0])
    rollout = torch.tensor([-1.2, -1.4, -1.7])
    seq = torch.tensor([0, 0, 1])
    e02, em03 = math.exp(0.2), math.exp(-0.3)
    expect = {"token_truncate": [e02, 2.0, em03], "token_mask": [e02, 0.0, em03],
              "sequence_truncate": [2.0, 2.0, em03], "sequence_mask": [0.0, 0.0, em03], "none": [1.0, 1.0, 1.0]}
    masked = {"token_truncate": [0, 1, 0], "token_mask": [0, 1, 0], "sequence_truncate": [1, 1, 0],
              "sequence_mask": [1, 1, 0], "none": [0, 0, 0]}
    for mode, want in expect.items():
        w, m = rollout_is_weights(old, rollout, seq, mode, max_ratio=2.0)
        torch.testing.assert_close(w, torch.tensor(want), rtol=1e-6, atol=1e-6)
        assert m["is_masked"].tolist() == masked[mode]
        torch.testing.assert_close(m["logprob_abs_diff"], torch.tensor([0.2, 0.9, 0.3]), rtol=1e-5, atol=1e-6)
    # a floor: ratios below it are raised to it (truncate) or masked
    assert rollout_is_weights(old, rollout, seq, "token_mask", 2.0, min_ratio=0.8)[0].tolist()[2] == 0.0
    assert rollout_is_weights(old, rollout, seq, "token_truncate", 2.0, min_ratio=0.8)[0].tolist()[2] == \
        pytest.approx(0.8)


def test_no_mismatch_is_weight_one_and_edge_cases() -> None:
    lp = -torch.rand(9) * 2
    seq = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    for mode in ROLLOUT_IS_MODES:
        w, m = rollout_is_weights(lp, lp.clone(), seq, mode, max_ratio=3.0)
        assert torch.equal(w, torch.ones(9)) and m["is_masked"].sum() == 0 and m["logprob_abs_diff"].max() == 0
        # the engine scored nothing: no mismatch measured, weight 1
        w, m = rollout_is_weights(lp, torch.full_like(lp, float("nan")), seq, mode, max_ratio=3.0)
        assert torch.equal(w, torch.ones(9)) and m["logprob_abs_diff"].numel() == 0
        w, m = rollout_is_weights(lp[:0], lp[:0], seq[:0], mode, max_ratio=3.0)  # no tokens
        assert w.numel() == 0 and m["is_ratio"].numel() == 0
    # exp(200) overflows float32: the cap still holds (truncate) and the sequence is masked (mask)
    long = (torch.zeros(200), torch.full((200,), -1.0), torch.zeros(200, dtype=torch.long))
    assert torch.equal(rollout_is_weights(*long, "sequence_truncate", max_ratio=3.0)[0], torch.full((200,), 3.0))
    assert torch.equal(rollout_is_weights(*long, "sequence_mask", max_ratio=3.0)[0], torch.zeros(200))
    with pytest.raises(ValueError, match="unknown rollout correction 'tis'"):
        rollout_is_weights(lp, lp, seq, "tis", 3.0)
