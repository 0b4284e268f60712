"""Policy losses: clipped surrogate, NLL, LUFFY shaping; hand-derived values and gradients."""

import math

import torch

from sgpo.core import clipped_policy_loss, luffy_offpolicy_loss, nll_loss


def test_clipped_surrogate_by_hand():
    # seq 0 A = +1, ratios [1.5, 0.5]; seq 1 A = -1, ratios [0.5, 1.5]; third token is masked padding
    # A=+1, r=1.5: max(-1.5, -1.28) = -1.28 (clipped high)   A=+1, r=0.5: max(-0.5, -0.8) = -0.5
    # A=-1, r=0.5: max(0.5, 0.8) = 0.8 (clipped low)          A=-1, r=1.5: max(1.5, 1.28) = 1.5
    ratios = torch.tensor([[1.5, 0.5, 1.0], [0.5, 1.5, 1.0]], dtype=torch.float64)
    old = torch.tensor([[-1.0, -2.0, -math.inf], [-0.5, -0.3, -math.inf]], dtype=torch.float64)
    logp = (old + ratios.log()).clone().requires_grad_()
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    per_tok, m = clipped_policy_loss(logp, old, torch.tensor([1.0, -1.0]), mask, 0.2, 0.28)
    expected = torch.tensor([[-1.28, -0.5, 0.0], [0.8, 1.5, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(per_tok, expected, rtol=0, atol=1e-12)
    # unclipped tokens: d(-A r)/dlogp = -A r -> -0.5 and +1.5; clipped ones and padding: 0
    (grad,) = torch.autograd.grad(per_tok.sum(), logp)
    torch.testing.assert_close(grad, torch.tensor([[0.0, -0.5, 0.0], [0.0, 1.5, 0.0]], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    assert float(m["clip_frac_low"]) == 0.25 and float(m["clip_frac_high"]) == 0.25
    torch.testing.assert_close(m["ratio_mean"], torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-12)
    assert not any(v.requires_grad for v in m.values())


def test_clipped_surrogate_all_masked_is_zero():
    logp = torch.randn(2, 3, requires_grad=True)
    per_tok, m = clipped_policy_loss(logp, logp.detach(), torch.ones(2), torch.zeros(2, 3), 0.2, 0.28)
    assert torch.equal(per_tok, torch.zeros(2, 3)) and float(m["ratio_mean"]) == 0.0


def test_nll_by_hand():
    logp = torch.tensor([[-0.5, -math.inf]], requires_grad=True)
    per_tok = nll_loss(logp, torch.tensor([[1.0, 0.0]]))
    assert torch.equal(per_tok, torch.tensor([[0.5, 0.0]]))
    (grad,) = torch.autograd.grad(per_tok.sum(), logp)
    assert torch.equal(grad, torch.tensor([[-1.0, 0.0]]))


def test_luffy_by_hand():
    # p = 0.4, gamma = 0.1: f = 0.4 / 0.5 = 0.8, loss = -A f = -2 * 0.8 = -1.6
    # d/dlogp = -A f'(p) p = -2 * (0.1 / 0.5^2) * 0.4 = -0.32
    logp = torch.tensor([[math.log(0.4), -math.inf]], dtype=torch.float64, requires_grad=True)
    per_tok = luffy_offpolicy_loss(logp, torch.tensor([2.0]), torch.tensor([[1.0, 0.0]]), gamma=0.1)
    torch.testing.assert_close(per_tok, torch.tensor([[-1.6, 0.0]], dtype=torch.float64), rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(per_tok.sum(), logp)
    torch.testing.assert_close(grad, torch.tensor([[-0.32, 0.0]], dtype=torch.float64), rtol=0, atol=1e-12)
