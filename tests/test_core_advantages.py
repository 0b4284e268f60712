"""group_advantages: hand-derived values, zero-variance groups, looped reference, errors."""

import math
import statistics

import pytest
import torch

from sgpo.core import group_advantages

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # two groups of 4, the second flat


def test_group_scale_by_hand():
    # group 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = sqrt(1/3); A = ±0.5 / sqrt(1/3) = ±sqrt(3)/2
    # group 2: all equal -> exactly 0
    adv = group_advantages(REWARDS, 4, scale="group", eps=0.0)
    h = math.sqrt(3) / 2
    torch.testing.assert_close(adv, torch.tensor([h, -h, -h, h, 0.0, 0.0, 0.0, 0.0]), rtol=0, atol=1e-6)
    assert torch.equal(adv[4:], torch.zeros(4))


def test_batch_scale_by_hand():
    # batch mean 0.75; unbiased var = (2 * 0.75^2 + 6 * 0.25^2) / 7 = 1.5 / 7; A = ±0.5 / sqrt(1.5 / 7) = ±1.0801234
    adv = group_advantages(REWARDS, 4, scale="batch", eps=0.0)
    a = 0.5 / math.sqrt(1.5 / 7)
    torch.testing.assert_close(adv, torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0]), rtol=0, atol=1e-6)


def test_none_scale_is_centred_reward():
    adv = group_advantages(REWARDS, 4, scale="none")
    assert torch.equal(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]))


def test_zero_variance_is_exactly_zero_even_with_rounding():
    r = torch.full((8,), 0.1)  # mean of 0.1s may round; the advantage must still be exactly 0
    for scale in ("group", "batch", "none"):
        assert torch.equal(group_advantages(r, 4, scale=scale), torch.zeros(8))
    assert torch.equal(group_advantages(torch.tensor([1.0, 0.0]), 1), torch.zeros(2))  # G = 1: undefined std


def _looped(rewards: list[float], g: int, eps: float) -> list[float]:
    out = []
    for start in range(0, len(rewards), g):
        group = rewards[start:start + g]
        mu, sd = statistics.mean(group), statistics.stdev(group)
        out += [0.0 if sd == 0 else (r - mu) / (sd + eps) for r in group]
    return out


def test_vectorised_matches_looped_reference():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 2, (48,), generator=gen).double()
    rewards[:6] = 1.0  # guarantee one flat group
    expected = torch.tensor(_looped(rewards.tolist(), 6, 1e-6), dtype=torch.float64)
    torch.testing.assert_close(group_advantages(rewards, 6), expected, rtol=0, atol=1e-12)


def test_errors():
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(7), 4)
    with pytest.raises(ValueError, match="unknown advantage scale"):
        group_advantages(torch.zeros(8), 4, scale="std")


def test_batch_scale_with_the_gathered_std_matches_the_whole_batch():
    # two processes each hold two groups; dividing by the std of all eight rewards makes each
    # process's advantages the corresponding rows of the whole batch's
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    whole = group_advantages(rewards, 2, scale="batch")
    std = rewards.std()
    parts = [group_advantages(rewards[:4], 2, scale="batch", batch_std=std),
             group_advantages(rewards[4:], 2, scale="batch", batch_std=std)]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=0)
    # the local std differs, so without the gathered one the halves would not match
    assert not torch.equal(group_advantages(rewards[:4], 2, scale="batch"), whole[:4])
