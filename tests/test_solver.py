"""DPMSolver against exact oracles (``aepo-math.md`` §5.5, §10).

* Gaussian data ``a_0 ~ N(c, v I)``: the exact noise predictor is
  ``eps*(x, t) = sigma_t (x - alpha_t c) / (alpha_t^2 v + sigma_t^2)`` and the probability-flow
  ODE has the closed-form flow map ``x_t = alpha_t c + sqrt(alpha_t^2 v + sigma_t^2) z`` with
  ``z`` constant along a trajectory: a per-sample oracle for every configuration.
* A two-component Gaussian mixture (non-linear ``eps*``) against an independent RK4
  integration of the ODE in ``lambda``: checks the nominal convergence orders.

Convergence orders are measured on the logSNR grid. On the time-uniform grid the last step
spans ``lambda(t_end + dt) - lambda(t_end) ~ log(dt / t_end) / 2`` in log-SNR, which only
shrinks like ``dt`` once ``dt < t_end`` (about 1000 steps), so there the test only asks for
monotone decrease and small errors.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor

from torchrl_aepo.diffusion import DPMSolver, VPSchedule

SCHEDULE = VPSchedule()
C = (0.5, -0.3, 0.2)
V = 0.5
CONFIGS = list(
    itertools.product(("dpmsolver++", "dpmsolver"), ("singlestep", "multistep"), (1, 2, 3))
)
CONFIG_IDS = [f"{a}-{m}-{o}" for a, m, o in CONFIGS]

NoiseFn = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------- oracles
def gaussian_eps(c: Tensor, v: float = V) -> NoiseFn:
    """Exact noise predictor for data ``N(c, v I)``."""

    def noise_fn(x: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = SCHEDULE.alpha_sigma(t)
        return sigma * (x - alpha * c) / (alpha**2 * v + sigma**2)

    return noise_fn


def gaussian_flow(x_T: Tensor, c: Tensor, t_start: float = 1.0, t_end: float = 1e-3) -> Tensor:
    """Exact probability-flow map from ``t_start`` to ``t_end`` for data ``N(c, V I)``."""
    a0, s0 = SCHEDULE.alpha_sigma(torch.tensor(t_start, dtype=torch.float64))
    a1, s1 = SCHEDULE.alpha_sigma(torch.tensor(t_end, dtype=torch.float64))
    z = (x_T - a0 * c) / torch.sqrt(a0**2 * V + s0**2)
    return a1 * c + torch.sqrt(a1**2 * V + s1**2) * z


MIX_MEANS = torch.tensor([[-0.6, 0.3], [0.7, -0.2]], dtype=torch.float64)  # [K, d]
MIX_VARS = torch.tensor([0.05, 0.1], dtype=torch.float64)
MIX_WEIGHTS = torch.tensor([0.4, 0.6], dtype=torch.float64)


def mixture_eps(x: Tensor, t: Tensor) -> Tensor:
    """Exact noise predictor for the isotropic two-component mixture, ``[*B, d]``."""
    alpha, sigma = SCHEDULE.alpha_sigma(t)  # [*B, 1]
    var = alpha**2 * MIX_VARS + sigma**2  # [*B, K]
    diff = x.unsqueeze(-2) - alpha.unsqueeze(-1) * MIX_MEANS  # [*B, K, d]
    log_resp = MIX_WEIGHTS.log() - 0.5 * (diff**2).sum(-1) / var - 0.5 * x.shape[-1] * var.log()
    resp = (log_resp - log_resp.logsumexp(-1, keepdim=True)).exp()  # [*B, K]; softmax is slow here
    score = -(resp.unsqueeze(-1) * diff / var.unsqueeze(-1)).sum(-2)
    return -sigma * score


def rk4_reference(noise_fn: NoiseFn, x_T: Tensor, num_steps: int = 1000) -> Tensor:
    """Classical RK4 on ``dx/dlambda = sigma^2 x - sigma eps(x, t(lambda))``, 1 -> 1e-3."""
    lam0, lam1 = SCHEDULE.log_snr(torch.tensor([1.0, 1e-3], dtype=torch.float64)).tolist()
    h = (lam1 - lam0) / num_steps

    def f(x: Tensor, lam: float) -> Tensor:
        lam_t = torch.tensor(lam, dtype=torch.float64)
        sigma2 = torch.sigmoid(-2.0 * lam_t)
        t = SCHEDULE.time_from_log_snr(lam_t).expand(*x.shape[:-1], 1)
        return sigma2 * x - sigma2.sqrt() * noise_fn(x, t)

    x = x_T
    for i in range(num_steps):
        lam = lam0 + i * h
        k1 = f(x, lam)
        k2 = f(x + 0.5 * h * k1, lam + 0.5 * h)
        k3 = f(x + 0.5 * h * k2, lam + 0.5 * h)
        k4 = f(x + h * k3, lam + h)
        x = x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return x


def steps_for(method: str, order: int, outer: int) -> int:
    """NFE giving ``outer`` steps of one order (singlestep order 3 ends with a 2nd-order step)."""
    if method == "multistep" or order == 1:
        return outer
    return 2 * outer if order == 2 else 3 * outer - 1


def rates(errors: list[float]) -> list[float]:
    return [math.log2(a / b) for a, b in itertools.pairwise(errors)]


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    # Intra-op threads make the 20k-sample elementwise ops ~25x slower on a busy 2-core box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def x_T64() -> Tensor:
    return torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


# --------------------------------------------------------------------------- convergence
@pytest.mark.parametrize(("algorithm", "method", "order"), CONFIGS, ids=CONFIG_IDS)
def test_gaussian_oracle_convergence_order(
    algorithm: str, method: str, order: int, x_T64: Tensor
) -> None:
    c = torch.tensor(C, dtype=torch.float64)
    exact = gaussian_flow(x_T64, c)
    errors = []
    for outer in (32, 64, 128):
        solver = DPMSolver(
            algorithm=algorithm,
            method=method,
            order=order,
            steps=steps_for(method, order, outer),
            skip_type="logSNR",
        )
        errors.append((solver.sample(gaussian_eps(c), x_T64) - exact).abs().max().item())
    measured = rates(errors)
    assert min(measured) > order - 0.5, f"errors {errors}, orders {measured}"
    assert errors[-1] < {1: 0.05, 2: 1.5e-3, 3: 1e-5}[order], errors


@pytest.mark.parametrize(("algorithm", "method", "order"), CONFIGS, ids=CONFIG_IDS)
def test_gaussian_oracle_time_uniform(
    algorithm: str, method: str, order: int, x_T64: Tensor
) -> None:
    c = torch.tensor(C, dtype=torch.float64)
    exact = gaussian_flow(x_T64, c)
    errors = []
    for steps in (32, 64, 128, 256):
        solver = DPMSolver(algorithm=algorithm, method=method, order=order, steps=steps)
        errors.append((solver.sample(gaussian_eps(c), x_T64) - exact).abs().max().item())
    measured = rates(errors)
    assert min(measured) > 0.75, f"errors {errors}, orders {measured}"
    if order <= 2:
        assert measured[-1] > order - 0.5, f"errors {errors}, orders {measured}"
    assert errors[-1] < (0.03 if order == 1 else 3e-3), errors


@pytest.fixture(scope="module")
def mixture_problem() -> tuple[Tensor, Tensor]:
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return x_T, rk4_reference(mixture_eps, x_T)


@pytest.mark.parametrize(("algorithm", "method", "order"), CONFIGS, ids=CONFIG_IDS)
def test_mixture_convergence_order(
    algorithm: str, method: str, order: int, mixture_problem: tuple[Tensor, Tensor]
) -> None:
    x_T, reference = mixture_problem
    errors = []
    for outer in (64, 128, 256):
        solver = DPMSolver(
            algorithm=algorithm,
            method=method,
            order=order,
            steps=steps_for(method, order, outer),
            skip_type="logSNR",
        )
        errors.append((solver.sample(mixture_eps, x_T) - reference).abs().max().item())
    measured = rates(errors)
    assert min(measured) > order - 0.5, f"errors {errors}, orders {measured}"
    assert max(measured) < order + 0.5, f"errors {errors}, orders {measured}"


# --------------------------------------------------------------------------- distribution
@pytest.mark.parametrize(("algorithm", "method", "order"), CONFIGS, ids=CONFIG_IDS)
def test_gaussian_distribution(algorithm: str, method: str, order: int) -> None:
    # 20k float32 samples; discretisation error in the variance is below one Monte-Carlo
    # standard error at these step counts (15 NFE would give 0.42 instead of 0.5).
    n = 20_000
    x_T = torch.randn(n, 3, generator=torch.Generator().manual_seed(2))
    c = torch.tensor(C)
    steps = 500 if order == 1 else 200
    solver = DPMSolver(algorithm=algorithm, method=method, order=order, steps=steps)
    samples = solver.sample(gaussian_eps(c), x_T)
    assert samples.dtype == torch.float32
    tol_mean, tol_var = 4.0 * math.sqrt(V / n), 4.0 * V * math.sqrt(2.0 / n)
    assert (samples.mean(0) - c).abs().max().item() < tol_mean
    assert (samples.var(0) - V).abs().max().item() < tol_var


# --------------------------------------------------------------------------- QGPO default
def _alpha(t: float) -> float:
    return math.exp(-(20.0 - 0.1) * t * t / 4.0 - 0.1 * t / 2.0)


def _sigma(t: float) -> float:
    return math.sqrt(1.0 - _alpha(t) ** 2)


def _lam(t: float) -> float:
    return math.log(_alpha(t) / _sigma(t))


def _time_of(lam: float) -> float:
    c = math.log1p(math.exp(-2.0 * lam))
    return 2.0 * c / (0.1 + math.sqrt(0.1**2 + 2.0 * (20.0 - 0.1) * c))


def qgpo_times() -> list[float]:
    """Evaluation times of aepo-math §10: outer grid linspace(1, 1e-3, 16)[0, 2, ..., 14, 15]."""
    fine = [1.0 + (1e-3 - 1.0) * i / 15 for i in range(16)]
    times = []
    for k in range(7):
        s, t = fine[2 * k], fine[2 * k + 2]
        times += [s, _time_of(0.5 * (_lam(s) + _lam(t)))]
    return [*times, fine[14]]


def qgpo_reference(noise_fn: NoiseFn, x: Tensor) -> Tensor:
    """DPM-Solver++(2S) written literally from the aepo-math §10 equations."""
    fine = [1.0 + (1e-3 - 1.0) * i / 15 for i in range(16)]
    outer = [fine[i] for i in (0, 2, 4, 6, 8, 10, 12, 14, 15)]

    def x0_hat(y: Tensor, t: float) -> Tensor:
        return (y - _sigma(t) * noise_fn(y, torch.full_like(y[..., :1], t))) / _alpha(t)

    for k, (s, t) in enumerate(itertools.pairwise(outer)):
        h = _lam(t) - _lam(s)
        d0 = x0_hat(x, s)
        step = _sigma(t) / _sigma(s) * x - _alpha(t) * math.expm1(-h) * d0
        if k < 7:
            r1 = 0.5
            s1 = _time_of(_lam(s) + r1 * h)
            x_s1 = _sigma(s1) / _sigma(s) * x - _alpha(s1) * math.expm1(-r1 * h) * d0
            d1 = x0_hat(x_s1, s1)
            step = step - 0.5 / r1 * _alpha(t) * math.expm1(-h) * (d1 - d0)
        x = step
    return x


def multistep2_reference(noise_fn: NoiseFn, x: Tensor, steps: int, data: bool) -> Tensor:
    """DPM-Solver(++)-2M on the time-uniform grid, literally from the DPM-Solver++ paper (Alg. 2).

    The first step is DDIM; ``steps >= 15`` so that no lower-order final step is used.
    """
    times = [1.0 + (1e-3 - 1.0) * i / steps for i in range(steps + 1)]
    previous, h_previous = None, None
    for s, t in itertools.pairwise(times):
        h = _lam(t) - _lam(s)
        eps = noise_fn(x, torch.full_like(x[..., :1], s))
        model = (x - _sigma(s) * eps) / _alpha(s) if data else eps
        if previous is None:
            d = model
        else:
            r = h_previous / h
            d = (1.0 + 0.5 / r) * model - 0.5 / r * previous
        if data:
            x = _sigma(t) / _sigma(s) * x - _alpha(t) * math.expm1(-h) * d
        else:
            x = _alpha(t) / _alpha(s) * x - _sigma(t) * math.expm1(h) * d
        previous, h_previous = model, h
    return x


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "dpmsolver"])
def test_multistep2_matches_paper_reference(algorithm: str) -> None:
    # On smooth grids r = h_prev / h -> 1, so a wrong r-dependence would still converge at
    # 2nd order: compare with the paper's update on the (non-uniform in lambda) time grid.
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    solver = DPMSolver(algorithm=algorithm, method="multistep", steps=16)
    expected = multistep2_reference(mixture_eps, x_T, 16, data=algorithm == "dpmsolver++")
    torch.testing.assert_close(solver.sample(mixture_eps, x_T), expected, rtol=0, atol=1e-11)


def test_default_is_qgpo_grid() -> None:
    solver = DPMSolver()
    assert solver.nfe == 15 and solver.orders == (2,) * 7 + (1,)
    seen: list[Tensor] = []

    def recording_fn(x: Tensor, t: Tensor) -> Tensor:
        assert t.shape == (*x.shape[:-1], 1) and t.dtype == x.dtype
        assert bool((t == t.flatten()[0]).all())
        seen.append(t.flatten()[0])
        return torch.zeros_like(x)

    solver.sample(recording_fn, torch.zeros(4, 2, 3, dtype=torch.float64))
    expected = torch.tensor(qgpo_times(), dtype=torch.float64)
    torch.testing.assert_close(torch.stack(seen), expected, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(torch.tensor(solver.eval_times, dtype=torch.float64), expected)
    assert min(solver.eval_times) > solver.t_end == 1e-3  # no evaluation at t_end


def test_default_matches_qgpo_reference_and_discretisation_error(x_T64: Tensor) -> None:
    c = torch.tensor(C, dtype=torch.float64)
    out = DPMSolver().sample(gaussian_eps(c), x_T64)
    torch.testing.assert_close(out, qgpo_reference(gaussian_eps(c), x_T64), rtol=0, atol=1e-12)
    # The solver is affine in x_T here (linear ODE): out = g * x_T + b * c per dimension.
    # aepo-math §10 measured a sample variance of 0.42 (vs V = 0.5) at this setting.
    zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    gain = DPMSolver().sample(gaussian_eps(zero), one).item()
    assert gain**2 == pytest.approx(0.42, abs=0.005)
    exact_gain = gaussian_flow(one, zero).item()
    assert exact_gain**2 == pytest.approx(V, rel=1e-3)
    error = (out - gaussian_flow(x_T64, c)).abs().max().item()
    assert 0.1 < error < 0.3  # ~0.18: real discretisation error, 60x that of 128 steps


# --------------------------------------------------------------------------- grids
def test_singlestep_orders() -> None:
    def orders(order: int, steps: int, **kwargs: str) -> tuple[int, ...]:
        return DPMSolver(order=order, steps=steps, **kwargs).orders

    assert orders(3, 9) == (3, 3, 2, 1)
    assert orders(3, 10) == (3, 3, 3, 1)
    assert orders(3, 11) == (3, 3, 3, 2)
    assert orders(3, 3) == (2, 1)
    assert orders(2, 8) == (2, 2, 2, 2)
    assert orders(2, 7) == (2, 2, 2, 1)
    assert orders(1, 4) == (1, 1, 1, 1)
    assert orders(3, 20, method="multistep") == (1, 2) + (3,) * 18
    assert orders(3, 6, method="multistep") == (1, 2, 3, 3, 2, 1)
    assert orders(2, 5, method="multistep") == (1, 2, 2, 2, 1)
    solver = DPMSolver(order=3, steps=6, method="multistep", lower_order_final=False)
    assert solver.orders == (1, 2, 3, 3, 3, 3)


@pytest.mark.parametrize(("order", "steps"), [(2, 8), (3, 11)])
def test_singlestep_logsnr_grid_is_lambda_uniform(order: int, steps: int) -> None:
    # With K outer steps uniform in lambda and intermediate points at lambda_s + r h
    # (r = 1/2, or 1/3 and 2/3), the evaluation times are uniform in lambda too.
    solver = DPMSolver(order=order, steps=steps, skip_type="logSNR")
    times = torch.tensor([*solver.eval_times, solver.t_end], dtype=torch.float64)
    assert times[0].item() == 1.0 and len(times) == steps + 1
    if order == 3:  # the last outer step is 2nd order: its midpoint breaks the 1/3 pattern
        times = times[:-2]
    gaps = SCHEDULE.log_snr(times).diff()
    torch.testing.assert_close(gaps, gaps.mean().expand_as(gaps), rtol=1e-9, atol=0.0)


@pytest.mark.parametrize("skip_type", ["time_uniform", "logSNR"])
def test_multistep_evaluates_on_the_grid(skip_type: str) -> None:
    solver = DPMSolver(method="multistep", steps=10, skip_type=skip_type, t_start=0.9, t_end=0.01)
    grid = SCHEDULE.time_grid(10, kind=skip_type, t_start=0.9, t_end=0.01)
    assert solver.eval_times == tuple(grid[:-1].tolist())


# --------------------------------------------------------------------------- interface
@pytest.mark.parametrize(
    ("method", "order"), [("singlestep", 2), ("singlestep", 3), ("multistep", 3)]
)
def test_batch_shapes_match_flattened(method: str, order: int) -> None:
    solver = DPMSolver(method=method, order=order, steps=12)
    x_T = torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    nested = solver.sample(mixture_eps, x_T)
    flat = solver.sample(mixture_eps, x_T.reshape(15, 2))
    assert nested.shape == (3, 5, 2)
    torch.testing.assert_close(nested.reshape(15, 2), flat, rtol=1e-14, atol=1e-14)
    single = solver.sample(mixture_eps, x_T[1, 2])  # no batch dimension at all
    torch.testing.assert_close(single, nested[1, 2], rtol=1e-14, atol=1e-14)


def test_autograd_inside_noise_fn_under_no_grad() -> None:
    # The guided actor computes gradients inside noise_fn while sampling under no_grad.
    c = torch.tensor(C, dtype=torch.float64)

    def autograd_eps(x: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = SCHEDULE.alpha_sigma(t)
        with torch.enable_grad():
            y = x.detach().requires_grad_(True)
            log_p = -0.5 * ((y - alpha * c) ** 2 / (alpha**2 * V + sigma**2)).sum()
            (score,) = torch.autograd.grad(log_p, y)
        return -sigma * score

    x_T = torch.randn(8, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x_T_copy = x_T.clone()
    with torch.no_grad():
        out = DPMSolver().sample(autograd_eps, x_T)
    torch.testing.assert_close(out, DPMSolver().sample(gaussian_eps(c), x_T))
    assert torch.equal(x_T, x_T_copy)  # the input is never modified in place


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"algorithm": "ddim"}, "algorithm"),
        ({"method": "adaptive"}, "method"),
        ({"skip_type": "quadratic"}, "skip_type"),
        ({"order": 4}, "order"),
        ({"order": 0}, "order"),
        ({"order": 2, "steps": 1}, "steps"),
        ({"order": 3, "steps": 2, "method": "multistep"}, "steps"),
        ({"steps": 7.5}, "steps"),
        ({"t_start": 1e-3, "t_end": 0.5}, "t_end < t_start"),
        ({"t_end": 0.0}, "t_end < t_start"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DPMSolver(**kwargs)


def test_invalid_inputs() -> None:
    solver = DPMSolver(steps=4)

    def noise_fn(x: Tensor, t: Tensor) -> Tensor:
        return x

    for bad in (torch.tensor(1.0), torch.zeros(4, 0), torch.zeros(4, 3, dtype=torch.long)):
        with pytest.raises(ValueError, match="x_T"):
            solver.sample(noise_fn, bad)
    with pytest.raises(ValueError, match="noise_fn returned shape"):
        solver.sample(lambda x, t: x[..., :1], torch.zeros(4, 3))
