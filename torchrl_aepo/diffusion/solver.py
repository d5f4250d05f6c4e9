r"""DPM-Solver and DPM-Solver++ for the VP probability-flow ODE (``aepo-math.md`` §10).

The solver integrates the probability-flow ODE from ``t_start`` (default ``t_max = 1``) down
to ``t_end`` (default ``t_min = 1e-3``) with any noise predictor ``eps(x, t)`` (``+eps``
convention: ``x0_hat = (x - sigma_t eps) / alpha_t``). In the half log-SNR
``lambda_t = log(alpha_t / sigma_t)`` the ODE has an exactly solvable linear part; with
``h = lambda_t - lambda_s > 0`` for a step from ``s`` to ``t < s``:

.. math::

    \text{noise prediction (DPM-Solver):}\quad
    x_t = \frac{\alpha_t}{\alpha_s} x_s
          - \sigma_t \int_0^h e^{h - u}\, \epsilon(\lambda_s + u)\, du,

    \text{data prediction (DPM-Solver++):}\quad
    x_t = \frac{\sigma_t}{\sigma_s} x_s
          + \alpha_t \int_0^h e^{u - h}\, \hat x_0(\lambda_s + u)\, du.

Expanding the model output ``m`` (``eps`` or ``x0_hat``) in a Taylor series in ``lambda`` and
integrating exactly gives ``x_t = A x_s + sum_k C_k m^{(k)}(lambda_s)`` with

* noise prediction: ``A = alpha_t / alpha_s``, ``C_k = -sigma_t e_k(h)``,
* data prediction: ``A = sigma_t / sigma_s``, ``C_k = -alpha_t (-1)^k e_k(-h)``,

where ``e_k(z) = e^z - sum_{j<=k} z^j / j!`` is the remainder of the exponential series
(``e_k(z) = z^{k+1} phi_{k+1}(z)`` with the papers' phi functions); e.g. ``C_0 = -sigma_t (e^h - 1)``
for noise and ``C_0 = alpha_t (1 - e^{-h})`` for data prediction. The solvers differ in how the
``lambda``-derivatives are estimated (``m_a`` is the model output at time ``a``):

* order 1 (DDIM): ``x_t = A x_s + C_0 m_s``.
* singlestep order 2 (DPM-Solver-2 / DPM-Solver++(2S), ``r1 = 1/2``):
  ``s1 = t(lambda_s + r1 h)``, ``u = A_{s->s1} x_s + C_0^{s->s1} m_s``,
  ``x_t = A x_s + C_0 m_s + C_0 / (2 r1) (m_{s1}(u) - m_s)``.
* singlestep order 3 (DPM-Solver-3 / DPM-Solver++(3S), ``r1 = 1/3``, ``r2 = 2/3``):
  ``u1`` as above at ``s1``;
  ``u2 = A_{s->s2} x_s + C_0^{s->s2} m_s + C_1^{s->s2} / (r1 h) (m_{s1}(u1) - m_s)``;
  ``x_t = A x_s + C_0 m_s + C_1 / (r2 h) (m_{s2}(u2) - m_s)``.
* multistep order 2 (DPM-Solver(++)-2M), with the previous step ``h_1`` and ``r = h_1 / h``:
  ``x_t = A x_s + C_0 ((1 + 1/(2r)) m_s - 1/(2r) m_{prev})``.
* multistep order 3: the quadratic through the last three outputs (Newton divided
  differences in ``lambda``) is integrated exactly: ``x_t = A x_s + C_0 m_s + C_1 m' + C_2 m''``.

Singlestep solvers split ``steps`` evaluations into outer steps of orders as in the DPM-Solver
paper (order 2: ``[2, ..., 2(, 1)]``; order 3: ``[3, ..., 3, 2, 1]``, ``[3, ..., 3, 1]`` or
``[3, ..., 3, 2]`` for ``steps % 3 == 0, 1, 2``). With ``skip_type="time_uniform"`` the outer
grid is ``linspace(t_start, t_end, steps + 1)`` taken at the cumulative orders (QGPO's grid);
with ``"logSNR"`` it is ``K + 1`` points uniform in ``lambda``. Intermediate points are always at
``lambda_s + r h``. Multistep solvers take one evaluation per step on a ``steps + 1`` point
grid, warm up with lower orders, and (``lower_order_final``, fewer than 15 steps) also finish
with lower orders.

All per-step coefficients are computed once, in float64, at construction; sampling is a chain
of a few fused tensor operations per evaluation.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from torchrl_aepo.diffusion.schedule import VPSchedule

__all__ = ["DPMSolver"]

_ALGORITHMS = ("dpmsolver++", "dpmsolver")
_METHODS = ("singlestep", "multistep")
_SKIP_TYPES = ("time_uniform", "logSNR")
_LOWER_ORDER_FINAL_BELOW = 15


class _Linear(NamedTuple):
    """``x_coef * x + sum(coef * outputs[-lag])`` over the model-output history."""

    x_coef: float
    terms: tuple[tuple[int, float], ...]


class _Eval(NamedTuple):
    """One ``noise_fn`` call at time ``t`` on the point ``point``.

    For data prediction the stored output is ``(point - sigma eps) / alpha``; for noise
    prediction ``to_data`` is ``None`` and ``eps`` is stored.
    """

    t: float
    point: _Linear
    to_data: tuple[float, float] | None  # (1 / alpha, -sigma / alpha)


class _Step(NamedTuple):
    evals: tuple[_Eval, ...]
    update: _Linear


class _Node(NamedTuple):
    """Schedule quantities at one time, in float64."""

    t: float
    alpha: float
    sigma: float
    lam: float


def _exp_remainder(z: float, k: int) -> float:
    """``e_k(z) = exp(z) - sum_{j=0}^{k} z^j / j!``, accurate for small ``|z|`` too."""
    if abs(z) < 1.0:  # the tail of the series; 25 terms are exact to float64 precision
        return sum(z**j / math.factorial(j) for j in range(k + 1, k + 26))
    return math.exp(z) - sum(z**j / math.factorial(j) for j in range(k + 1))


def _singlestep_orders(steps: int, order: int) -> list[int]:
    """Orders of the outer steps of a singlestep solver with ``steps`` evaluations."""
    if order == 1:
        return [1] * steps
    if order == 2:
        return [2] * (steps // 2) + [1] * (steps % 2)
    k, rem = divmod(steps, 3)
    if rem == 0:
        return [3] * (k - 1) + [2, 1]
    return [3] * k + [rem]


class DPMSolver:
    """DPM-Solver / DPM-Solver++ sampler for any noise-prediction callable.

    Defaults reproduce QGPO's sampler: DPM-Solver++ (data prediction), singlestep, order 2,
    15 evaluations on the time-uniform grid from ``t = 1`` to ``t = 1e-3``, no final denoising
    and no thresholding. The update equations are in the module docstring.

    Args:
        schedule: the VP schedule of the noise model; ``VPSchedule()`` by default.
        algorithm: ``"dpmsolver++"`` (data prediction) or ``"dpmsolver"`` (noise prediction).
        order: solver order, 1, 2 or 3.
        steps: number of ``noise_fn`` evaluations per :meth:`sample` call (``>= order``).
        method: ``"singlestep"`` or ``"multistep"``.
        skip_type: ``"time_uniform"`` or ``"logSNR"`` spacing of the (outer) time grid.
        t_start: first time, defaults to ``schedule.t_max``.
        t_end: last time, defaults to ``schedule.t_min``; ``noise_fn`` is never called there.
        lower_order_final: multistep only: with fewer than 15 steps, use orders
            ``min(order, steps_left)`` at the end, which stabilises few-step sampling.

    Examples:
        >>> import torch
        >>> schedule = VPSchedule()
        >>> solver = DPMSolver(schedule)
        >>> solver.nfe
        15
        >>> def noise_fn(x, t):  # exact predictor for data N(0.5, 0.1 I)
        ...     alpha, sigma = schedule.alpha_sigma(t)
        ...     return sigma * (x - 0.5 * alpha) / (0.1 * alpha**2 + sigma**2)
        >>> x_T = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))
        >>> a_0 = solver.sample(noise_fn, x_T)
        >>> a_0.shape
        torch.Size([1000, 2])
        >>> round(a_0.mean().item(), 1)
        0.5
    """

    def __init__(
        self,
        schedule: VPSchedule | None = None,
        *,
        algorithm: str = "dpmsolver++",
        order: int = 2,
        steps: int = 15,
        method: str = "singlestep",
        skip_type: str = "time_uniform",
        t_start: float | None = None,
        t_end: float | None = None,
        lower_order_final: bool = True,
    ) -> None:
        if algorithm not in _ALGORITHMS:
            raise ValueError(f"Unknown algorithm {algorithm!r}; expected one of {_ALGORITHMS}.")
        if method not in _METHODS:
            raise ValueError(f"Unknown method {method!r}; expected one of {_METHODS}.")
        if skip_type not in _SKIP_TYPES:
            raise ValueError(f"Unknown skip_type {skip_type!r}; expected one of {_SKIP_TYPES}.")
        if isinstance(order, bool) or order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}.")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < order:
            raise ValueError(f"steps must be an integer >= order ({order}), got {steps!r}.")
        self.schedule = VPSchedule() if schedule is None else schedule
        self.algorithm = algorithm
        self.order = order
        self.steps = steps
        self.method = method
        self.skip_type = skip_type
        self.t_start = self.schedule.t_max if t_start is None else float(t_start)
        self.t_end = self.schedule.t_min if t_end is None else float(t_end)
        if not 0.0 < self.t_end < self.t_start:
            raise ValueError(
                f"DPMSolver needs 0 < t_end < t_start, got t_start={self.t_start}, "
                f"t_end={self.t_end}."
            )
        self.lower_order_final = bool(lower_order_final)
        self._data_prediction = algorithm == "dpmsolver++"
        if method == "singlestep":
            self.orders = tuple(_singlestep_orders(steps, order))
            self._steps = self._build_singlestep()
        else:
            self.orders = tuple(self._multistep_orders())
            self._steps = self._build_multistep()
        self.eval_times: tuple[float, ...] = tuple(
            ev.t for step in self._steps for ev in step.evals
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(algorithm={self.algorithm!r}, order={self.order}, "
            f"steps={self.steps}, method={self.method!r}, skip_type={self.skip_type!r}, "
            f"t_start={self.t_start}, t_end={self.t_end})"
        )

    @property
    def nfe(self) -> int:
        """Number of ``noise_fn`` evaluations per :meth:`sample` call (equals ``steps``)."""
        return len(self.eval_times)

    # ------------------------------------------------------------------ sampling
    def sample(self, noise_fn: Callable[[Tensor, Tensor], Tensor], x_T: Tensor) -> Tensor:
        """Integrate the probability-flow ODE from ``x_T`` at ``t_start`` to ``t_end``.

        Args:
            noise_fn: noise predictor ``eps(x, t)``; ``x`` is ``[*B, d]``, ``t`` is ``[*B, 1]``
                (dtype and device of ``x``, all entries equal to the current time); returns
                ``[*B, d]``. It may enable autograd internally (guidance): this method does
                not change the grad mode, the caller chooses ``no_grad``/``inference_mode``.
            x_T: initial noise ``[*B, d]`` (floating point, any batch rank).

        Returns:
            The sample at ``t_end``, ``[*B, d]``.
        """
        if not isinstance(x_T, Tensor) or not x_T.is_floating_point():
            raise ValueError("x_T must be a floating-point tensor of shape [*B, d].")
        if x_T.ndim == 0 or x_T.shape[-1] == 0:
            raise ValueError(f"x_T must have shape [*B, d] with d >= 1, got {tuple(x_T.shape)}.")
        time_shape = (*x_T.shape[:-1], 1)
        outputs: deque[Tensor] = deque(maxlen=3)
        x = x_T
        for step in self._steps:
            for ev in step.evals:
                point = _combine(x, ev.point, outputs)
                eps = noise_fn(point, x.new_full(time_shape, ev.t))
                if eps.shape != point.shape:
                    raise ValueError(
                        f"noise_fn returned shape {tuple(eps.shape)}, expected "
                        f"{tuple(point.shape)} (the shape of x)."
                    )
                if ev.to_data is not None:
                    inv_alpha, neg_sigma_over_alpha = ev.to_data
                    eps = torch.add(point * inv_alpha, eps, alpha=neg_sigma_over_alpha)
                outputs.append(eps)
            x = _combine(x, step.update, outputs)
        return x

    # ------------------------------------------------------------------ construction
    def _node(self, t: float) -> _Node:
        tt = torch.tensor(t, dtype=torch.float64)
        alpha, sigma = self.schedule.alpha_sigma(tt)
        return _Node(t, alpha.item(), sigma.item(), self.schedule.log_snr(tt).item())

    def _node_at_lambda(self, lam: float) -> _Node:
        t = self.schedule.time_from_log_snr(torch.tensor(lam, dtype=torch.float64)).item()
        return self._node(t)

    def _transfer(self, s: _Node, t: _Node) -> tuple[float, float, float, float]:
        """``(A, C_0, C_1, C_2)`` of the exact Taylor integration from ``s`` to ``t``."""
        h = t.lam - s.lam
        if self._data_prediction:
            c = [-t.alpha * (-1) ** k * _exp_remainder(-h, k) for k in range(3)]
            return t.sigma / s.sigma, c[0], c[1], c[2]
        c = [-t.sigma * _exp_remainder(h, k) for k in range(3)]
        return t.alpha / s.alpha, c[0], c[1], c[2]

    def _eval(self, node: _Node, point: _Linear) -> _Eval:
        to_data = (1.0 / node.alpha, -node.sigma / node.alpha) if self._data_prediction else None
        return _Eval(node.t, point, to_data)

    def _outer_grid(self, num_steps: int, orders: Sequence[int]) -> list[float]:
        if self.skip_type == "logSNR":
            grid = self.schedule.time_grid(
                num_steps, kind="logSNR", t_start=self.t_start, t_end=self.t_end
            )
            return grid.tolist()
        fine = self.schedule.time_grid(
            sum(orders), kind="time_uniform", t_start=self.t_start, t_end=self.t_end
        ).tolist()
        return [fine[i] for i in itertools.accumulate(orders, initial=0)]

    def _build_singlestep(self) -> tuple[_Step, ...]:
        grid = [self._node(t) for t in self._outer_grid(len(self.orders), self.orders)]
        return tuple(
            self._singlestep(s, t, order)
            for s, t, order in zip(grid[:-1], grid[1:], self.orders, strict=True)
        )

    def _singlestep(self, s: _Node, t: _Node, order: int) -> _Step:
        x_only = _Linear(1.0, ())
        a, c0, c1, _ = self._transfer(s, t)
        h = t.lam - s.lam
        if order == 1:
            return _Step((self._eval(s, x_only),), _Linear(a, ((1, c0),)))
        if order == 2:
            s1 = self._node_at_lambda(s.lam + 0.5 * h)
            r1 = (s1.lam - s.lam) / h
            a1, c0_1, _, _ = self._transfer(s, s1)
            evals = (self._eval(s, x_only), self._eval(s1, _Linear(a1, ((1, c0_1),))))
            w = c0 / (2.0 * r1)
            return _Step(evals, _Linear(a, ((2, c0 - w), (1, w))))
        s1 = self._node_at_lambda(s.lam + h / 3.0)
        s2 = self._node_at_lambda(s.lam + 2.0 * h / 3.0)
        r1, r2 = (s1.lam - s.lam) / h, (s2.lam - s.lam) / h
        a1, c0_1, _, _ = self._transfer(s, s1)
        a2, c0_2, c1_2, _ = self._transfer(s, s2)
        w2 = c1_2 / (r1 * h)  # u2 uses m' ~ (m_s1 - m_s) / (r1 h)
        w = c1 / (r2 * h)  # x_t uses m' ~ (m_s2 - m_s) / (r2 h)
        evals = (
            self._eval(s, x_only),
            self._eval(s1, _Linear(a1, ((1, c0_1),))),
            self._eval(s2, _Linear(a2, ((2, c0_2 - w2), (1, w2)))),
        )
        return _Step(evals, _Linear(a, ((3, c0 - w), (1, w))))

    def _multistep_orders(self) -> list[int]:
        steps = self.steps
        final = self.lower_order_final and steps < _LOWER_ORDER_FINAL_BELOW
        return [
            min(self.order, i, steps - i + 1) if final else min(self.order, i)
            for i in range(1, steps + 1)
        ]

    def _build_multistep(self) -> tuple[_Step, ...]:
        times = self.schedule.time_grid(
            self.steps, kind=self.skip_type, t_start=self.t_start, t_end=self.t_end
        ).tolist()
        nodes = [self._node(t) for t in times]
        built = []
        for i, order in enumerate(self.orders, start=1):
            s, t = nodes[i - 1], nodes[i]
            a, c0, c1, c2 = self._transfer(s, t)
            h = t.lam - s.lam
            if order == 1:
                terms: tuple[tuple[int, float], ...] = ((1, c0),)
            elif order == 2:
                r = (s.lam - nodes[i - 2].lam) / h
                terms = ((1, c0 * (1.0 + 0.5 / r)), (2, -c0 * 0.5 / r))
            else:
                h0 = s.lam - nodes[i - 2].lam
                h1 = nodes[i - 2].lam - nodes[i - 3].lam
                # Newton divided differences on (m_s, m_prev, m_prev2) as weight vectors.
                f01 = (1.0 / h0, -1.0 / h0, 0.0)
                f12 = (0.0, 1.0 / h1, -1.0 / h1)
                f012 = tuple((p - q) / (h0 + h1) for p, q in zip(f01, f12, strict=True))
                weights = [
                    (c0 if j == 0 else 0.0) + c1 * (f01[j] + h0 * f012[j]) + c2 * 2.0 * f012[j]
                    for j in range(3)
                ]
                terms = tuple((j + 1, w) for j, w in enumerate(weights))
            built.append(_Step((self._eval(s, _Linear(1.0, ())),), _Linear(a, terms)))
        return tuple(built)


def _combine(x: Tensor, lin: _Linear, outputs: deque[Tensor]) -> Tensor:
    """Evaluate ``lin`` on the current state ``x`` and the model-output history."""
    if not lin.terms and lin.x_coef == 1.0:
        return x
    out = x * lin.x_coef
    for lag, coef in lin.terms:
        out.add_(outputs[-lag], alpha=coef)
    return out
