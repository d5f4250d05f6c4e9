"""An exact non-linear oracle for the actor: Gaussian behaviour, concave quadratic critic.

Behaviour ``a_0 | s ~ N(c, v I)``, critic ``Q(s, a) = -||a - a*||^2``. The target policy
``pi ∝ mu exp(beta Q)`` is Gaussian, ``N(m, I / P)`` with precision ``P = 1/v + 2 beta`` and mean
``m = (c / v + 2 beta a*) / P``. With the exact Gaussian posterior ``N(mu_{0|t}, s2_t I)`` of
``tests/oracles.py``, the intermediate energy of Eq. 12 is exact in closed form:

.. math::

    E_t(s, a_t) = \\log E_{N(\\mu_{0|t}, s^2_t I)}\\big[e^{-\\beta \\|a_0 - a^*\\|^2}\\big]
                = -\\frac{d}{2}\\log(1 + 2\\beta s^2_t) - \\frac{\\beta \\|\\mu_{0|t} - a^*\\|^2}{1 + 2\\beta s^2_t}.

Guided sampling with this energy, ``w = 1`` and no rescaling therefore reproduces ``N(m, I/P)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from oracles import exact_posterior_mean, exact_posterior_variance
from torch import Tensor, nn

from torchrl_aepo.diffusion.schedule import VPSchedule

__all__ = ["ExactQuadraticEnergy", "QuadraticQ", "quadratic_tilted_policy"]


def quadratic_tilted_policy(
    c: Tensor, v: float, a_star: Tensor, beta: float
) -> tuple[Tensor, float]:
    """Mean ``[d]`` and per-dimension variance of ``N(c, vI) exp(-beta ||a - a*||^2) / Z``."""
    precision = 1.0 / v + 2.0 * beta
    return (c / v + 2.0 * beta * a_star) / precision, 1.0 / precision


class QuadraticQ(nn.Module):
    """Concave critic ``Q(s, a) = -||a - a*||^2`` with two identical heads: ``-> [*B, 2]``."""

    a_star: Tensor

    def __init__(self, a_star: Sequence[float] | Tensor, obs_dim: int) -> None:
        super().__init__()
        self.register_buffer("a_star", torch.as_tensor(a_star, dtype=torch.float32))
        self.obs_dim, self.action_dim = obs_dim, self.a_star.shape[0]

    def forward(self, observation: Tensor, action: Tensor) -> Tensor:
        value = -(action - self.a_star).pow(2).sum(-1, keepdim=True)
        return value.expand(*value.shape[:-1], 2)


class ExactQuadraticEnergy(nn.Module):
    """Exact intermediate energy of :class:`QuadraticQ` under ``N(c, vI)`` data: ``-> [*B, 1]``."""

    c: Tensor
    a_star: Tensor

    def __init__(
        self,
        c: Sequence[float] | Tensor,
        v: float,
        a_star: Sequence[float] | Tensor,
        beta: float,
        obs_dim: int,
        schedule: VPSchedule | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("c", torch.as_tensor(c, dtype=torch.float32))
        self.register_buffer("a_star", torch.as_tensor(a_star, dtype=torch.float32))
        self.v, self.beta = float(v), float(beta)
        self.obs_dim, self.action_dim = obs_dim, self.c.shape[0]
        self.schedule = schedule if schedule is not None else VPSchedule()

    def forward(self, noisy_action: Tensor, time: Tensor, observation: Tensor) -> Tensor:
        mean = exact_posterior_mean(self.schedule, time, noisy_action, self.c, self.v)
        spread = 1.0 + 2.0 * self.beta * exact_posterior_variance(self.schedule, time, self.v)
        distance = (mean - self.a_star).pow(2).sum(-1, keepdim=True)
        return -0.5 * self.action_dim * torch.log(spread) - self.beta * distance / spread
