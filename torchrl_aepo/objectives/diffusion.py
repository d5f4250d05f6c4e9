"""Noise-prediction loss of the diffusion behaviour model (``aepo-math.md`` §3, Eq. 7)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.utils import NestedKey
from torch import nn
from torchrl.objectives import LossModule
from torchrl.objectives.utils import _reduce

from torchrl_aepo.diffusion.schedule import VPSchedule
from torchrl_aepo.objectives.common import check_loss_options, get_input, unwrap_module

__all__ = ["DiffusionLoss"]


class DiffusionLoss(LossModule):
    """Denoising (noise-prediction) loss of the VP-SDE behaviour model, Eq. 7.

    .. math::

        L(\\theta) = \\mathbb{E}_{t \\sim U(t_{min}, 1),\\,(s, a_0) \\sim D,\\,\\epsilon}
        \\big\\| \\epsilon_\\theta(\\alpha_t a_0 + \\sigma_t \\epsilon, s, t) - \\epsilon \\big\\|_2^2

    The squared error is summed over action dimensions (per sample ``[*B]``), multiplied by
    the optional per-sample ``weight``, then reduced over the batch with ``reduction``. With
    weights ``w(s, a_0) >= 0`` the minimiser is the noise predictor of the reweighted data
    ``mu_w(a | s) ∝ w(s, a) mu(a | s)`` (e.g. ``w = exp(beta A)``: the model of
    ``mu exp(beta A)`` itself, :func:`~torchrl_aepo.aepo.advantage_weights`).

    Args:
        noise_network: a noise predictor ``eps(noisy_action [*B,d], time [*B,1], observation [*B,s])
            -> [*B,d]`` such as :class:`~torchrl_aepo.UMLPNoisePredictor`, or a
            ``TensorDictModule`` wrapping one (the loss reads its inputs with its own
            ``tensor_keys``).

    Keyword Args:
        schedule: the noise schedule. Defaults to :class:`~torchrl_aepo.VPSchedule` ``()``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample losses ``[*B]``).
        ema: if ``True``, keep an exponential moving average of the network parameters as the
            loss's target parameters (``target_noise_network_params``), updated by
            ``torchrl.objectives.SoftUpdate(loss, tau=1 - ema_decay)``; export it with
            :meth:`sampling_network`. Defaults to ``False``.

    Input keys (``set_keys``): ``observation`` ``[*B, s]``, ``action`` ``[*B, d]``; optional
    ``time`` ``[*B, 1]`` and ``noise`` ``[*B, d]`` (``"diffusion_time"`` / ``"diffusion_noise"``):
    when present they are used instead of drawing ``t`` and ``epsilon`` from torch's global
    generator (e.g. per-member generators of :class:`~torchrl_aepo.stacked.StackedDiffusion`);
    optional ``weight`` ``[*B]`` or ``[*B, 1]`` (``"diffusion_weight"``), finite and ``>= 0``.
    Output: ``loss_diffusion`` (scalar, or ``[*B]`` with ``reduction="none"``).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_aepo import DiffusionLoss, UMLPNoisePredictor
        >>> loss = DiffusionLoss(UMLPNoisePredictor(action_dim=3, obs_dim=11))
        >>> batch = TensorDict({"observation": torch.randn(32, 11),
        ...                     "action": torch.rand(32, 3) * 2 - 1}, batch_size=[32])
        >>> out = loss(batch)
        >>> out["loss_diffusion"].backward()
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys.

        Attributes:
            observation: conditioning state. Defaults to ``"observation"``.
            action: clean dataset action ``a_0``. Defaults to ``"action"``.
            time: optional given diffusion times. Defaults to ``"diffusion_time"``.
            noise: optional given noise ``epsilon``. Defaults to ``"diffusion_noise"``.
            weight: optional per-sample weight of the squared error. Defaults to
                ``"diffusion_weight"``.
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        time: NestedKey = "diffusion_time"
        noise: NestedKey = "diffusion_noise"
        weight: NestedKey = "diffusion_weight"

    default_keys = _AcceptedKeys
    noise_network: nn.Module
    noise_network_params: TensorDictParams
    target_noise_network_params: TensorDictParams

    def __init__(
        self,
        noise_network: nn.Module,
        *,
        schedule: VPSchedule | None = None,
        reduction: str = "mean",
        ema: bool = False,
    ) -> None:
        super().__init__()
        check_loss_options(reduction=reduction)
        self.convert_to_functional(
            unwrap_module(noise_network), "noise_network", create_target_params=ema
        )
        self.schedule = schedule if schedule is not None else VPSchedule()
        self.reduction = reduction
        self.ema = ema

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    @property
    def in_keys(self) -> list[NestedKey]:
        return [self.tensor_keys.observation, self.tensor_keys.action]

    @property
    def out_keys(self) -> list[str]:
        return ["loss_diffusion"]

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        """Compute ``loss_diffusion`` on a batch of ``(observation, action)`` pairs."""
        net = self.noise_network
        name = type(self).__name__
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
        time = tensordict.get(self.tensor_keys.time, None)
        if time is None:
            time = self.schedule.sample_time(
                (*action.shape[:-1], 1), device=action.device, dtype=action.dtype
            )
        noise = tensordict.get(self.tensor_keys.noise, None)
        if noise is None:
            noise = torch.randn_like(action)
        noisy_action = self.schedule.add_noise(action, time, noise)
        per_sample = (net(noisy_action, time, observation) - noise).pow(2).sum(-1)
        weight = tensordict.get(self.tensor_keys.weight, None)
        if weight is not None:
            per_sample = per_sample * self._check_weight(weight, per_sample.shape, name)
        return TensorDict({"loss_diffusion": _reduce(per_sample, self.reduction)}, batch_size=[])

    def _check_weight(self, weight: torch.Tensor, shape: torch.Size, name: str) -> torch.Tensor:
        if weight.shape == (*shape, 1):
            weight = weight.squeeze(-1)
        if weight.shape != shape:
            raise ValueError(
                f"{name}: {self.tensor_keys.weight!r} has shape {tuple(weight.shape)}; expected "
                f"{tuple(shape)} or {(*shape, 1)} (one weight per sample)."
            )
        if not torch.compiler.is_compiling() and not bool(
            (torch.isfinite(weight) & (weight >= 0)).all()
        ):
            raise ValueError(
                f"{name}: {self.tensor_keys.weight!r} has negative or non-finite entries "
                f"(min {float(weight.min())}); the weights must be finite and >= 0."
            )
        return weight

    def sampling_network(self, ema: bool | None = None) -> nn.Module:
        """A standalone copy of the noise network for sampling (the EMA weights if kept).

        Args:
            ema: use the EMA weights; defaults to ``True`` when the loss keeps them.

        Returns:
            a deep copy of the network, detached from the loss, in eval mode.
        """
        ema = self.ema if ema is None else ema
        if ema and not self.ema:
            raise ValueError("This DiffusionLoss keeps no EMA weights; build it with ema=True.")
        network = copy.deepcopy(self.noise_network)
        if ema:
            self.target_noise_network_params.data.to_module(network)
            network = copy.deepcopy(network)  # own storage, not the loss's target buffers
        return network.eval().requires_grad_(False)
