"""Proximal constraints C1, C2, C3 by hand."""

import math

import pytest
import torch

from sgpo.core import LossSettings, c2_trust_mask, clipped_teacher, distill_token_loss, psft_clip_loss

F64 = torch.float64


def test_c2_mask_by_hand():
    tau = math.log(1.28)  # 0.2469
    old = torch.full((5,), -1.0)
    teacher = torch.tensor([0.0, -2.0, 0.0, -1.0, 0.0])  # D = [+1, -1, +1, 0, +1]
    logp = torch.tensor([-0.5, -1.5, -1.5, 0.0, -0.8], requires_grad=True)  # d = [0.5, -0.5, -0.5, 1, 0.2]
    # sign(D) d = [0.5 > tau: drop, 0.5 > tau: drop, -0.5: keep, 0: keep, 0.2 <= tau: keep]
    mask = c2_trust_mask(logp, old, teacher, tau)
    assert torch.equal(mask, torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]))
    assert not mask.requires_grad


def test_psft_clip_by_hand():
    # p = q_old = [0.5, 0.5], q = [0.8, 0.2]: ratios [1.6, 0.4] -> min(., 1.28) = [1.28, 0.4]
    # loss = -(0.5 * 1.28 + 0.5 * 0.4) = -0.84; grad wrt log q: [0 (clipped), -0.5 * 0.4 = -0.2]
    half = torch.tensor([0.5, 0.5], dtype=F64).log()
    student = torch.tensor([0.8, 0.2], dtype=F64).log().requires_grad_()
    loss = psft_clip_loss(student, half, half, eps=0.28)
    torch.testing.assert_close(loss, torch.tensor(-0.84, dtype=F64), rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(loss, student)
    torch.testing.assert_close(grad, torch.tensor([0.0, -0.2], dtype=F64), rtol=0, atol=1e-12)
    # at q = q_old the value is -sum p = -1
    torch.testing.assert_close(psft_clip_loss(half, half, half, eps=0.28), torch.tensor(-1.0, dtype=F64), rtol=0, atol=1e-12)


def test_clipped_teacher_by_hand():
    # q_old = [0.5, 0.5], p = [0.9, 0.1], c = ln 1.5: ratios [1.8, 0.2] -> [1.5, 1/1.5]
    # target ∝ [0.75, 1/3] -> [0.75 / (13/12), (1/3) / (13/12)] = [9/13, 4/13]
    old = torch.tensor([0.5, 0.5], dtype=F64).log()
    p = torch.tensor([0.9, 0.1], dtype=F64).log()
    torch.testing.assert_close(clipped_teacher(p, old, math.log(1.5)).exp(),
                               torch.tensor([9 / 13, 4 / 13], dtype=F64), rtol=0, atol=1e-12)
    # a wide clip returns the teacher itself
    torch.testing.assert_close(clipped_teacher(p, old, 10.0), p, rtol=0, atol=1e-12)


def test_distill_token_loss_dispatch_and_errors():
    s = torch.tensor([0.7, 0.3], dtype=F64).log()
    p = torch.tensor([0.4, 0.6], dtype=F64).log()
    plain = distill_token_loss(s, p, LossSettings(divergence="forward", proximal="none"))
    torch.testing.assert_close(distill_token_loss(s, p, LossSettings(proximal="c2")), plain, rtol=0, atol=0)
    # forward KL: 0.4 ln(0.4/0.7) + 0.6 ln(0.6/0.3)
    torch.testing.assert_close(plain, torch.tensor(0.4 * math.log(0.4 / 0.7) + 0.6 * math.log(2.0), dtype=F64),
                               rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="old_lp"):
        distill_token_loss(s, p, LossSettings(proximal="c3"))
    with pytest.raises(ValueError, match="forward"):
        distill_token_loss(s, p, LossSettings(divergence="reverse", proximal="c1"), old_lp=s)
    with pytest.raises(ValueError, match="c2"):
        distill_token_loss(s, p, LossSettings(proximal="c4"))
