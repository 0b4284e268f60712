"""instance_weights and update_competence, every mode by hand."""

import pytest
import torch

from sgpo.core import instance_weights, update_competence

P_AUTO = torch.tensor([0.25, 0.5, 1.0, 0.0])
P_GUIDED = torch.tensor([0.75, 0.25, 1.0, 0.0])


def test_marginal_by_hand():
    # clip(p_g - p_a, 0, 1) = clip([0.5, -0.25, 0, 0]) = [0.5, 0, 0, 0]
    assert torch.equal(instance_weights(P_AUTO, P_GUIDED, "marginal"), torch.tensor([0.5, 0.0, 0.0, 0.0]))


def test_need_by_hand():
    # (1 - p_a) * 1[p_g > 0] = [0.75 * 1, 0.5 * 1, 0 * 1, 1 * 0]
    assert torch.equal(instance_weights(P_AUTO, P_GUIDED, "need"), torch.tensor([0.75, 0.5, 0.0, 0.0]))


def test_competence_by_hand():
    c = torch.tensor([0.5, 0.0, 0.2, 0.0])
    # relative = clip((p_g - p_a) / (p_g + eps)) = [0.5 / 0.75, clip(-1), 0 / 1, 0 / eps] = [2/3, 0, 0, 0]
    # times (1 - c) = [2/3 * 0.5, 0, 0, 0]
    w = instance_weights(P_AUTO, P_GUIDED, "competence", competence=c, eps=1e-6)
    torch.testing.assert_close(w, torch.tensor([0.5 / (0.75 + 1e-6) * 0.5, 0.0, 0.0, 0.0]), rtol=0, atol=1e-7)
    assert not w.isnan().any()


def test_constant_and_errors():
    assert torch.equal(instance_weights(P_AUTO, P_GUIDED, "constant"), torch.ones(4))
    with pytest.raises(ValueError, match="marginal.*need.*competence.*constant"):
        instance_weights(P_AUTO, P_GUIDED, "benefit")
    with pytest.raises(ValueError, match="competence"):
        instance_weights(P_AUTO, P_GUIDED, "competence")


def test_update_competence():
    p = torch.tensor([1.0, 0.0])
    assert torch.equal(update_competence(None, p, 0.9), p)  # first observation initialises
    # 0.9 * 0.5 + 0.1 * 1 = 0.55 ; 0.9 * 0 + 0.1 * 0 = 0
    torch.testing.assert_close(update_competence(torch.tensor([0.5, 0.0]), p, 0.9), torch.tensor([0.55, 0.0]),
                               rtol=0, atol=1e-7)
    with pytest.raises(ValueError):
        update_competence(None, p, 1.5)
