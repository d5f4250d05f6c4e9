"""Inexact and contrastive intermediate energies: the baselines of AEPO's exactness claim.

The exact intermediate energy of the target policy ``pi ∝ mu exp(beta Q)`` is (Eq. 12)

.. math::

    E_t(s, a_t) = \\log \\mathbb{E}_{\\mu_{0t}(a_0 | a_t, s)}\\big[\\exp(\\beta Q(s, a_0))\\big].

AEPO's :class:`~torchrl_aepo.objectives.energy.AnalyticEnergyLoss` approximates it in closed
form. This module provides the energies AEPO compares against, as drop-in replacements
(constructor prefix ``(energy_network, noise_network, qvalue_network, ...)``, keys
``observation`` / ``action``, output ``loss_energy``, only the energy network trained, the
critic the minimum over its heads):

* :class:`MSEEnergyLoss`, the regression ("MSE", Diffuser-style) energy of Eq. 10: regress
  ``f_omega(s, a_t, t)`` on ``y = beta Q(s, a_0)``; the minimiser is
  ``E[beta Q(s, a_0) | a_t, s] <= E_t`` (Jensen, strict unless ``Q`` is constant on the
  posterior).
* :class:`DPSEnergyLoss`, the DPS energy of Eq. 10: regress on
  ``y = beta Q(s, mu_{0|t}(a_t, s))`` with Tweedie's posterior mean from the frozen noise
  network, ``mu_{0|t} = (a_t - sigma_t eps_theta(a_t, s, t)) / alpha_t`` (Eq. 18), clipped to
  the action box.
* :class:`CEPEnergyLoss`, QGPO's contrastive energy prediction with ``K`` support actions
  ``a_0^1..a_0^K ~ mu(.|s)`` per state (from the behaviour model,
  :func:`sample_support_actions`): with one ``t`` per state and one ``eps^k`` per support,

  .. math::

      L(\\omega) = -\\mathbb{E}_{s, t}\\sum_{k=1}^K
          \\operatorname{softmax}_k\\big(\\beta Q(s, a_0^{1:K})\\big)
          \\log \\operatorname{softmax}_k\\big(f_\\omega(s, a_t^{1:K}, t)\\big),
      \\qquad a_t^k = \\alpha_t a_0^k + \\sigma_t \\epsilon^k,

  whose minimiser tends to the exact ``E_t`` up to a ``(s, t)`` constant as ``K -> infinity``
  (QGPO, Theorem 3.2); the softmax is invariant to that constant.
* :class:`LogMeanExpEnergyLoss`, the exact energy by regression: the loss
  ``exp(y - f) - (y - f) - 1`` with ``y = beta Q(s, a_0)`` has the conditional
  ``log E[exp(y) | a_t, s]`` as its minimiser, i.e. Eq. 12 itself, at the cost of the MSE
  energy (one critic call per sample, no supports).
* :class:`SupportPosteriorEnergyLoss`, the exact energy of the empirical behaviour policy at
  ``s``: ``K`` behaviour-model support actions plus the dataset action, whose posterior given
  ``a_t`` is known in closed form (Gaussian kernel weights), so ``E_t`` is a log-sum-exp over
  them; the energy network regresses on it (``K + 1`` critic calls, one energy call per sample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torchrl.objectives.utils import _reduce

from torchrl_aepo.diffusion.schedule import VPSchedule
from torchrl_aepo.diffusion.solver import DPMSolver
from torchrl_aepo.objectives.common import get_input, unwrap_module
from torchrl_aepo.objectives.energy import (
    EnergyLossBase,
    TargetRegressionEnergyLoss,
    _check_beta,
)

__all__ = [
    "MSEEnergyLoss",
    "DPSEnergyLoss",
    "CEPEnergyLoss",
    "LogMeanExpEnergyLoss",
    "SupportPosteriorEnergyLoss",
    "sample_support_actions",
]


class MSEEnergyLoss(TargetRegressionEnergyLoss):
    """Regression ("MSE") intermediate energy, Eq. 10: ``f_omega(s, a_t, t) ≈ E[beta Q(s, a_0) | a_t, s]``.

    For each sample ``(s, a_0)`` draw ``t ~ U(t_min, 1)``, ``eps ~ N(0, I)``, set
    ``a_t = alpha_t a_0 + sigma_t eps`` and minimise

    .. math::

        L(\\omega) = \\mathbb{E}\\,\\big(f_\\omega(s, a_t, t) - \\beta Q(s, a_0)\\big)^2 .

    The minimiser is the posterior mean of ``beta Q``, which by Jensen's inequality lies
    *below* the exact energy ``log E[exp(beta Q) | a_t]`` (Eq. 12), with a gap that depends on
    ``a_t`` as soon as ``Q`` is non-linear or the posterior is not Gaussian with a fixed
    covariance: its gradient, the guidance, is then biased.

    Args:
        energy_network: the trained energy network ``(a_t [*B,d], t [*B,1], s [*B,s]) -> [*B,1]``.
        noise_network: the frozen behaviour noise predictor. The MSE target does not use it; it
            is accepted (and held frozen) so that every energy loss has the same constructor.
        qvalue_network: the frozen critic ``(s, a) -> [*B, heads]`` (minimum over heads).

    Keyword Args:
        beta: inverse temperature. Defaults to 3.
        schedule: the noise schedule. Defaults to ``VPSchedule()``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample losses ``[*B]``).

    Input keys (``set_keys``): ``observation`` ``[*B, s]``, ``action`` ``[*B, d]``.
    Output: ``loss_energy`` and the detached scalars ``target_mean``, ``energy_mean``.
    :meth:`energy_target` returns ``y``, ``noisy_action`` and ``q`` (``Q(s, a_0)`` ``[*B, 1]``).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_aepo import EnergyNetwork, MLPNoisePredictor, TwinQNetwork
        >>> from torchrl_aepo.objectives.energy_baselines import MSEEnergyLoss
        >>> loss = MSEEnergyLoss(EnergyNetwork(2, 4), MLPNoisePredictor(2, 4), TwinQNetwork(4, 2))
        >>> batch = TensorDict({"observation": torch.randn(32, 4),
        ...                     "action": torch.rand(32, 2) * 2 - 1}, batch_size=[32])
        >>> loss(batch)["loss_energy"].backward()
    """

    def _target(
        self, observation: Tensor, action: Tensor, time: Tensor, noise: Tensor
    ) -> dict[str, Tensor]:
        qvalue = self.qvalue_network(observation, action).min(-1, keepdim=True)[0]
        return {
            "y": self.beta * qvalue,
            "noisy_action": self.schedule.add_noise(action, time, noise),
            "q": qvalue,
        }


class LogMeanExpEnergyLoss(TargetRegressionEnergyLoss):
    """The exact intermediate energy (Eq. 12) by regression, without support actions.

    For each sample ``(s, a_0)`` draw ``t``, ``eps`` and ``a_t`` as in :class:`MSEEnergyLoss`,
    set ``y = beta Q(s, a_0)`` (optionally capped at ``max_target``) and minimise

    .. math::

        L(\\omega) = \\mathbb{E}\\,\\big[e^{\\,y - f_\\omega(s, a_t, t)}
            - (y - f_\\omega(s, a_t, t)) - 1\\big] \\ge 0 .

    For fixed ``(s, a_t, t)`` the expected loss in ``f`` is
    ``E[e^y | a_t, s] e^{-f} + f + const``, whose unique minimiser is
    ``f* = log E_{mu_{0t}(a_0 | a_t, s)}[exp(y)]``: the exact energy ``E_t`` of Eq. 12 (the
    MSE energy's minimiser is ``E[y | a_t, s]``, Jensen's lower bound of it). Where the
    posterior of ``a_0`` has two modes, ``f*`` is dominated by the one with the larger ``Q``,
    and so is its gradient, the guidance. The per-sample loss is a Bregman divergence of
    ``exp``: zero when ``f = y``, never negative.

    ``exp(beta Q)`` is heavy-tailed when ``beta`` times the critic's spread is large (tens on
    locomotion), and the few largest targets then dominate both the energy and its gradient
    noise. ``max_target`` caps ``y`` from above, which changes the target policy to
    ``mu min(exp(beta Q), exp(max_target))``: with the value baseline (``Q - V(s)``) and
    ``max_target = log 100`` that is IQL's advantage-weighted target with its weight clip.

    Args:
        energy_network: the trained energy network ``(a_t [*B,d], t [*B,1], s [*B,s]) -> [*B,1]``.
        noise_network: the frozen behaviour noise predictor (held frozen, not used by the
            target; the shared constructor of the energy losses).
        qvalue_network: the frozen critic ``(s, a) -> [*B, heads]`` (minimum over heads).

    Keyword Args:
        beta: inverse temperature. Defaults to 3.
        max_target: upper cap of ``y`` or ``None`` (default: the exact energy, no cap).
        schedule: the noise schedule. Defaults to ``VPSchedule()``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample losses ``[*B]``).

    Input keys (``set_keys``): ``observation`` ``[*B, s]``, ``action`` ``[*B, d]``.
    Output: ``loss_energy`` and the detached scalars ``target_mean``, ``energy_mean`` and
    ``target_capped_fraction`` (share of the batch whose ``y`` the cap moved).
    :meth:`energy_target` returns ``y`` (capped), ``noisy_action``, ``q`` and ``y_capped``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_aepo import EnergyNetwork, MLPNoisePredictor, TwinQNetwork
        >>> from torchrl_aepo.objectives import LogMeanExpEnergyLoss
        >>> loss = LogMeanExpEnergyLoss(EnergyNetwork(2, 4), MLPNoisePredictor(2, 4),
        ...                             TwinQNetwork(4, 2), max_target=4.6)
        >>> batch = TensorDict({"observation": torch.randn(32, 4),
        ...                     "action": torch.rand(32, 2) * 2 - 1}, batch_size=[32])
        >>> out = loss(batch)
        >>> out["loss_energy"].backward()
        >>> bool(out["loss_energy"] >= 0)
        True
    """

    def __init__(
        self,
        energy_network: nn.Module,
        noise_network: nn.Module,
        qvalue_network: nn.Module,
        *,
        beta: float = 3.0,
        max_target: float | None = None,
        schedule: VPSchedule | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            energy_network,
            noise_network,
            qvalue_network,
            beta=beta,
            schedule=schedule,
            reduction=reduction,
        )
        if max_target is not None and not math.isfinite(float(max_target)):
            raise ValueError(f"max_target must be a finite number or None, got {max_target!r}.")
        self.max_target = None if max_target is None else float(max_target)

    @property
    def out_keys(self) -> list[str]:
        return [*super().out_keys, "target_capped_fraction"]

    def _target(
        self, observation: Tensor, action: Tensor, time: Tensor, noise: Tensor
    ) -> dict[str, Tensor]:
        qvalue = self.qvalue_network(observation, action).min(-1, keepdim=True)[0]
        y = self.beta * qvalue
        capped = torch.zeros_like(y, dtype=torch.bool)
        if self.max_target is not None:
            capped = y > self.max_target
            y = y.clamp(max=self.max_target)
        return {
            "y": y,
            "noisy_action": self.schedule.add_noise(action, time, noise),
            "q": qvalue,
            "y_capped": capped,
        }

    def _regress(
        self, observation: Tensor, noisy_action: Tensor, time: Tensor, target: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Per-sample ``exp(y - f) - (y - f) - 1`` ``[*B]`` and the energy ``f`` ``[*B, 1]``."""
        energy = self.energy_network(noisy_action, time, observation)
        residual = target - energy
        return (torch.expm1(residual) - residual).squeeze(-1), energy

    def _diagnostics(self, target: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"target_capped_fraction": target["y_capped"].float().mean()}


class DPSEnergyLoss(TargetRegressionEnergyLoss):
    """DPS intermediate energy, Eq. 10: ``f_omega(s, a_t, t) ≈ beta Q(s, E[a_0 | a_t, s])``.

    For each sample draw ``t``, ``eps`` and ``a_t`` as in :class:`MSEEnergyLoss` and minimise

    .. math::

        L(\\omega) = \\mathbb{E}\\,\\big(f_\\omega(s, a_t, t) - \\beta Q(s, \\mu_{0|t})\\big)^2,
        \\qquad \\mu_{0|t} = \\operatorname{clip}\\Big(\\frac{a_t - \\sigma_t \\epsilon_\\theta(a_t, s, t)}{\\alpha_t}\\Big),

    with the frozen noise network (Tweedie's posterior mean, Eq. 18) and the frozen critic. The
    target is a deterministic function of ``a_t``, so the regression only smooths it over
    ``t`` and ``s``; it evaluates ``Q`` at the posterior *mean*, which at large ``t`` is a blend
    of behaviour modes that may itself be out of the data support.

    Args:
        energy_network: the trained energy network.
        noise_network: the frozen behaviour noise predictor ``(a_t, t, s) -> eps [*B, d]``.
        qvalue_network: the frozen critic (minimum over heads).

    Keyword Args:
        beta: inverse temperature. Defaults to 3.
        schedule: the noise schedule. Defaults to ``VPSchedule()``.
        clip_posterior_mean: ``(low, high)`` box for ``mu_{0|t}`` or ``None``. Defaults to
            ``(-1, 1)`` (as :class:`AnalyticEnergyLoss`, §13.5).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Input keys (``set_keys``): ``observation`` ``[*B, s]``, ``action`` ``[*B, d]``.
    Output: ``loss_energy`` and the detached scalars ``target_mean``, ``energy_mean``,
    ``mean_clip_fraction`` (fraction of the coordinates of ``mu_{0|t}`` moved by the clip).
    :meth:`energy_target` returns ``y``, ``noisy_action``, ``mu`` (clipped) and the boolean
    ``mu_clipped`` ``[*B, d]``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_aepo import EnergyNetwork, MLPNoisePredictor, TwinQNetwork
        >>> from torchrl_aepo.objectives.energy_baselines import DPSEnergyLoss
        >>> loss = DPSEnergyLoss(EnergyNetwork(2, 4), MLPNoisePredictor(2, 4), TwinQNetwork(4, 2))
        >>> batch = TensorDict({"observation": torch.randn(32, 4),
        ...                     "action": torch.rand(32, 2) * 2 - 1}, batch_size=[32])
        >>> out = loss(batch)
        >>> out["loss_energy"].backward()
        >>> float(out["mean_clip_fraction"]) <= 1.0
        True
    """

    def __init__(
        self,
        energy_network: nn.Module,
        noise_network: nn.Module,
        qvalue_network: nn.Module,
        *,
        beta: float = 3.0,
        schedule: VPSchedule | None = None,
        clip_posterior_mean: tuple[float, float] | None = (-1.0, 1.0),
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            energy_network,
            noise_network,
            qvalue_network,
            beta=beta,
            schedule=schedule,
            reduction=reduction,
        )
        if clip_posterior_mean is not None and not clip_posterior_mean[0] < clip_posterior_mean[1]:
            raise ValueError(
                f"clip_posterior_mean must be (low, high) with low < high, got {clip_posterior_mean}."
            )
        self.clip_posterior_mean = (
            None if clip_posterior_mean is None else tuple(float(x) for x in clip_posterior_mean)
        )

    @property
    def out_keys(self) -> list[str]:
        return [*super().out_keys, "mean_clip_fraction"]

    def _target(
        self, observation: Tensor, action: Tensor, time: Tensor, noise: Tensor
    ) -> dict[str, Tensor]:
        noisy_action = self.schedule.add_noise(action, time, noise)
        eps = self.noise_network(noisy_action, time, observation)
        mean = self.schedule.posterior_mean(noisy_action, eps, time)
        clipped = mean
        if self.clip_posterior_mean is not None:
            clipped = mean.clamp(*self.clip_posterior_mean)
        qvalue = self.qvalue_network(observation, clipped).min(-1, keepdim=True)[0]
        return {
            "y": self.beta * qvalue,
            "noisy_action": noisy_action,
            "mu": clipped,
            "mu_clipped": clipped != mean,
        }

    def _diagnostics(self, target: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"mean_clip_fraction": target["mu_clipped"].float().mean()}


@torch.no_grad()
def sample_support_actions(
    noise_network: nn.Module,
    observation: Tensor,
    num_support: int,
    *,
    solver: DPMSolver | None = None,
    action_dim: int | None = None,
    clip: tuple[float, float] | None = (-1.0, 1.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw ``K`` support actions per state from the (unguided) behaviour model, as QGPO does.

    Each state is repeated ``K`` times and ``a_T ~ N(0, I)`` is integrated by ``solver`` with
    the noise network alone (the behaviour policy ``mu(.|s)``).

    Args:
        noise_network: the behaviour noise predictor ``(a_t, t, s) -> eps`` (or a
            ``TensorDictModule`` wrapping one).
        observation: states ``[*B, s]``.
        num_support: ``K``.

    Keyword Args:
        solver: the ODE solver. Defaults to ``DPMSolver()`` (QGPO's 15-step DPM-Solver++ 2S).
        action_dim: ``d``; defaults to ``noise_network.action_dim``.
        clip: ``(low, high)`` box the samples are clamped to, or ``None``. Defaults to ``(-1, 1)``.
        generator: source of ``a_T``.

    Returns:
        the supports ``[*B, K, d]``, detached.

    Examples:
        >>> import torch
        >>> from torchrl_aepo import MLPNoisePredictor
        >>> net = MLPNoisePredictor(action_dim=2, obs_dim=4, num_cells=(32, 32))
        >>> sample_support_actions(net, torch.randn(8, 4), 16).shape
        torch.Size([8, 16, 2])
    """
    network = unwrap_module(noise_network)
    if num_support < 1:
        raise ValueError(f"num_support must be >= 1, got {num_support}.")
    if action_dim is None:
        action_dim = getattr(network, "action_dim", None)
        if action_dim is None:
            raise ValueError(
                "sample_support_actions: pass action_dim (the noise network has no `action_dim`)."
            )
    solver = solver if solver is not None else DPMSolver()
    batch_shape = observation.shape[:-1]
    states = observation.reshape(-1, 1, observation.shape[-1]).expand(-1, num_support, -1)
    states = states.reshape(-1, observation.shape[-1])
    x_T = torch.randn(
        (states.shape[0], action_dim),
        generator=generator,
        device=observation.device,
        dtype=observation.dtype,
    )
    actions = solver.sample(lambda x, t: network(x, t, states), x_T)
    if clip is not None:
        actions = actions.clamp(*clip)
    return actions.reshape(*batch_shape, num_support, action_dim)


class CEPEnergyLoss(EnergyLossBase):
    """QGPO's contrastive energy prediction (CEP) with ``K`` in-support actions per state.

    For each state ``s`` with supports ``a_0^{1:K}`` ``[*B, K, d]`` (behaviour-model samples,
    :func:`sample_support_actions`) draw one ``t ~ U(t_min, 1)`` per state and one
    ``eps^k ~ N(0, I)`` per support, set ``a_t^k = alpha_t a_0^k + sigma_t eps^k`` and minimise
    the cross-entropy between the two distributions over the supports

    .. math::

        L(\\omega) = -\\sum_{k=1}^K
            \\operatorname{softmax}_k\\big(\\beta Q(s, a_0^{1:K})\\big)\\,
            \\log \\operatorname{softmax}_k\\big(f_\\omega(s, a_t^{1:K}, t)\\big)

    per state (then reduced over ``[*B]``). The target weights are computed without gradient
    from the frozen critic (minimum over heads). The minimiser tends to the exact energy
    ``E_t`` (Eq. 12) up to a constant in ``(s, t)`` when ``K`` grows; with finite ``K`` it is
    the energy of a self-normalised importance-sampling estimate, biased toward uniform
    weights when ``exp(beta Q)`` is concentrated on few supports.

    Args:
        energy_network: the trained energy network ``(a_t [*B,d], t [*B,1], s [*B,s]) -> [*B,1]``.
        noise_network: the frozen behaviour noise predictor; draws the supports on the fly
            when the batch has none and ``num_support`` is set.
        qvalue_network: the frozen critic ``(s, a) -> [*B, heads]``.

    Keyword Args:
        beta: inverse temperature of the target weights. Defaults to 3.
        num_support: if set, a batch without supports gets ``num_support`` fresh supports per
            state from the behaviour model (``solver`` steps per batch; precompute them for
            speed, as QGPO does). Defaults to ``None`` (supports required in the batch).
        solver: the solver of those on-the-fly supports. Defaults to ``DPMSolver(schedule)``.
        schedule: the noise schedule. Defaults to ``VPSchedule()``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-state losses ``[*B]``).

    Input keys (``set_keys``): ``observation`` ``[*B, s]`` and ``support_action``
    ``[*B, K, d]`` (default key ``("support", "action")``). ``action`` is not read.
    Output: ``loss_energy`` and the detached scalars ``target_entropy`` (the entropy of the
    target weights, the loss's lower bound), ``target_ess`` (their mean effective sample size
    ``1 / sum_k p_k^2``, out of ``K``) and ``energy_mean``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_aepo import EnergyNetwork, MLPNoisePredictor, TwinQNetwork
        >>> from torchrl_aepo.objectives.energy_baselines import CEPEnergyLoss, sample_support_actions
        >>> noise = MLPNoisePredictor(2, 4, num_cells=(32, 32))
        >>> loss = CEPEnergyLoss(EnergyNetwork(2, 4), noise, TwinQNetwork(4, 2), beta=3.0)
        >>> obs = torch.randn(8, 4)
        >>> batch = TensorDict({"observation": obs,
        ...                     ("support", "action"): sample_support_actions(noise, obs, 16)},
        ...                    batch_size=[8])
        >>> out = loss(batch)
        >>> out["loss_energy"].backward()
        >>> bool(out["loss_energy"] >= out["target_entropy"])
        True
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys.

        Attributes:
            observation: conditioning state. Defaults to ``"observation"``.
            action: clean dataset action (not read by CEP). Defaults to ``"action"``.
            support_action: the ``K`` support actions ``[*B, K, d]``. Defaults to
                ``("support", "action")``.
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        support_action: NestedKey = ("support", "action")

    default_keys = _AcceptedKeys

    def __init__(
        self,
        energy_network: nn.Module,
        noise_network: nn.Module,
        qvalue_network: nn.Module,
        *,
        beta: float = 3.0,
        num_support: int | None = None,
        solver: DPMSolver | None = None,
        schedule: VPSchedule | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            energy_network, noise_network, qvalue_network, schedule=schedule, reduction=reduction
        )
        self.beta = _check_beta(beta)
        if num_support is not None and num_support < 2:
            raise ValueError(f"num_support must be >= 2 (a contrast needs two), got {num_support}.")
        self.num_support = num_support
        self.solver = solver if solver is not None else DPMSolver(self.schedule)

    @property
    def in_keys(self) -> list[NestedKey]:
        return [self.tensor_keys.observation, self.tensor_keys.support_action]

    @property
    def out_keys(self) -> list[str]:
        return ["loss_energy", "target_entropy", "target_ess", "energy_mean"]

    def _read_supports(self, tensordict: TensorDictBase) -> tuple[Tensor, Tensor]:
        """``(observation [*B, s], supports [*B, K, d])`` with key and shape checks."""
        net, name = self.energy_network, type(self).__name__
        obs_dim, action_dim = getattr(net, "obs_dim", None), getattr(net, "action_dim", None)
        observation = get_input(tensordict, self.tensor_keys.observation, name, obs_dim)
        key = self.tensor_keys.support_action
        if key not in tensordict.keys(include_nested=True) and self.num_support is not None:
            supports = sample_support_actions(
                self.noise_network,
                observation,
                self.num_support,
                solver=self.solver,
                action_dim=action_dim,
            )
        else:
            supports = get_input(tensordict, key, name, action_dim)
        if supports.shape[:-2] != observation.shape[:-1] or supports.ndim < 3:
            raise ValueError(
                f"{name}: {key!r} must have shape [*B, K, d] with [*B] the batch shape of the "
                f"observation {tuple(observation.shape)}, got {tuple(supports.shape)}."
            )
        if supports.shape[-2] < 2:
            raise ValueError(f"{name}: need K >= 2 supports per state, got {supports.shape[-2]}.")
        return observation, supports

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        """Compute the CEP cross-entropy ``loss_energy`` and diagnostics."""
        observation, supports = self._read_supports(tensordict)
        states = observation.unsqueeze(-2).expand(*supports.shape[:-1], observation.shape[-1])
        time = self.schedule.sample_time(
            (*observation.shape[:-1], 1, 1), device=supports.device, dtype=supports.dtype
        ).expand(*supports.shape[:-1], 1)
        noisy_action = self.schedule.add_noise(supports, time, torch.randn_like(supports))
        with torch.no_grad():
            qvalue = self.qvalue_network(states, supports).min(-1)[0]  # [*B, K]
            target = torch.softmax(self.beta * qvalue, dim=-1)
            log_target = torch.log_softmax(self.beta * qvalue, dim=-1)
            entropy = -(target * log_target).sum(-1)
        energy = self.energy_network(noisy_action, time, states).squeeze(-1)  # [*B, K]
        per_state = -(target * torch.log_softmax(energy, dim=-1)).sum(-1)
        return TensorDict(
            {
                "loss_energy": _reduce(per_state, self.reduction),
                "target_entropy": entropy.mean(),
                "target_ess": (1.0 / target.pow(2).sum(-1)).mean(),
                "energy_mean": energy.detach().mean(),
            },
            batch_size=[],
        )


class SupportPosteriorEnergyLoss(EnergyLossBase):
    """The exact intermediate energy of the empirical behaviour policy on ``K + 1`` actions.

    At each state the behaviour policy is represented by the ``K`` support actions
    ``a_0^{1:K} ~ mu(.|s)`` (behaviour-model samples, :func:`sample_support_actions`) and the
    dataset action ``a_0^{K+1} = a_0``, each with mass ``1 / (K + 1)``. For that discrete
    ``mu`` the posterior of Eq. 12 given ``a_t = alpha_t a_0 + sigma_t eps`` is exact,
    ``p_k(a_t) ∝ exp(-||a_t - alpha_t a_0^k||^2 / (2 sigma_t^2))``, and so is the energy

    .. math::

        y(s, a_t, t) = \\log \\sum_k p_k(a_t)\\, e^{\\beta Q(s, a_0^k)}
            = \\operatorname{logsumexp}_k\\big(\\ell_k + \\beta Q_k\\big)
              - \\operatorname{logsumexp}_k \\ell_k,
        \\qquad \\ell_k = -\\frac{\\lVert a_t - \\alpha_t a_0^k\\rVert^2}{2 \\sigma_t^2},

    computed in log space (no overflow however large ``beta Q``). The energy network is
    regressed on it, ``(f_omega(s, a_t, t) - y)^2``. As ``K`` grows ``y`` tends to the
    behaviour model's exact ``E_t``; unlike the dataset-only regressions (MSE, log-mean-exp),
    whose posterior at ``s`` holds only the actions the data has at (or near) ``s``, it sees
    every mode the behaviour model puts at ``s``; unlike :class:`CEPEnergyLoss` it runs the
    energy network once per sample (the supports only go through the frozen critic). Small
    ``t`` puts the weight on the support nearest ``a_t`` (the dataset action itself), large
    ``t`` spreads it evenly (``y`` then depends on ``s`` only: no guidance).

    Args:
        energy_network: the trained energy network ``(a_t [*B,d], t [*B,1], s [*B,s]) -> [*B,1]``.
        noise_network: the frozen behaviour noise predictor (held frozen; the supports come in
            the batch).
        qvalue_network: the frozen critic ``(s, a) -> [*B, heads]`` (minimum over heads).

    Keyword Args:
        beta: inverse temperature. Defaults to 3.
        schedule: the noise schedule. Defaults to ``VPSchedule()``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample losses ``[*B]``).

    Input keys (``set_keys``): ``observation`` ``[*B, s]``, ``action`` ``[*B, d]``,
    ``support_action`` ``[*B, K, d]`` (default ``("support", "action")``) and the optional
    ``time`` / ``noise`` of :class:`EnergyLossBase`. Output: ``loss_energy`` and the detached
    scalars ``target_mean``, ``energy_mean`` and ``posterior_ess`` (mean effective number of
    members ``1 / sum_k p_k^2`` under the posterior, out of ``K + 1``).
    :meth:`energy_target` returns ``y``, ``noisy_action`` and the posterior ``weights``
    ``[*B, K + 1]`` (the dataset action last).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_aepo import EnergyNetwork, MLPNoisePredictor, TwinQNetwork
        >>> from torchrl_aepo.objectives import SupportPosteriorEnergyLoss, sample_support_actions
        >>> noise = MLPNoisePredictor(2, 4, num_cells=(32, 32))
        >>> loss = SupportPosteriorEnergyLoss(EnergyNetwork(2, 4), noise, TwinQNetwork(4, 2))
        >>> obs = torch.randn(8, 4)
        >>> batch = TensorDict({"observation": obs, "action": torch.rand(8, 2) * 2 - 1,
        ...                     ("support", "action"): sample_support_actions(noise, obs, 16)},
        ...                    batch_size=[8])
        >>> out = loss(batch)
        >>> out["loss_energy"].backward()
        >>> 1.0 <= float(out["posterior_ess"]) <= 17.0
        True
    """

    @dataclass
    class _AcceptedKeys(EnergyLossBase._AcceptedKeys):
        """Configurable tensordict keys: :class:`EnergyLossBase`'s and the supports'.

        Attributes:
            support_action: the ``K`` support actions ``[*B, K, d]``. Defaults to
                ``("support", "action")``.
            support_value: optional precomputed critic values of the supports ``[*B, K]``
                (:meth:`support_values`; the critic is frozen, so a plan computes them once).
                Defaults to ``("support", "value")``.
        """

        support_action: NestedKey = ("support", "action")
        support_value: NestedKey = ("support", "value")

    default_keys = _AcceptedKeys

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

    @torch.no_grad()
    def support_values(self, observation: Tensor, supports: Tensor) -> Tensor:
        """The frozen critic's ``Q(s, a_0^k)`` (minimum over heads) ``[*B, K]`` of the supports
        ``[*B, K, d]`` at ``observation`` ``[*B, s]``: what the batch key ``support_value``
        may hold instead of the loss recomputing it every step."""
        states = observation.unsqueeze(-2).expand(*supports.shape[:-1], observation.shape[-1])
        return self.qvalue_network(states, supports).min(-1)[0]

    @property
    def in_keys(self) -> list[NestedKey]:
        return [*super().in_keys, self.tensor_keys.support_action]

    @property
    def out_keys(self) -> list[str]:
        return ["loss_energy", "target_mean", "energy_mean", "posterior_ess"]

    def energy_target(
        self,
        observation: Tensor,
        action: Tensor,
        supports: Tensor,
        time: Tensor,
        noise: Tensor,
        support_values: Tensor | None = None,
    ) -> TensorDict:
        """The detached target for given ``(s [*B,s], a_0 [*B,d], supports [*B,K,d], t [*B,1],
        eps [*B,d])`` and optionally the supports' precomputed :meth:`support_values`
        ``[*B, K]``: a TensorDict with ``y`` ``[*B, 1]``, ``noisy_action`` ``[*B, d]`` and
        ``weights`` ``[*B, K + 1]``."""
        with torch.no_grad():
            members = torch.cat([supports, action.unsqueeze(-2)], dim=-2)  # [*B, K+1, d]
            if support_values is None:
                support_values = self.support_values(observation, supports)
            data_value = self.qvalue_network(observation, action).min(-1, keepdim=True)[0]
            value = self.beta * torch.cat([support_values, data_value], dim=-1)  # [*B, K+1]
            alpha, sigma = self.schedule.alpha_sigma(time)  # [*B, 1]
            noisy_action = self.schedule.add_noise(action, time, noise)
            distance = (noisy_action.unsqueeze(-2) - alpha.unsqueeze(-1) * members).pow(2).sum(-1)
            log_weights = torch.log_softmax(-distance / (2 * sigma.pow(2)), dim=-1)
            y = torch.logsumexp(log_weights + value, dim=-1, keepdim=True)
        return TensorDict(
            {"y": y, "noisy_action": noisy_action, "weights": log_weights.exp()},
            batch_size=action.shape[:-1],
        )

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        """Compute ``loss_energy`` and diagnostics on a batch with support actions."""
        observation, action = self._read_batch(tensordict)
        name, key = type(self).__name__, self.tensor_keys.support_action
        supports = get_input(tensordict, key, name, action.shape[-1])
        if supports.ndim < 3 or supports.shape[:-2] != action.shape[:-1]:
            raise ValueError(
                f"{name}: {key!r} must have shape [*B, K, d] with [*B] the batch shape of the "
                f"action {tuple(action.shape)}, got {tuple(supports.shape)}."
            )
        values = tensordict.get(self.tensor_keys.support_value, None)
        if values is not None and values.shape != supports.shape[:-1]:
            raise ValueError(
                f"{name}: {self.tensor_keys.support_value!r} must have shape [*B, K] = "
                f"{tuple(supports.shape[:-1])} (one critic value per support), got "
                f"{tuple(values.shape)}."
            )
        time, noise = self._given_or_sampled_time_and_noise(tensordict, action)
        target = self.energy_target(observation, action, supports, time, noise, values)
        per_sample, energy = self._regress(observation, target["noisy_action"], time, target["y"])
        weights = target["weights"]
        return TensorDict(
            {
                "loss_energy": _reduce(per_sample, self.reduction),
                "target_mean": target["y"].mean(),
                "energy_mean": energy.detach().mean(),
                "posterior_ess": (1.0 / weights.pow(2).sum(-1)).mean(),
            },
            batch_size=[],
        )
