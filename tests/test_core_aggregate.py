"""The one aggregator (sgpo.core.aggregate) over packed tokens: each mode against a reference
written here (explicit loops over sequences), empty selections, micro-batches with a global
normalizer."""

import pytest
import torch

from sgpo.core import AGGREGATION_MODES, aggregate, aggregation_weights, masked_mean

# two sequences packed: seq 0 has tokens [1, 2], seq 1 has [4]; plus seq 2 with [3, 5, 7]
PER_TOK = torch.tensor([1.0, 2.0, 4.0, 3.0, 5.0, 7.0], dtype=torch.float64)
SEQ = torch.tensor([0, 0, 1, 2, 2, 2])
L = 4  # fixed length of seq-mean-token-sum


def _reference(per_tok, seq, mode, n=None, length=L):
    """The definitions, one sequence at a time."""
    groups = {}
    for v, i in zip(per_tok.tolist(), seq.tolist()):
        groups.setdefault(i, []).append(v)
    if mode == "token-mean":
        return sum(per_tok.tolist()) / (n if n is not None else len(per_tok))
    n = n if n is not None else len(groups)
    if mode == "seq-mean-token-mean":
        return sum(sum(g) / len(g) for g in groups.values()) / n
    return sum(sum(g) / length for g in groups.values()) / n


def test_modes_by_hand():
    # token-mean: 22 / 6; seq-mean-token-mean: (1.5 + 4 + 5) / 3 = 3.5; seq-mean-token-sum: (3 + 4 + 15) / (3 * 4)
    assert float(aggregate(PER_TOK, SEQ)) == pytest.approx(22 / 6)
    assert float(aggregate(PER_TOK, SEQ, "seq-mean-token-mean")) == pytest.approx(3.5)
    assert float(aggregate(PER_TOK, SEQ, "seq-mean-token-sum", fixed_length=L)) == pytest.approx(22 / 12)
    assert float(aggregate(PER_TOK, SEQ, normalizer=10.0)) == pytest.approx(2.2)
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(PER_TOK, SEQ, "mean")
    with pytest.raises(ValueError, match="fixed length"):
        aggregate(PER_TOK, SEQ, "seq-mean-token-sum")


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_every_mode_matches_the_reference_on_random_sequences(mode):
    gen = torch.Generator().manual_seed(1)
    lengths = [3, 1, 7, 2, 5]
    seq = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    per_tok = torch.randn(len(seq), dtype=torch.float64, generator=gen)
    for n in (None, 11.0):
        got = float(aggregate(per_tok, seq, mode, normalizer=n, fixed_length=L))
        assert got == pytest.approx(_reference(per_tok, seq, mode, n), rel=1e-12)


def test_empty_selections_give_zero():
    empty = torch.zeros(0, dtype=torch.float64)
    for mode in AGGREGATION_MODES:
        assert float(aggregate(empty, torch.zeros(0, dtype=torch.long), mode, fixed_length=L)) == 0.0
    assert float(masked_mean(PER_TOK, torch.zeros(6))) == 0.0
    # row 0: (1 + 2) / 2 = 1.5; row 1 empty -> 0 (not NaN)
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert torch.equal(masked_mean(x, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]), dim=1), torch.tensor([1.5, 0.0]))


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_micro_batches_with_global_normalizer_match_whole_batch(mode):
    gen = torch.Generator().manual_seed(0)
    lengths = [4, 2, 5, 1, 3, 3]
    theta = torch.randn(sum(lengths), dtype=torch.float64, generator=gen, requires_grad=True)
    seq = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    whole = aggregate(theta.sin() ** 2, seq, mode, fixed_length=L)
    (g_whole,) = torch.autograd.grad(whole, theta)
    norm = float(len(seq)) if mode == "token-mean" else float(len(lengths))
    bounds = [0, 6, 12, sum(lengths)]  # sequences 0-1, 2-3, 4-5
    parts = [aggregate(theta[a:b].sin() ** 2, seq[a:b], mode, normalizer=norm, fixed_length=L)
             for a, b in zip(bounds, bounds[1:])]
    split = sum(parts)
    (g_split,) = torch.autograd.grad(split, theta)
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_split, g_whole, rtol=0, atol=1e-12)
    a = aggregation_weights(seq, mode, norm, L, dtype=torch.float64)
    assert float(a.sum()) == pytest.approx({"token-mean": 1.0, "seq-mean-token-mean": 1.0,
                                            "seq-mean-token-sum": len(seq) / (L * len(lengths))}[mode])
