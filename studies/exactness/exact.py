"""Exact intermediate energies of a finite behaviour sample, by importance weighting.

For behaviour actions ``a_0^1..a_0^M`` (a large i.i.d. sample of ``mu``) the diffused
posterior ``mu(a_0 | a_t)`` is the discrete distribution with weights

.. math::

    p_i(a_t, t) = \\frac{\\mathcal N(a_t; \\alpha_t a_0^i, \\sigma_t^2 I)}
                       {\\sum_j \\mathcal N(a_t; \\alpha_t a_0^j, \\sigma_t^2 I)},

computed in log space (``log_softmax`` of ``-||a_t - alpha_t a_0^i||^2 / (2 sigma_t^2)``).
Every intermediate energy of ``aepo-math.md`` §2 and §4–6 is then an explicit function of
``a_t`` (:data:`ENERGY_KINDS`; ``Q_i = Q(a_0^i)``, ``g_i = grad Q(a_0^i)``,
``m = sum_i p_i a_0^i``):

* ``"exact"`` (Eq. 12): ``E_t = log sum_i p_i exp(beta Q_i)`` (``logsumexp``);
* ``"mse"`` (Eq. 10, regression energy): ``sum_i p_i beta Q_i = E[beta Q(a_0) | a_t]``;
* ``"dps"`` (Eq. 10): ``beta Q(m) = beta Q(E[a_0 | a_t])``;
* ``"aepo"`` (Eq. 25, the minimiser of the regression Eq. 26 with the exact posterior mean
  and the exact isotropic variance ``v(t)``, i.e. the limit of Posterior 1 and 2 with a
  perfect noise network): ``sum_i p_i [beta Q_i + beta g_i . (m - a_0^i)
  + (beta^2 / 2) v(t) ||g_i||^2]``, with
  ``v(t) = E_{a_t ~ mu_t} sum_i p_i ||a_0^i - m||^2 / d`` tabulated on a time grid.

By Jensen's inequality ``"exact" >= "mse"`` pointwise (``log E e^X >= E X``), with equality
only where ``Q`` is constant on the posterior. The exact behaviour noise prediction of the
sample, ``E[eps | a_t] = (a_t - alpha_t m) / sigma_t``, is also available
(:class:`EmpiricalNoisePredictor`), so that guided sampling can be run with everything exact
except the energy.

Examples:
    >>> import torch
    >>> from studies.exactness.toy import make_critic, sample_dataset
    >>> g = torch.Generator().manual_seed(0)
    >>> posterior = ImportanceWeightedPosterior(
    ...     sample_dataset("moons", 2000, generator=g), make_critic("bump"), beta=3.0,
    ...     generator=g)
    >>> a_t, t = torch.randn(5, 2), torch.full((5, 1), 0.3)
    >>> exact, mse = posterior.energy("exact", a_t, t), posterior.energy("mse", a_t, t)
    >>> bool((exact >= mse - 1e-5).all())  # the Jensen gap
    True
    >>> energy = ReferenceEnergy(posterior, "exact")  # an energy network, (a_t, t, s) -> [*B, 1]
    >>> energy(a_t, t, torch.zeros(5, 1)).shape
    torch.Size([5, 1])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from studies.exactness.toy import ToyCritic
from torchrl_aepo.autograd import value_and_input_gradient
from torchrl_aepo.diffusion.schedule import VPSchedule

__all__ = [
    "ENERGY_KINDS",
    "ImportanceWeightedPosterior",
    "ReferenceEnergy",
    "EmpiricalNoisePredictor",
]

ENERGY_KINDS = ("exact", "mse", "dps", "aepo")


class ImportanceWeightedPosterior:
    """Posterior ``mu(a_0 | a_t)`` of a finite behaviour sample and the energies built on it.

    Args:
        actions: behaviour sample ``[M, d]``.
        critic: the analytic critic ``Q`` (``critic.value(a) -> [*B]``).
        beta: inverse temperature.

    Keyword Args:
        schedule: the VP schedule. Defaults to ``VPSchedule()``.
        chunk_size: number of query points processed together (memory ``~ chunk_size * M * d``).
        variance_grid: number of times of the ``v(t)`` table (uniform in ``[t_min, t_max]``).
        variance_samples: Monte-Carlo points ``a_t ~ mu_t`` per time of the table.
        generator: random source of the table.
    """

    def __init__(
        self,
        actions: Tensor,
        critic: ToyCritic,
        beta: float,
        *,
        schedule: VPSchedule | None = None,
        chunk_size: int = 512,
        variance_grid: int = 32,
        variance_samples: int = 512,
        generator: torch.Generator | None = None,
    ) -> None:
        if actions.ndim != 2:
            raise ValueError(f"actions must be [M, d], got shape {tuple(actions.shape)}.")
        self.actions = actions.detach()
        self._action_sq = self.actions.pow(2).sum(-1)  # [M]
        self.critic = critic
        self.beta = float(beta)
        self.schedule = schedule if schedule is not None else VPSchedule()
        self.chunk_size = int(chunk_size)
        q, grad_q = value_and_input_gradient(critic.value, self.actions)
        self.beta_q = self.beta * q  # [M]
        self.grad_q = grad_q  # [M, d]
        self.grad_q_sq = self.grad_q.pow(2).sum(-1)  # [M]
        # E[g . a_0] terms of the AEPO limit, per sample: g_i . a_0^i
        self.grad_q_dot_action = (self.grad_q * self.actions).sum(-1)  # [M]
        self.variance_times, self.variance_table = self._variance_table(
            variance_grid, variance_samples, generator
        )

    @property
    def action_dim(self) -> int:
        """``d``."""
        return self.actions.shape[-1]

    def log_weights(self, noisy_action: Tensor, time: Tensor) -> Tensor:
        """Normalised log posterior weights ``log p_i(a_t, t)``: ``[N, d], [N, 1] -> [N, M]``.

        ``-||a_t - alpha a_0^i||^2 / (2 sigma^2)`` is expanded and its ``i``-independent term
        ``||a_t||^2`` dropped (it cancels in the normalisation), leaving one matrix product.
        """
        alpha, sigma = self.schedule.alpha_sigma(time)  # [N, 1]
        logits = torch.addmm(
            -0.5 * alpha.pow(2) * self._action_sq, noisy_action * alpha, self.actions.T
        )
        return torch.log_softmax(logits / sigma.pow(2), dim=-1)

    def posterior_mean(self, noisy_action: Tensor, time: Tensor) -> Tensor:
        """``E[a_0 | a_t]``: ``[N, d], [N, 1] -> [N, d]`` (chunked)."""
        return self._chunked(
            lambda x, t: self.log_weights(x, t).exp() @ self.actions, noisy_action, time
        )

    def noise(self, noisy_action: Tensor, time: Tensor) -> Tensor:
        """Exact noise prediction ``E[eps | a_t] = (a_t - alpha_t E[a_0|a_t]) / sigma_t`` ``[N, d]``."""
        alpha, sigma = self.schedule.alpha_sigma(time)
        return (noisy_action - alpha * self.posterior_mean(noisy_action, time)) / sigma

    def variance(self, time: Tensor) -> Tensor:
        """``v(t)``, the exact isotropic posterior variance averaged over ``a_t ~ mu_t`` (same shape as ``time``).

        Linear interpolation in the table; ``t`` outside the grid is clamped to its ends.
        """
        grid, table = self.variance_times.to(time), self.variance_table.to(time)
        t = time.clamp(grid[0], grid[-1])
        upper = torch.searchsorted(grid, t.detach().reshape(-1).contiguous()).clamp(
            1, len(grid) - 1
        )
        upper = upper.reshape(t.shape)
        lower = upper - 1
        frac = (t - grid[lower]) / (grid[upper] - grid[lower])
        return table[lower] + frac * (table[upper] - table[lower])

    def energy(self, kind: str, noisy_action: Tensor, time: Tensor) -> Tensor:
        """The intermediate energy ``kind`` of :data:`ENERGY_KINDS`: ``[N, d], [N, 1] -> [N, 1]``.

        Differentiable with respect to ``noisy_action``: autograd through the weights, except
        for ``"exact"``, whose first derivative is attached in closed form (below; the value
        is exact, second derivatives are not available).
        """
        if kind not in ENERGY_KINDS:
            raise ValueError(f"Unknown energy kind {kind!r}; expected one of {ENERGY_KINDS}.")
        return self._chunked(lambda x, t: self._energy(kind, x, t), noisy_action, time)

    def energy_gradient(self, kind: str, noisy_action: Tensor, time: Tensor) -> Tensor:
        """``grad_{a_t}`` of :meth:`energy`, ``[N, d]``, chunk by chunk (no graph is kept).

        For ``"exact"`` the closed form ``(alpha_t / sigma_t^2) (m^Q - m)``, with ``m^Q`` the
        mean of the tilted posterior ``p_i exp(beta Q_i) / sum_j p_j exp(beta Q_j)`` (since
        ``grad log p_i = alpha_t (a_0^i - m) / sigma_t^2``).
        """
        if kind == "exact":
            return self._chunked(
                lambda x, t: self._exact(x.detach(), t)[1], noisy_action.detach(), time
            )
        grads = []
        for x, t in zip(
            noisy_action.split(self.chunk_size), time.split(self.chunk_size), strict=True
        ):
            grads.append(value_and_input_gradient(lambda a, t=t: self._energy(kind, a, t), x)[1])
        return torch.cat(grads)

    def _exact(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Exact energy ``[n, 1]`` and its closed-form gradient ``[n, d]`` (no autograd)."""
        with torch.no_grad():
            log_p = self.log_weights(x, t)
            tilted = log_p + self.beta_q
            value = torch.logsumexp(tilted, dim=-1, keepdim=True)
            difference = (tilted - value).exp() - log_p.exp()  # tilted minus plain weights
            alpha, sigma = self.schedule.alpha_sigma(t)
            grad = (alpha / sigma.pow(2)) * (difference @ self.actions)
        return value, grad

    def _energy(self, kind: str, x: Tensor, t: Tensor) -> Tensor:
        if kind == "exact":
            value, grad = self._exact(x, t)
            # value, with d value / d x = grad attached for autograd (first order only)
            return value + ((x - x.detach()) * grad).sum(-1, keepdim=True)
        p = self.log_weights(x, t).exp()  # [n, M]
        if kind == "mse":
            return p @ self.beta_q.unsqueeze(-1)
        mean = p @ self.actions  # [n, d]
        if kind == "dps":
            return self.beta * self.critic.value(mean).unsqueeze(-1)
        # "aepo": E_p[beta Q_i + beta g_i . (m - a_0^i) + beta^2/2 v(t) ||g_i||^2]
        per_sample = (
            self.beta_q
            - self.beta * self.grad_q_dot_action
            + 0.5 * self.beta**2 * self.variance(t) * self.grad_q_sq
        )  # [n, M]
        mean_grad = p @ self.grad_q  # [n, d]
        return (p * per_sample).sum(-1, keepdim=True) + self.beta * (mean_grad * mean).sum(
            -1, keepdim=True
        )

    def _chunked(self, fn, noisy_action: Tensor, time: Tensor) -> Tensor:
        if noisy_action.ndim != 2 or noisy_action.shape[-1] != self.action_dim:
            raise ValueError(
                f"noisy_action must be [N, {self.action_dim}], got {tuple(noisy_action.shape)}."
            )
        if time.shape != (*noisy_action.shape[:-1], 1):
            raise ValueError(f"time must be [N, 1], got {tuple(time.shape)}.")
        return torch.cat(
            [
                fn(x, t)
                for x, t in zip(
                    noisy_action.split(self.chunk_size), time.split(self.chunk_size), strict=True
                )
            ]
        )

    @torch.no_grad()
    def _variance_table(
        self, num_times: int, num_samples: int, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        times = torch.linspace(self.schedule.t_min, self.schedule.t_max, num_times)
        values = torch.empty(num_times)
        for k, t in enumerate(times.tolist()):
            index = torch.randint(0, len(self.actions), (num_samples,), generator=generator)
            noise = torch.randn(num_samples, self.action_dim, generator=generator)
            time = torch.full((num_samples, 1), t)
            a_t = self.schedule.add_noise(self.actions[index], time, noise)
            var = self._chunked(self._posterior_trace, a_t, time)
            values[k] = var.mean() / self.action_dim
        return times, values

    def _posterior_trace(self, x: Tensor, t: Tensor) -> Tensor:
        """``tr Cov(a_0 | a_t) = sum_i p_i ||a_0^i - m||^2`` ``[n, 1]``."""
        p = self.log_weights(x, t).exp()
        mean = p @ self.actions
        second = p @ self.actions.pow(2).sum(-1, keepdim=True)
        return second - mean.pow(2).sum(-1, keepdim=True)


class ReferenceEnergy(nn.Module):
    """An importance-weighted energy as an energy network ``(a_t [N,d], t [N,1], s [N,1]) -> [N,1]``.

    Drop-in replacement of :class:`~torchrl_aepo.EnergyNetwork` for the actor (the observation
    is ignored: the toy problems are state-less).

    Args:
        posterior: the importance-weighted posterior.
        kind: one of :data:`ENERGY_KINDS`.
    """

    obs_dim = 1

    def __init__(self, posterior: ImportanceWeightedPosterior, kind: str) -> None:
        super().__init__()
        if kind not in ENERGY_KINDS:
            raise ValueError(f"Unknown energy kind {kind!r}; expected one of {ENERGY_KINDS}.")
        self.posterior = posterior
        self.kind = kind
        self.action_dim = posterior.action_dim

    def forward(self, noisy_action: Tensor, time: Tensor, observation: Tensor) -> Tensor:
        """``[N, d], [N, 1], [N, 1] -> [N, 1]``."""
        return self.posterior.energy(self.kind, noisy_action, time)


class EmpiricalNoisePredictor(nn.Module):
    """The exact noise prediction of the behaviour sample, ``(a_t, t, s) -> E[eps | a_t]`` ``[N, d]``."""

    obs_dim = 1

    def __init__(self, posterior: ImportanceWeightedPosterior) -> None:
        super().__init__()
        self.posterior = posterior
        self.action_dim = posterior.action_dim

    def forward(self, noisy_action: Tensor, time: Tensor, observation: Tensor) -> Tensor:
        """``[N, d], [N, 1], [N, 1] -> [N, d]``."""
        return self.posterior.noise(noisy_action, time)
