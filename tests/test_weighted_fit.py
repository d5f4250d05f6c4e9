"""studies.locomotion.weighted_fit: the weighted squared error of a point prediction."""

import pytest
import torch

from studies.locomotion.weighted_fit import fit_errors


def test_fit_errors_by_hand_and_the_weighted_mean_minimises_it():
    action = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    prediction = torch.zeros(3, 2)
    weights = torch.tensor([1.0, 0.0, 3.0])
    out = fit_errors(prediction, action, weights)
    assert out["weighted_mse"] == pytest.approx((1 * 1 + 3 * 4) / 4)
    assert out["mse"] == pytest.approx(5 / 3)
    # one state, many actions: the weighted mean scores lower than the plain mean
    torch.manual_seed(0)
    actions = torch.randn(500, 1)
    w = torch.exp(2 * actions.squeeze(-1))
    weighted_mean = (w[:, None] * actions).sum(0) / w.sum()
    at = lambda p: fit_errors(p.expand_as(actions), actions, w)["weighted_mse"]  # noqa: E731
    assert at(weighted_mean) < at(actions.mean(0))
    assert at(weighted_mean) <= min(at(weighted_mean + d) for d in (-0.01, 0.01))


def test_fit_errors_refuses_bad_shapes_and_weights():
    with pytest.raises(ValueError, match="shapes"):
        fit_errors(torch.zeros(3, 2), torch.zeros(3, 1), torch.ones(3))
    with pytest.raises(ValueError, match="not all 0"):
        fit_errors(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3))
