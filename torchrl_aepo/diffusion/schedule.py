"""Linear variance-preserving (VP) noise schedule (``aepo-math.md`` §3, Eq. 5).

The forward kernel is ``q(a_t | a_0) = N(alpha_t a_0, sigma_t^2 I)`` with

.. math::

    \\log \\alpha_t = -\\frac{(\\beta_1 - \\beta_0) t^2}{4} - \\frac{\\beta_0 t}{2},\\qquad
    \\sigma_t = \\sqrt{1 - \\alpha_t^2},\\qquad
    \\lambda_t = \\log(\\alpha_t / \\sigma_t).

``sigma_t`` and ``lambda_t`` are computed with ``expm1`` so that they stay accurate at
``t = t_min`` in float32, where ``1 - alpha_t^2`` is of order ``1e-4``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["VPSchedule"]


class VPSchedule:
    """Continuous-time linear VP-SDE schedule, as used by QGPO and AEPO.

    All methods accept a tensor ``t`` of any shape (typically ``[*B, 1]`` so that the
    result broadcasts against ``[*B, d]`` actions) and return a tensor of the same shape
    and dtype.

    Args:
        beta_0: ``beta(0)``, the noise rate at ``t = 0``. Defaults to ``0.1``.
        beta_1: ``beta(1)``, the noise rate at ``t = T = 1``. Defaults to ``20``.
        t_min: the smallest diffusion time used in training and sampling. Defaults to ``1e-3``.
        t_max: the largest diffusion time (``T``). Defaults to ``1``.

    Examples:
        >>> import torch
        >>> schedule = VPSchedule()
        >>> t = torch.tensor([0.001, 0.1, 0.5, 1.0])
        >>> schedule.alpha(t)
        tensor([0.9999, 0.9467, 0.2812, 0.0066])
        >>> lam = schedule.log_snr(t)
        >>> torch.allclose(schedule.time_from_log_snr(lam), t, rtol=1e-5)
        True
    """

    def __init__(
        self,
        beta_0: float = 0.1,
        beta_1: float = 20.0,
        t_min: float = 1e-3,
        t_max: float = 1.0,
    ) -> None:
        if not 0.0 < beta_0 < beta_1:
            raise ValueError(f"VPSchedule needs 0 < beta_0 < beta_1, got {beta_0=}, {beta_1=}.")
        if not 0.0 < t_min < t_max:
            raise ValueError(f"VPSchedule needs 0 < t_min < t_max, got {t_min=}, {t_max=}.")
        self.beta_0 = float(beta_0)
        self.beta_1 = float(beta_1)
        self.t_min = float(t_min)
        self.t_max = float(t_max)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(beta_0={self.beta_0}, beta_1={self.beta_1}, "
            f"t_min={self.t_min}, t_max={self.t_max})"
        )

    def beta(self, t: Tensor) -> Tensor:
        """Noise rate ``beta(t) = beta_0 + t (beta_1 - beta_0)`` (also ``g^2(t)``)."""
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def log_alpha(self, t: Tensor) -> Tensor:
        """``log alpha_t = -(beta_1 - beta_0) t^2 / 4 - beta_0 t / 2``."""
        return -0.25 * (self.beta_1 - self.beta_0) * t * t - 0.5 * self.beta_0 * t

    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale ``alpha_t``."""
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale ``sigma_t = sqrt(1 - alpha_t^2)``, computed as ``sqrt(-expm1(2 log alpha_t))``."""
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha_t, sigma_t)`` in one call (one ``log_alpha`` evaluation)."""
        log_alpha = self.log_alpha(t)
        return torch.exp(log_alpha), torch.sqrt(-torch.expm1(2.0 * log_alpha))

    def log_snr(self, t: Tensor) -> Tensor:
        """Half log signal-to-noise ratio ``lambda_t = log(alpha_t / sigma_t)``."""
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(-torch.expm1(2.0 * log_alpha))

    def time_from_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of :meth:`log_snr`: ``t(lambda) = 2c / (beta_0 + sqrt(beta_0^2 + 2 (beta_1 - beta_0) c))``.

        Here ``c = log(1 + exp(-2 lambda)) = -2 log alpha_t``, computed with ``softplus``.
        """
        c = F.softplus(-2.0 * lam)
        return (
            2.0
            * c
            / (self.beta_0 + torch.sqrt(self.beta_0**2 + 2.0 * (self.beta_1 - self.beta_0) * c))
        )

    def posterior_variance_factor(self, t: Tensor) -> Tensor:
        """``sigma_t^2 / alpha_t^2 = exp(-2 lambda_t)``: the amplification factor of Posterior 1."""
        return torch.expm1(-2.0 * self.log_alpha(t))

    def sample_time(
        self,
        shape: torch.Size | tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Draw ``t ~ U(t_min, t_max)`` of the given shape (e.g. ``(*B, 1)``)."""
        if generator is None:  # no generator kwarg: torch.compile then supports dynamic shapes
            u = torch.rand(shape, device=device, dtype=dtype)
        else:
            u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
        return self.t_min + (self.t_max - self.t_min) * u

    def add_noise(self, a0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Forward kernel sample ``a_t = alpha_t a_0 + sigma_t eps``.

        Args:
            a0: clean actions, ``[*B, d]``.
            t: diffusion times broadcastable to ``a0``, usually ``[*B, 1]``.
            noise: standard normal noise ``[*B, d]``.
        """
        alpha, sigma = self.alpha_sigma(t)
        return alpha * a0 + sigma * noise

    def posterior_mean(self, noisy: Tensor, noise_prediction: Tensor, t: Tensor) -> Tensor:
        """Tweedie's posterior mean ``mu_{0|t} = (a_t - sigma_t eps_theta) / alpha_t`` (Eq. 18).

        Args:
            noisy: ``a_t`` ``[*B, d]``.
            noise_prediction: ``eps_theta(a_t, t, s)`` ``[*B, d]`` (``+eps`` convention).
            t: diffusion times broadcastable to ``noisy``, usually ``[*B, 1]``.

        Example:
            >>> s = VPSchedule()
            >>> t, a0, eps = torch.full((1, 1), 0.3), torch.ones(1, 2), torch.randn(1, 2)
            >>> torch.allclose(s.posterior_mean(s.add_noise(a0, t, eps), eps, t), a0, atol=1e-6)
            True
        """
        alpha, sigma = self.alpha_sigma(t)
        return (noisy - sigma * noise_prediction) / alpha

    def time_grid(
        self,
        num_steps: int,
        *,
        kind: str = "time_uniform",
        t_start: float | None = None,
        t_end: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> Tensor:
        """Decreasing grid of ``num_steps + 1`` times from ``t_start`` (default ``t_max``) to ``t_end``.

        Args:
            num_steps: number of intervals.
            kind: ``"time_uniform"`` (uniform in ``t``) or ``"logSNR"`` (uniform in ``lambda_t``).
            t_start: first time, defaults to ``t_max``.
            t_end: last time, defaults to ``t_min``.
            device: device of the grid.
            dtype: dtype of the grid; float64 by default, solver steps are computed in float64.
        """
        if num_steps < 1:
            raise ValueError(f"time_grid needs num_steps >= 1, got {num_steps}.")
        t_start = self.t_max if t_start is None else float(t_start)
        t_end = self.t_min if t_end is None else float(t_end)
        if not t_start > t_end:
            raise ValueError(f"time_grid needs t_start > t_end, got {t_start=}, {t_end=}.")
        if kind == "time_uniform":
            return torch.linspace(t_start, t_end, num_steps + 1, device=device, dtype=dtype)
        if kind == "logSNR":
            ends = torch.tensor([t_start, t_end], device=device, dtype=dtype)
            lam = self.log_snr(ends)
            grid = torch.linspace(
                lam[0].item(), lam[1].item(), num_steps + 1, device=device, dtype=dtype
            )
            times = self.time_from_log_snr(grid)
            times[0], times[-1] = t_start, t_end  # remove round-off at the ends
            return times
        raise ValueError(f"Unknown time grid kind {kind!r}; expected 'time_uniform' or 'logSNR'.")

    def state_dict(self) -> dict[str, float]:
        """Plain-dict description, to store with checkpoints."""
        return {
            "beta_0": self.beta_0,
            "beta_1": self.beta_1,
            "t_min": self.t_min,
            "t_max": self.t_max,
        }
