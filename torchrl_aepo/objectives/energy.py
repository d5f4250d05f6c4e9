"""Intermediate-energy regression of AEPO (``aepo-math.md`` §4-6, Eqs. 15-26).

:class:`AnalyticEnergyLoss` regresses an energy network ``f_omega(s, a_t, t)`` on the
analytic target of Eq. 25, built from a frozen behaviour noise network (posterior mean,
Eq. 18), a frozen critic (value and action-gradient) and :class:`PosteriorStatistics`
(posterior variance, Eq. 22 or 24). :class:`EnergyLossBase` holds what every energy loss
shares (keys, the frozen networks, time/noise sampling, the regression), so baselines with
other targets keep the constructor prefix ``(energy_network, noise_network, qvalue_network,
...)`` and the output key ``loss_energy`` and can be swapped in.

Frozen networks are held as :func:`~torchrl_aepo.objectives.common.frozen_view` modules: registered submodules (``.to()``
moves them) whose tensors are non-persistent buffers aliasing the given network's storage.
They therefore have no parameters (``loss.parameters()`` is the energy network's only, and
nothing can write a ``.grad`` into them), do not enter the loss's ``state_dict``, and follow
in-place updates of the source (an optimizer step on the noise network, a ``SoftUpdate`` of
:meth:`ExpectileLoss.target_qvalue_network`) until either side is moved to another device:
move networks and losses first, then build the energy loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torchrl.objectives import LossModule
from torchrl.objectives.utils import _reduce

from torchrl_aepo.autograd import value_and_input_gradient
from torchrl_aepo.diffusion.schedule import VPSchedule
from torchrl_aepo.objectives.common import check_loss_options, frozen_view, get_input, unwrap_module
from torchrl_aepo.objectives.posterior import PosteriorStatistics, StackedPosteriorStatistics

__all__ = ["EnergyLossBase", "TargetRegressionEnergyLoss", "AnalyticEnergyLoss"]


class EnergyLossBase(LossModule):
    """Shared machinery of the intermediate-energy losses (keys, frozen networks, regression).

    Subclasses implement :meth:`forward`, typically as::

        observation, action = self._read_batch(tensordict)
        time, noise = self._sample_time_and_noise(action)
        target, noisy_action = <detached target [*B, 1]>, <a_t [*B, d]>
        per_sample, energy = self._regress(observation, noisy_action, time, target)
        return TensorDict({"loss_energy": _reduce(per_sample, self.reduction), ...}, [])

    Args:
        energy_network: ``f_omega(noisy_action [*B,d], time [*B,1], observation [*B,s]) -> [*B,1]``
            such as :class:`~torchrl_aepo.EnergyNetwork` (or a ``TensorDictModule`` wrapping
            one). Its parameters are the loss's only parameters.
        noise_network: frozen behaviour noise predictor ``(a_t, t, s) -> eps [*B,d]``.
        qvalue_network: frozen critic ``(observation, action) -> [*B, heads]``; the minimum
            over heads is used. Pass :meth:`ExpectileLoss.target_qvalue_network` for the target
            critic (§6.3).

    Keyword Args:
        schedule: the noise schedule. Defaults to ``VPSchedule()``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample losses ``[*B]``).

    Input keys (``set_keys``): ``observation`` ``[*B, s]``, ``action`` ``[*B, d]`` (clean
    dataset action ``a_0``); the regression losses (:class:`TargetRegressionEnergyLoss`) also
    read the optional ``time`` ``[*B, 1]`` and ``noise`` ``[*B, d]`` (``"energy_time"`` /
    ``"energy_noise"``) instead of drawing them from torch's global generator.
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys.

        Attributes:
            observation: conditioning state. Defaults to ``"observation"``.
            action: clean dataset action ``a_0``. Defaults to ``"action"``.
            time: optional given diffusion times ``[*B, 1]``. Defaults to ``"energy_time"``.
            noise: optional given noise ``eps`` ``[*B, d]``. Defaults to ``"energy_noise"``.
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        time: NestedKey = "energy_time"
        noise: NestedKey = "energy_noise"

    default_keys = _AcceptedKeys
    energy_network: nn.Module
    energy_network_params: TensorDictParams
    target_energy_network_params: TensorDictParams

    def __init__(
        self,
        energy_network: nn.Module,
        noise_network: nn.Module,
        qvalue_network: nn.Module,
        *,
        schedule: VPSchedule | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_loss_options(reduction=reduction)
        self.convert_to_functional(unwrap_module(energy_network), "energy_network")
        self.noise_network = frozen_view(noise_network)
        self.qvalue_network = frozen_view(qvalue_network)
        self.schedule = schedule if schedule is not None else VPSchedule()
        self.reduction = reduction

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    @property
    def in_keys(self) -> list[NestedKey]:
        return [self.tensor_keys.observation, self.tensor_keys.action]

    @property
    def out_keys(self) -> list[str]:
        return ["loss_energy"]

    def _read_batch(self, tensordict: TensorDictBase) -> tuple[Tensor, Tensor]:
        """``(observation [*B, s], action [*B, d])`` with key and shape checks."""
        net, name = self.energy_network, type(self).__name__
        action = get_input(
            tensordict, self.tensor_keys.action, name, getattr(net, "action_dim", None)
        )
        observation = get_input(
            tensordict, self.tensor_keys.observation, name, getattr(net, "obs_dim", None)
        )
        if observation.shape[:-1] != action.shape[:-1]:
            raise ValueError(
                f"{name}: observation {tuple(observation.shape)} and action "
                f"{tuple(action.shape)} have different batch shapes."
            )
        return observation, action

    def _sample_time_and_noise(self, action: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample ``t ~ U(t_min, t_max)`` ``[*B, 1]`` and ``eps ~ N(0, I)`` ``[*B, d]``."""
        time = self.schedule.sample_time(
            (*action.shape[:-1], 1), device=action.device, dtype=action.dtype
        )
        return time, torch.randn_like(action)

    def _given_or_sampled_time_and_noise(
        self, tensordict: TensorDictBase, action: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The batch's ``time`` / ``noise`` entries when present (e.g. drawn by the per-member
        generators of :class:`~torchrl_aepo.stacked.StackedEnergy`), else
        :meth:`_sample_time_and_noise` (torch's global generator, as without them)."""
        time = tensordict.get(self.tensor_keys.time, None)
        noise = tensordict.get(self.tensor_keys.noise, None)
        if time is None or noise is None:
            sampled_time, sampled_noise = self._sample_time_and_noise(action)
            time = sampled_time if time is None else time
            noise = sampled_noise if noise is None else noise
        return time, noise

    def _critic_value_and_grad(self, observation: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """Frozen ``Q(s, a) = min_i Q_i(s, a)`` ``[*B, 1]`` and ``grad_a Q`` ``[*B, d]``, detached.

        One autograd call on a fresh ``requires_grad`` copy of ``action`` (§13.3); the critic
        has no parameters here, so only the input gradient is computed.
        """
        observation = observation.detach()
        return value_and_input_gradient(
            lambda a: self.qvalue_network(observation, a).min(-1, keepdim=True)[0], action
        )

    def _regress(
        self, observation: Tensor, noisy_action: Tensor, time: Tensor, target: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Per-sample ``(f_omega(s, a_t, t) - y)^2`` ``[*B]`` and the energy ``[*B, 1]``."""
        energy = self.energy_network(noisy_action, time, observation)
        return (energy - target).pow(2).squeeze(-1), energy


def _check_beta(beta: float) -> float:
    beta = float(beta)
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}.")
    return beta


class TargetRegressionEnergyLoss(EnergyLossBase):
    """An energy regression ``(f_omega(s, a_t, t) - y)^2`` on a detached per-sample target ``y``.

    The base of :class:`AnalyticEnergyLoss` (Eq. 25) and of the MSE and DPS energies
    (:mod:`~torchrl_aepo.objectives.energy_baselines`): the regression, the ``energy_target``
    method and the ``loss_energy`` / ``target_mean`` / ``energy_mean`` outputs are shared.
    Subclasses implement :meth:`_target`, returning at least ``y`` ``[*B, 1]`` and
    ``noisy_action`` ``[*B, d]``, and may add diagnostics in :meth:`_diagnostics`.

    Keyword Args:
        beta: inverse temperature (``> 0``). Defaults to 3.
        schedule / reduction: as :class:`EnergyLossBase`.
    """

    def __init__(
        self,
        energy_network: nn.Module,
        noise_network: nn.Module,
        qvalue_network: nn.Module,
        *,
        beta: float = 3.0,
        schedule: VPSchedule | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            energy_network, noise_network, qvalue_network, schedule=schedule, reduction=reduction
        )
        self.beta = _check_beta(beta)

    @property
    def out_keys(self) -> list[str]:
        return ["loss_energy", "target_mean", "energy_mean"]

    def _target(
        self, observation: Tensor, action: Tensor, time: Tensor, noise: Tensor
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def _diagnostics(self, target: dict[str, Tensor]) -> dict[str, Tensor]:
        return {}

    def energy_target(
        self, observation: Tensor, action: Tensor, time: Tensor, noise: Tensor
    ) -> TensorDict:
        """The detached regression target for given ``(s, a_0, t, eps)``, for tests and studies.

        Args:
            observation: ``[*B, s]``.
            action: clean action ``a_0`` ``[*B, d]``.
            time: ``[*B, 1]``.
            noise: ``eps`` ``[*B, d]``.

        Returns:
            a TensorDict of batch ``[*B]`` with ``y`` ``[*B, 1]``, ``noisy_action`` ``a_t``
            ``[*B, d]`` and the loss's intermediate quantities (see the class docstring).
        """
        with torch.no_grad():
            target = self._target(observation, action, time, noise)
        return TensorDict(target, batch_size=action.shape[:-1])

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        """Compute ``loss_energy`` and diagnostics on a batch of ``(observation, action)``."""
        observation, action = self._read_batch(tensordict)
        time, noise = self._given_or_sampled_time_and_noise(tensordict, action)
        with torch.no_grad():
            target = self._target(observation, action, time, noise)
        per_sample, energy = self._regress(observation, target["noisy_action"], time, target["y"])
        return TensorDict(
            {
                "loss_energy": _reduce(per_sample, self.reduction),
                "target_mean": target["y"].mean(),
                "energy_mean": energy.detach().mean(),
                **self._diagnostics(target),
            },
            batch_size=[],
        )


class AnalyticEnergyLoss(TargetRegressionEnergyLoss):
    """AEPO's analytic intermediate-energy regression, Eqs. 25-26.

    For each sample ``(s, a_0)`` draw ``t ~ U(t_min, 1)`` and ``eps ~ N(0, I)``, set
    ``a_t = alpha_t a_0 + sigma_t eps`` and regress ``f_omega(s, a_t, t)`` on the detached

    .. math::

        y = \\beta Q(s, a_0) + \\beta g^\\top (\\mu_{0|t} - a_0)
            + \\frac{\\beta^2}{2} \\sigma^2_{0|t} \\|g\\|^2,\\qquad
        g = \\nabla_a Q(s, a)\\big|_{a = a_0},\\qquad
        \\mu_{0|t} = \\frac{a_t - \\sigma_t \\epsilon_\\theta(a_t, s, t)}{\\alpha_t},

    with ``Q`` the frozen critic (minimum of its heads), ``eps_theta`` the frozen noise network
    (one ``no_grad`` pass per batch), ``sigma^2_{0|t}`` from ``posterior_statistics``
    (Posterior 1 or 2, clamped to ``[0, v_max]``) and ``mu_{0|t}`` optionally clipped to the
    action box (§13.5). ``L(omega) = reduce((f_omega - y)^2)``.

    Args:
        energy_network: the trained energy network (see :class:`EnergyLossBase`).
        noise_network: the frozen noise predictor (e.g. ``DiffusionLoss.sampling_network()``).
        qvalue_network: the frozen twin critic (e.g. ``ExpectileLoss.target_qvalue_network()``).
        posterior_statistics: the ``Gamma`` / Posterior-2 tables of ``noise_network``
            (:meth:`PosteriorStatistics.estimate`); refresh with
            :meth:`update_posterior_statistics`. For stacked networks of several seeds
            (batches ``[N, B]``), a :class:`StackedPosteriorStatistics` of their tables.

    Keyword Args:
        beta: inverse temperature. Defaults to 3.
        posterior: ``1`` (Eq. 22, default) or ``2`` (Eq. 24).
        schedule: the noise schedule; defaults to the statistics' schedule and must equal it.
        clip_posterior_mean: ``(low, high)`` box for ``mu_{0|t}``, or ``None``. Defaults to
            ``(-1, 1)``.
        variance_weight: weight ``lambda`` of the second-order (variance) term, the target
            being ``beta Q + beta g^T (mu - a_0) + lambda (beta^2/2) sigma^2 ||g||^2``.
            ``1`` (default) is Eq. 25; ``0`` keeps the first-order part only, i.e.
            ``beta Q(s, mu_{0|t})`` to first order, the Jensen lower bound of ``E_t``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Input keys (``set_keys``): ``observation`` ``[*B, s]``, ``action`` ``[*B, d]``.
    Output: ``loss_energy`` (scalar, or ``[*B]`` with ``reduction="none"``) and the detached
    scalars ``target_mean``, ``energy_mean``, ``posterior_variance_mean``,
    ``mean_clip_fraction`` (fraction of the ``B*d`` coordinates of ``mu_{0|t}`` moved by the
    clip) and ``variance_clamp_fraction`` (fraction of samples whose variance was clamped).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_aepo import EnergyNetwork, TwinQNetwork, UMLPNoisePredictor
        >>> from torchrl_aepo.objectives import AnalyticEnergyLoss, PosteriorStatistics
        >>> noise, critic = UMLPNoisePredictor(3, 11), TwinQNetwork(11, 3)
        >>> data = TensorDict({"observation": torch.randn(256, 11),
        ...                    "action": torch.rand(256, 3) * 2 - 1}, batch_size=[256])
        >>> stats = PosteriorStatistics.estimate(noise, data["observation"], data["action"],
        ...                                      num_times=11, samples_per_time=64)
        >>> loss = AnalyticEnergyLoss(EnergyNetwork(3, 11), noise, critic, stats, beta=3.0)
        >>> out = loss(data[:32])
        >>> out["loss_energy"].backward()
        >>> sorted(out.keys())[:3]
        ['energy_mean', 'loss_energy', 'mean_clip_fraction']
    """

    posterior_statistics: PosteriorStatistics | StackedPosteriorStatistics

    def __init__(
        self,
        energy_network: nn.Module,
        noise_network: nn.Module,
        qvalue_network: nn.Module,
        posterior_statistics: PosteriorStatistics,
        *,
        beta: float = 3.0,
        posterior: int = 1,
        schedule: VPSchedule | None = None,
        clip_posterior_mean: tuple[float, float] | None = (-1.0, 1.0),
        variance_weight: float = 1.0,
        reduction: str = "mean",
    ) -> None:
        if not isinstance(posterior_statistics, (PosteriorStatistics, StackedPosteriorStatistics)):
            raise TypeError(
                "posterior_statistics must be a PosteriorStatistics (PosteriorStatistics."
                f"estimate(...)), got {type(posterior_statistics)}."
            )
        if schedule is None:
            schedule = posterior_statistics.schedule
        super().__init__(
            energy_network,
            noise_network,
            qvalue_network,
            beta=beta,
            schedule=schedule,
            reduction=reduction,
        )
        if posterior not in (1, 2):
            raise ValueError(f"posterior must be 1 or 2, got {posterior!r}.")
        if clip_posterior_mean is not None and not clip_posterior_mean[0] < clip_posterior_mean[1]:
            raise ValueError(
                f"clip_posterior_mean must be (low, high) with low < high, got {clip_posterior_mean}."
            )
        if not (isinstance(variance_weight, (int, float)) and 0 <= variance_weight <= 1):
            raise ValueError(f"variance_weight must be in [0, 1], got {variance_weight!r}.")
        self.posterior = posterior
        self.variance_weight = float(variance_weight)
        self.clip_posterior_mean = (
            None if clip_posterior_mean is None else tuple(float(x) for x in clip_posterior_mean)
        )
        self._check_schedule(posterior_statistics)
        self.posterior_statistics = posterior_statistics

    def _check_schedule(self, statistics: PosteriorStatistics) -> None:
        if statistics.schedule.state_dict() != self.schedule.state_dict():
            raise ValueError(
                f"The posterior statistics were estimated with {statistics.schedule}, but the "
                f"loss uses {self.schedule}."
            )

    @property
    def out_keys(self) -> list[str]:
        return [
            "loss_energy",
            "target_mean",
            "energy_mean",
            "posterior_variance_mean",
            "mean_clip_fraction",
            "variance_clamp_fraction",
        ]

    def update_posterior_statistics(self, posterior_statistics: PosteriorStatistics) -> None:
        """Swap in refreshed statistics (joint loop); they are moved to the loss's device."""
        self._check_schedule(posterior_statistics)
        self.posterior_statistics = posterior_statistics.to(self.posterior_statistics.v_max.device)

    @torch.no_grad()
    def _target(
        self, observation: Tensor, action: Tensor, time: Tensor, noise: Tensor
    ) -> dict[str, Tensor]:
        noisy_action = self.schedule.add_noise(action, time, noise)
        eps = self.noise_network(noisy_action, time, observation)
        mean = self.schedule.posterior_mean(noisy_action, eps, time)
        if self.clip_posterior_mean is None:
            mean_clipped = torch.zeros_like(mean, dtype=torch.bool)
        else:
            unclipped, mean = mean, mean.clamp(*self.clip_posterior_mean)
            mean_clipped = mean != unclipped
        stats = self.posterior_statistics
        raw_variance = stats.variance(time, self.posterior, clamp=False)
        variance = raw_variance.clamp(min=0.0).minimum(stats.v_max.to(raw_variance.dtype))
        qvalue, grad = self._critic_value_and_grad(observation, action)
        target = (
            self.beta * qvalue
            + self.beta * (grad * (mean - action)).sum(-1, keepdim=True)
            + (0.5 * self.variance_weight * self.beta**2)
            * variance
            * grad.pow(2).sum(-1, keepdim=True)
        )
        return {
            "y": target,
            "noisy_action": noisy_action,
            "mu": mean,
            "variance": variance,
            "q": qvalue,
            "grad": grad,
            "mu_clipped": mean_clipped,
            "variance_clamped": variance != raw_variance,
        }

    def _diagnostics(self, target: dict[str, Tensor]) -> dict[str, Tensor]:
        return {
            "posterior_variance_mean": target["variance"].mean(),
            "mean_clip_fraction": target["mu_clipped"].float().mean(),
            "variance_clamp_fraction": target["variance_clamped"].float().mean(),
        }
