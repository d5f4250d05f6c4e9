"""Exact Gaussian oracle of ``aepo-math.md`` §5.5, shared by the loss, actor and study tests.

Data: ``a_0 | s ~ N(c, v I)`` for every state ``s`` (the state is ignored), VP kernel
``a_t = alpha_t a_0 + sigma_t eps``. With ``D_t = alpha_t^2 v + sigma_t^2``:

.. math::

    E[\\epsilon | a_t] = \\sigma_t (a_t - \\alpha_t c) / D_t, \\qquad
    \\mu_{0|t} = (\\sigma_t^2 c + \\alpha_t v a_t) / D_t, \\qquad
    \\sigma^2_{0|t} = v \\sigma_t^2 / D_t,

and for a linear critic ``Q(s, a) = q . a`` the intermediate energy (Eq. 12) is exactly

.. math::

    E_t(s, a_t) = \\beta q \\cdot \\mu_{0|t} + \\frac{\\beta^2}{2} \\sigma^2_{0|t} \\|q\\|^2 .

The modules have the signatures of the package's networks, so they can be dropped into the
losses and the actor: :class:`GaussianNoiseOracle` is a noise predictor
``(noisy_action [*B,d], time [*B,1], observation [*B,s]) -> [*B,d]`` (``+eps``),
:class:`ExactLinearEnergy` an energy network ``(...) -> [*B,1]``, :class:`LinearQ` a twin
critic ``(observation, action) -> [*B,2]`` (two identical heads). All computations follow the
dtype of the inputs (call ``.double()`` on a module for float64 buffers/parameters).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torchrl_aepo.diffusion.schedule import VPSchedule

__all__ = [
    "GaussianNoiseOracle",
    "ExactLinearEnergy",
    "LinearQ",
    "exact_posterior_variance",
    "exact_posterior_mean",
    "exact_gamma",
]


def _as_vector(x: Tensor | Sequence[float], name: str) -> Tensor:
    x = torch.as_tensor(x, dtype=torch.get_default_dtype()).detach().clone()
    if x.ndim != 1:
        raise ValueError(f"{name} must be a vector [d], got shape {tuple(x.shape)}.")
    return x


def exact_posterior_variance(schedule: VPSchedule, t: Tensor, v: float) -> Tensor:
    """``sigma^2_{0|t} = v sigma_t^2 / (alpha_t^2 v + sigma_t^2)`` (same shape as ``t``)."""
    alpha, sigma = schedule.alpha_sigma(t)
    return v * sigma**2 / (alpha**2 * v + sigma**2)


def exact_gamma(schedule: VPSchedule, t: Tensor, v: float) -> Tensor:
    """``Gamma(t) = E||E[eps|a_t]||^2 / d = sigma_t^2 / (alpha_t^2 v + sigma_t^2)``."""
    alpha, sigma = schedule.alpha_sigma(t)
    return sigma**2 / (alpha**2 * v + sigma**2)


def exact_posterior_mean(
    schedule: VPSchedule, t: Tensor, noisy_action: Tensor, c: Tensor, v: float
) -> Tensor:
    """``mu_{0|t} = (sigma_t^2 c + alpha_t v a_t) / (alpha_t^2 v + sigma_t^2)`` ``[*B, d]``.

    ``t`` is ``[*B, 1]``; this form does not divide by ``alpha_t``.
    """
    alpha, sigma = schedule.alpha_sigma(t)
    return (sigma**2 * c + alpha * v * noisy_action) / (alpha**2 * v + sigma**2)


class GaussianNoiseOracle(nn.Module):
    """Exact noise predictor ``eps*(a_t, t) = E[eps | a_t]`` for data ``N(c, v I)``.

    Args:
        c: data mean ``[d]``.
        v: data variance per dimension (scalar > 0).
        obs_dim: state dimension (the state is ignored, but its shape is checked).
        schedule: the VP schedule. Defaults to ``VPSchedule()``.

    Examples:
        >>> oracle = GaussianNoiseOracle([0.2, -0.1, 0.3], 0.5, obs_dim=4)
        >>> oracle(torch.randn(8, 3), torch.rand(8, 1), torch.randn(8, 4)).shape
        torch.Size([8, 3])
    """

    c: Tensor

    def __init__(
        self,
        c: Tensor | Sequence[float],
        v: float,
        obs_dim: int,
        schedule: VPSchedule | None = None,
    ) -> None:
        super().__init__()
        if v <= 0:
            raise ValueError(f"v must be positive, got {v}.")
        self.register_buffer("c", _as_vector(c, "c"))
        self.v = float(v)
        self.obs_dim = obs_dim
        self.action_dim = self.c.shape[0]
        self.schedule = schedule if schedule is not None else VPSchedule()

    def forward(self, noisy_action: Tensor, time: Tensor, observation: Tensor) -> Tensor:
        """``[*B, d], [*B, 1], [*B, s] -> [*B, d]``."""
        if noisy_action.shape[-1] != self.action_dim or observation.shape[-1] != self.obs_dim:
            raise ValueError(
                f"GaussianNoiseOracle expects action dim {self.action_dim} and obs dim "
                f"{self.obs_dim}, got {tuple(noisy_action.shape)}, {tuple(observation.shape)}."
            )
        alpha, sigma = self.schedule.alpha_sigma(time)
        c = self.c.to(noisy_action.dtype)
        return sigma * (noisy_action - alpha * c) / (alpha**2 * self.v + sigma**2)


class LinearQ(nn.Module):
    """Linear critic ``Q(s, a) = q . a`` with two identical heads: ``-> [*B, 2]``.

    ``q`` is an ``nn.Parameter`` so that gradient-leak and freezing checks see a real parameter.

    Args:
        q: the direction ``[d]``.
        obs_dim: state dimension (ignored, checked).

    Examples:
        >>> critic = LinearQ([1.0, -2.0], obs_dim=3)
        >>> critic(torch.zeros(5, 3), torch.ones(5, 2))[0]
        tensor([-1., -1.], grad_fn=<SelectBackward0>)
    """

    def __init__(self, q: Tensor | Sequence[float], obs_dim: int) -> None:
        super().__init__()
        self.q = nn.Parameter(_as_vector(q, "q"))
        self.obs_dim = obs_dim
        self.action_dim = self.q.shape[0]

    def forward(self, observation: Tensor, action: Tensor) -> Tensor:
        """``[*B, s], [*B, d] -> [*B, 2]``."""
        if action.shape[-1] != self.action_dim or observation.shape[-1] != self.obs_dim:
            raise ValueError(
                f"LinearQ expects action dim {self.action_dim} and obs dim {self.obs_dim}, "
                f"got {tuple(action.shape)}, {tuple(observation.shape)}."
            )
        value = (action * self.q.to(action.dtype)).sum(-1, keepdim=True)
        return value.expand(*value.shape[:-1], 2)


class ExactLinearEnergy(nn.Module):
    """Exact intermediate energy ``beta q . mu_{0|t} + (beta^2/2) sigma^2_{0|t} ||q||^2``.

    Signature of :class:`~torchrl_aepo.EnergyNetwork`: ``(noisy_action [*B,d], time [*B,1],
    observation [*B,s]) -> [*B,1]``.

    Args:
        c: data mean ``[d]``.
        v: data variance per dimension.
        q: linear critic direction ``[d]``.
        beta: inverse temperature.
        obs_dim: state dimension (ignored, checked).
        schedule: the VP schedule. Defaults to ``VPSchedule()``.

    Examples:
        >>> energy = ExactLinearEnergy([0.0, 0.0], 0.5, [1.0, 1.0], 3.0, obs_dim=1)
        >>> energy(torch.zeros(4, 2), torch.full((4, 1), 1.0), torch.zeros(4, 1)).shape
        torch.Size([4, 1])
    """

    c: Tensor
    q: Tensor

    def __init__(
        self,
        c: Tensor | Sequence[float],
        v: float,
        q: Tensor | Sequence[float],
        beta: float,
        obs_dim: int,
        schedule: VPSchedule | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("c", _as_vector(c, "c"))
        self.register_buffer("q", _as_vector(q, "q"))
        if self.c.shape != self.q.shape:
            raise ValueError(
                f"c and q must have the same shape, got {self.c.shape}, {self.q.shape}."
            )
        self.v = float(v)
        self.beta = float(beta)
        self.obs_dim = obs_dim
        self.action_dim = self.c.shape[0]
        self.schedule = schedule if schedule is not None else VPSchedule()

    def forward(self, noisy_action: Tensor, time: Tensor, observation: Tensor) -> Tensor:
        """``[*B, d], [*B, 1], [*B, s] -> [*B, 1]``."""
        if noisy_action.shape[-1] != self.action_dim or observation.shape[-1] != self.obs_dim:
            raise ValueError(
                f"ExactLinearEnergy expects action dim {self.action_dim} and obs dim "
                f"{self.obs_dim}, got {tuple(noisy_action.shape)}, {tuple(observation.shape)}."
            )
        c, q = self.c.to(noisy_action.dtype), self.q.to(noisy_action.dtype)
        mean = exact_posterior_mean(self.schedule, time, noisy_action, c, self.v)
        variance = exact_posterior_variance(self.schedule, time, self.v)
        return self.beta * (mean * q).sum(-1, keepdim=True) + 0.5 * self.beta**2 * variance * (
            q @ q
        )
