"""aggregate / masked_mean: hand values, empty masks, micro-batches with a global normalizer."""

import pytest
import torch

from sgpo.core import aggregate, masked_mean

PER_TOK = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_modes_by_hand():
    # token-mean: (1 + 2 + 4) / 3 tokens = 7/3
    torch.testing.assert_close(aggregate(PER_TOK, MASK), torch.tensor(7 / 3), rtol=0, atol=1e-6)
    # seq-mean-token-mean: ((1 + 2) / 2 + 4 / 1) / 2 sequences = (1.5 + 4) / 2 = 2.75
    assert float(aggregate(PER_TOK, MASK, "seq-mean-token-mean")) == 2.75
    # seq-mean-token-sum: (3 + 4) / 2 = 3.5
    assert float(aggregate(PER_TOK, MASK, "seq-mean-token-sum")) == 3.5
    # explicit normalizer: 7 / 10
    torch.testing.assert_close(aggregate(PER_TOK, MASK, normalizer=10.0), torch.tensor(0.7), rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(PER_TOK, MASK, "mean")


def test_empty_masks_give_zero():
    zeros = torch.zeros(2, 3)
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
        assert float(aggregate(PER_TOK, zeros, mode)) == 0.0
    assert float(masked_mean(PER_TOK, zeros)) == 0.0
    # row 0: (1 + 2) / 2 = 1.5; row 1 empty -> 0 (not NaN)
    assert torch.equal(masked_mean(PER_TOK, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]), dim=1),
                       torch.tensor([1.5, 0.0]))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_micro_batches_with_global_normalizer_match_whole_batch(mode):
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(6, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    mask = (torch.rand(6, 5, generator=gen) > 0.4).double()
    mask[2] = 0.0  # an empty sequence
    per_tok = lambda rows: theta[rows].sin() ** 2  # noqa: E731
    whole = aggregate(per_tok(slice(0, 6)), mask, mode)
    (g_whole,) = torch.autograd.grad(whole, theta)
    norm = mask.sum() if mode == "token-mean" else (mask.sum(1) > 0).sum().double()
    parts = [aggregate(per_tok(sl), mask[sl], mode, normalizer=norm) for sl in (slice(0, 2), slice(2, 5), slice(5, 6))]
    split = sum(parts)
    (g_split,) = torch.autograd.grad(split, theta)
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_split, g_whole, rtol=0, atol=1e-12)
