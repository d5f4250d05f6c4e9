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

where ``e_k(z) = e^z - sum_{j<=k} z^j / j! = z^{k+1} phi_{k+1}(z)`` (the papers' phi
functions); e.g. ``C_0 = -sigma_t (e^h - 1)`` for noise and ``C_0 = alpha_t (1 - e^{-h})`` for
data prediction. The solvers differ in how the ``lambda``-derivatives are estimated (``m_a``
is the model output at time ``a``):

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
import operator
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

# Construction works with linear forms over symbolic registers: ("x", k) is the state after k
# outer steps, ("e", j) the raw output of the j-th noise_fn evaluation and ("m", j) its model
# output in the solver's parameterisation (eps, or x0_hat = (point_j - sigma eps_j) / alpha).
_Key = tuple[str, int]
_Form = dict[_Key, float]


class _Node(NamedTuple):
    """Schedule quantities at one time, in float64."""

    t: float
    alpha: float
    sigma: float
    lam: float


class _Linear(NamedTuple):
    """``sum(coef * register)`` with registers addressed relative to the current position.

    Each term is ``(is_eps, index, coef)``: ``states[index]`` (``-1`` is the current state)
    or ``outputs[index]`` (``-1`` is the latest ``noise_fn`` output).
    """

    terms: tuple[tuple[bool, int, float], ...]


class _Eval(NamedTuple):
    """One ``noise_fn`` call at time ``t`` on the point ``point``."""

    t: float
    point: _Linear


class _Step(NamedTuple):
    evals: tuple[_Eval, ...]
    update: _Linear


class _SymbolicStep(NamedTuple):
    evals: list[tuple[_Node, _Form]]
    update: _Form


def _exp_remainder(z: float, k: int) -> float:
    """``e_k(z) = exp(z) - sum_{j=0}^{k} z^j / j!``, accurate for small ``|z|`` too."""
    if abs(z) < 1.0:  # the tail of the series; 25 terms are exact to float64 precision
        return sum(z**j / math.factorial(j) for j in range(k + 1, k + 26))
    return math.exp(z) - sum(z**j / math.factorial(j) for j in range(k + 1))


def _as_int(value: object) -> int | None:
    """``value`` as an ``int`` if it is an integer (not a bool or a float), else ``None``."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


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

    Attributes:
        orders: order of each outer step, e.g. ``(2, 2, 2, 2, 2, 2, 2, 1)`` by default.
        eval_times: the ``nfe`` times at which :meth:`sample` calls ``noise_fn``, in order.

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
        if _as_int(order) not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}.")
        if _as_int(steps) is None or steps < order:
            raise ValueError(f"steps must be an integer >= order ({order}), got {steps!r}.")
        order, steps = int(order), int(steps)
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
            self.orders: tuple[int, ...] = tuple(_singlestep_orders(steps, order))
            symbolic = self._build_singlestep()
        else:
            self.orders = tuple(self._multistep_orders())
            symbolic = self._build_multistep()
        self._steps = self._lower(symbolic)
        self._history = _history_lengths(self._steps)
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
        states: deque[Tensor] = deque([x_T], maxlen=self._history[0])
        outputs: deque[Tensor] = deque(maxlen=self._history[1])
        for step in self._steps:
            for ev in step.evals:
                point = _combine(ev.point, states, outputs)
                eps = noise_fn(point, point.new_full(time_shape, ev.t))
                if eps.shape != point.shape:
                    raise ValueError(
                        f"noise_fn returned shape {tuple(eps.shape)}, expected "
                        f"{tuple(point.shape)} (the shape of x)."
                    )
                outputs.append(eps)
            states.append(_combine(step.update, states, outputs))
        return states[-1]

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

    def _outer_grid(self, orders: Sequence[int]) -> list[float]:
        if self.skip_type == "logSNR":
            grid = self.schedule.time_grid(
                len(orders), kind="logSNR", t_start=self.t_start, t_end=self.t_end
            )
            return grid.tolist()
        fine = self.schedule.time_grid(
            sum(orders), kind="time_uniform", t_start=self.t_start, t_end=self.t_end
        ).tolist()
        return [fine[i] for i in itertools.accumulate(orders, initial=0)]

    def _build_singlestep(self) -> list[_SymbolicStep]:
        grid = [self._node(t) for t in self._outer_grid(self.orders)]
        steps, first_eval = [], 0
        for k, order in enumerate(self.orders):
            steps.append(self._singlestep(grid[k], grid[k + 1], order, k, first_eval))
            first_eval += order
        return steps

    def _singlestep(self, s: _Node, t: _Node, order: int, k: int, j: int) -> _SymbolicStep:
        """Step ``k`` from ``s`` to ``t``; its evaluations are numbered ``j, j + 1, ...``."""
        x, m0, m1, m2 = ("x", k), ("m", j), ("m", j + 1), ("m", j + 2)
        a, c0, c1, _ = self._transfer(s, t)
        h = t.lam - s.lam
        if order == 1:
            return _SymbolicStep([(s, {x: 1.0})], {x: a, m0: c0})
        if order == 2:
            s1 = self._node_at_lambda(s.lam + 0.5 * h)
            r1 = (s1.lam - s.lam) / h
            a1, c0_1, _, _ = self._transfer(s, s1)
            w = c0 / (2.0 * r1)
            return _SymbolicStep(
                [(s, {x: 1.0}), (s1, {x: a1, m0: c0_1})], {x: a, m0: c0 - w, m1: w}
            )
        s1 = self._node_at_lambda(s.lam + h / 3.0)
        s2 = self._node_at_lambda(s.lam + 2.0 * h / 3.0)
        r1, r2 = (s1.lam - s.lam) / h, (s2.lam - s.lam) / h
        a1, c0_1, _, _ = self._transfer(s, s1)
        a2, c0_2, c1_2, _ = self._transfer(s, s2)
        w2 = c1_2 / (r1 * h)  # u2 uses m' ~ (m_s1 - m_s) / (r1 h)
        w = c1 / (r2 * h)  # x_t uses m' ~ (m_s2 - m_s) / (r2 h)
        evals = [(s, {x: 1.0}), (s1, {x: a1, m0: c0_1}), (s2, {x: a2, m0: c0_2 - w2, m1: w2})]
        return _SymbolicStep(evals, {x: a, m0: c0 - w, m2: w})

    def _multistep_orders(self) -> list[int]:
        steps = self.steps
        final = self.lower_order_final and steps < _LOWER_ORDER_FINAL_BELOW
        return [
            min(self.order, i, steps - i + 1) if final else min(self.order, i)
            for i in range(1, steps + 1)
        ]

    def _build_multistep(self) -> list[_SymbolicStep]:
        times = self.schedule.time_grid(
            self.steps, kind=self.skip_type, t_start=self.t_start, t_end=self.t_end
        ).tolist()
        nodes = [self._node(t) for t in times]
        steps = []
        for k, order in enumerate(self.orders):  # step k: nodes[k] -> nodes[k + 1], eval k
            s, t = nodes[k], nodes[k + 1]
            a, c0, c1, c2 = self._transfer(s, t)
            h = t.lam - s.lam
            m0, m1, m2 = ("m", k), ("m", k - 1), ("m", k - 2)
            if order == 1:
                update = {m0: c0}
            elif order == 2:
                r = (s.lam - nodes[k - 1].lam) / h
                update = {m0: c0 * (1.0 + 0.5 / r), m1: -c0 * 0.5 / r}
            else:
                h0 = s.lam - nodes[k - 1].lam
                h1 = nodes[k - 1].lam - nodes[k - 2].lam
                # Newton divided differences in lambda as weights on (m0, m1, m2):
                # m' ~ f01 + h0 f012 and m'' ~ 2 f012.
                f01 = (1.0 / h0, -1.0 / h0, 0.0)
                f12 = (0.0, 1.0 / h1, -1.0 / h1)
                f012 = [(p - q) / (h0 + h1) for p, q in zip(f01, f12, strict=True)]
                first = [p + h0 * q for p, q in zip(f01, f012, strict=True)]
                update = {
                    key: (c0 if i == 0 else 0.0) + c1 * first[i] + 2.0 * c2 * f012[i]
                    for i, key in enumerate((m0, m1, m2))
                }
            steps.append(_SymbolicStep([(s, {("x", k): 1.0})], {("x", k): a, **update}))
        return steps

    def _lower(self, symbolic: list[_SymbolicStep]) -> tuple[_Step, ...]:
        """Rewrite every form over states and raw ``eps`` outputs, with relative indices.

        For data prediction each ``m_j = (point_j - sigma_j e_j) / alpha_j`` is expanded, so
        that sampling never forms ``x0_hat`` explicitly; all coefficient arithmetic is float64.
        """
        points: list[_Form] = []  # evaluation points over ("x", k) and ("e", j)
        nodes: list[_Node] = []

        def expand(form: _Form) -> _Form:
            out: _Form = {}
            for (kind, idx), coef in form.items():
                if kind == "m" and self._data_prediction:
                    node = nodes[idx]
                    for key, c in points[idx].items():
                        out[key] = out.get(key, 0.0) + coef * c / node.alpha
                    out[("e", idx)] = out.get(("e", idx), 0.0) - coef * node.sigma / node.alpha
                else:
                    key = ("e", idx) if kind == "m" else (kind, idx)
                    out[key] = out.get(key, 0.0) + coef
            return out

        def relative(form: _Form, k: int) -> _Linear:
            terms = [
                (kind == "e", (idx - len(points)) if kind == "e" else (idx - k - 1), coef)
                for (kind, idx), coef in form.items()
                if coef != 0.0
            ]
            return _Linear(tuple(sorted(terms, key=lambda term: term[0])))

        steps = []
        for k, step in enumerate(symbolic):
            evals = []
            for node, point in step.evals:
                expanded = expand(point)
                evals.append(_Eval(node.t, relative(expanded, k)))
                points.append(expanded)
                nodes.append(node)
            steps.append(_Step(tuple(evals), relative(expand(step.update), k)))
        return tuple(steps)


def _history_lengths(steps: Sequence[_Step]) -> tuple[int, int]:
    """How many past states and ``eps`` outputs the relative indices of ``steps`` reach."""
    depth = {False: 1, True: 1}
    for step in steps:
        for lin in (*(ev.point for ev in step.evals), step.update):
            for is_eps, index, _ in lin.terms:
                depth[is_eps] = max(depth[is_eps], -index)
    return depth[False], depth[True]


def _combine(lin: _Linear, states: deque[Tensor], outputs: deque[Tensor]) -> Tensor:
    """Evaluate a lowered linear form: one multiply and one fused ``add_`` per extra term."""
    (is_eps, index, coef), *rest = lin.terms
    first = outputs[index] if is_eps else states[index]
    if not rest and coef == 1.0:
        return first
    out = first * coef
    for is_eps, index, coef in rest:
        out.add_(outputs[index] if is_eps else states[index], alpha=coef)
    return out
