"""VPSchedule against closed forms (``aepo-math.md`` §3) written independently with ``math``."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
import torch

from torchrl_aepo.diffusion import VPSchedule

BETA_0, BETA_1 = 0.1, 20.0

# aepo-math.md §3 reference table, as printed: t, alpha_t, sigma_t, sigma_t^2/alpha_t^2, lambda_t.
TABLE = [
    ("0.001", "0.99995", "0.0105", "1.1e-4", "4.56"),
    ("0.1", "0.9467", "0.3221", "0.116", "1.08"),
    ("0.5", "0.2812", "0.9597", "11.65", "-1.23"),
    ("0.9", "0.0170", "0.9999", "3.46e3", "-4.08"),
    ("1.0", "0.00657", "1.0000", "2.3e4", "-5.03"),
]


def closed_form(t: float) -> tuple[float, float, float, float]:
    """``(alpha, sigma, sigma^2/alpha^2, lambda)`` straight from the formulas, in float64."""
    alpha = math.exp(-(BETA_1 - BETA_0) * t * t / 4.0 - BETA_0 * t / 2.0)
    sigma = math.sqrt(1.0 - alpha * alpha)
    return alpha, sigma, sigma**2 / alpha**2, math.log(alpha / sigma)


def last_digit(printed: str) -> float:
    """One unit in the last printed digit of ``printed``.

    A full unit, not half: the table rounds lambda(0.9) = -4.0746 to -4.08 and
    lambda(1.0) = -5.02498 to -5.03.
    """
    return 10.0 ** Decimal(printed).as_tuple().exponent


@pytest.mark.parametrize("row", TABLE, ids=[row[0] for row in TABLE])
def test_table_values(row: tuple[str, ...]) -> None:
    schedule = VPSchedule()
    t = float(row[0])
    tt = torch.tensor([t], dtype=torch.float64)
    got = (
        schedule.alpha(tt).item(),
        schedule.sigma(tt).item(),
        schedule.posterior_variance_factor(tt).item(),
        schedule.log_snr(tt).item(),
    )
    names = ("alpha", "sigma", "sigma^2/alpha^2", "lambda")
    for name, value, exact, printed in zip(names, got, closed_form(t), row[1:], strict=True):
        assert value == pytest.approx(exact, rel=1e-9), name
        assert abs(value - float(printed)) <= last_digit(printed), f"{name}({t}) = {value}"
    alpha, sigma = schedule.alpha_sigma(tt)
    assert (alpha.item(), sigma.item()) == got[:2]


def test_float32_accuracy_at_t_min() -> None:
    # sigma_t^2 = 1 - alpha_t^2 ~ 1e-4 at t_min: a naive float32 1 - alpha^2 loses ~3 digits.
    schedule = VPSchedule()
    t = torch.tensor([1e-3, 1e-2])
    for got, index in ((schedule.sigma(t), 1), (schedule.log_snr(t), 3)):
        exact = torch.tensor([closed_form(v)[index] for v in t.tolist()], dtype=torch.float64)
        torch.testing.assert_close(got.double(), exact, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_snr_inverse_round_trip(dtype: torch.dtype) -> None:
    schedule = VPSchedule()
    t = torch.cat([torch.tensor([1e-3, 1.0]), torch.linspace(1e-3, 1.0, 257)]).to(dtype)
    back = schedule.time_from_log_snr(schedule.log_snr(t))
    assert back.dtype == dtype
    rtol = 2e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(back, t, rtol=rtol, atol=0.0)
    lam = torch.linspace(-6.0, 6.0, 101, dtype=dtype)
    rtol = 2e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(
        schedule.log_snr(schedule.time_from_log_snr(lam)), lam, rtol=rtol, atol=1e-6
    )


@pytest.mark.parametrize("kind", ["time_uniform", "logSNR"])
@pytest.mark.parametrize(("t_start", "t_end"), [(None, None), (0.8, 0.01)])
def test_time_grid(kind: str, t_start: float | None, t_end: float | None) -> None:
    schedule = VPSchedule()
    grid = schedule.time_grid(12, kind=kind, t_start=t_start, t_end=t_end)
    assert grid.shape == (13,) and grid.dtype == torch.float64
    assert grid[0].item() == (1.0 if t_start is None else t_start)
    assert grid[-1].item() == (1e-3 if t_end is None else t_end)
    assert bool((grid[1:] < grid[:-1]).all())
    spacing = grid if kind == "time_uniform" else schedule.log_snr(grid)
    diffs = spacing.diff()
    torch.testing.assert_close(diffs, diffs.mean().expand_as(diffs), rtol=1e-9, atol=1e-12)


def test_time_grid_rejects_bad_arguments() -> None:
    schedule = VPSchedule()
    with pytest.raises(ValueError, match="num_steps"):
        schedule.time_grid(0)
    with pytest.raises(ValueError, match="t_start > t_end"):
        schedule.time_grid(4, t_start=0.1, t_end=0.5)
    with pytest.raises(ValueError, match="kind"):
        schedule.time_grid(4, kind="quadratic")


def test_sample_time_range() -> None:
    schedule = VPSchedule()
    t = schedule.sample_time((4096, 1), generator=torch.Generator().manual_seed(0))
    assert t.shape == (4096, 1) and t.dtype == torch.float32
    assert t.min().item() >= schedule.t_min and t.max().item() <= schedule.t_max
    assert t.min().item() < 0.01 and t.max().item() > 0.99  # covers the whole range


def test_add_noise_matches_kernel() -> None:
    schedule = VPSchedule()
    gen = torch.Generator().manual_seed(1)
    a0, noise = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    t = schedule.sample_time((5, 1), generator=gen)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    torch.testing.assert_close(schedule.add_noise(a0, t, noise), alpha * a0 + sigma * noise)
