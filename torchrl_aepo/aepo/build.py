"""Builders: AEPO's networks, losses (with their target updaters), energy loss and actor."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDictBase
from torch import Tensor, nn
from torchrl.objectives import SoftUpdate

from torchrl_aepo.aepo.config import AEPOConfig, GammaTableConfig, ModelConfig, TrainConfig
from torchrl_aepo.diffusion.schedule import VPSchedule


@dataclass
class AEPONetworks:
    """AEPO's networks.

    Attributes:
        noise: the trained noise predictor ``eps_theta(a_t, t, s)``.
        behaviour: a frozen copy of ``noise`` that receives the (EMA) weights once the
            behaviour model is trained; the energy target, the ``Gamma`` table and the actor
            use it (:meth:`TrainingPlan.sync_behaviour`).
        qvalue: twin Q ``(s, a) -> [*B, 2]``. value: ``V(s) -> [*B, 1]``.
        energy: the intermediate energy ``f(a_t, t, s) -> [*B, 1]``.
    """

    noise: nn.Module
    behaviour: nn.Module
    qvalue: nn.Module
    value: nn.Module
    energy: nn.Module


def build_networks(
    model: ModelConfig,
    obs_dim: int,
    action_dim: int,
    device: torch.device | str | None = None,
) -> AEPONetworks:
    """The networks of ``model`` for ``obs_dim``-dimensional states and ``action_dim`` actions."""
    from torchrl_aepo.nets import (
        EnergyNetwork,
        MLPNoisePredictor,
        TwinQNetwork,
        UMLPNoisePredictor,
        ValueNetwork,
    )

    if model.noise_network == "umlp":
        noise = UMLPNoisePredictor(action_dim, obs_dim, widths=tuple(model.noise_widths))
    elif model.noise_network == "mlp":
        noise = MLPNoisePredictor(action_dim, obs_dim, num_cells=tuple(model.noise_num_cells))
    else:
        raise ValueError(f"model.noise_network must be umlp or mlp, got {model.noise_network!r}.")
    noise = noise.to(device)
    return AEPONetworks(
        noise=noise,
        behaviour=copy.deepcopy(noise).requires_grad_(False).eval(),
        qvalue=TwinQNetwork(obs_dim, action_dim, num_cells=tuple(model.qvalue_num_cells)).to(
            device
        ),
        value=ValueNetwork(obs_dim, num_cells=tuple(model.value_num_cells)).to(device),
        energy=EnergyNetwork(action_dim, obs_dim, num_cells=tuple(model.energy_num_cells)).to(
            device
        ),
    )


# ------------------------------------------------------------------------------------- losses
@dataclass
class AEPOLosses:
    """The behaviour and critic losses with their target-parameter updaters.

    Attributes:
        diffusion: :class:`~torchrl_aepo.DiffusionLoss` (Eq. 7).
        diffusion_ema: its EMA ``SoftUpdate``, or ``None`` without EMA.
        critic: :class:`~torchrl_aepo.ExpectileLoss` (Eq. 27).
        critic_target: the target-Q ``SoftUpdate``.
    """

    diffusion: nn.Module
    diffusion_ema: SoftUpdate | None
    critic: nn.Module
    critic_target: SoftUpdate


def _maybe_compile(loss: nn.Module, compile: Mapping[str, Any] | None) -> nn.Module:
    """Compile ``loss``'s forward in place (keeps parameters, state-dict keys and updaters)."""
    if compile is not None:
        loss.compile(**dict(compile))
    return loss


def build_losses(
    nets: AEPONetworks,
    aepo: AEPOConfig,
    train: TrainConfig,
    schedule: VPSchedule | None = None,
    compile: Mapping[str, Any] | None = None,
) -> AEPOLosses:
    """``DiffusionLoss`` (+ EMA) on ``nets.noise`` and ``ExpectileLoss`` on ``nets.qvalue/value``.

    ``compile``: ``torch.compile`` keyword arguments (``{}`` for the defaults) to compile each
    loss's forward in place, or ``None``.
    """
    from torchrl_aepo.objectives import DiffusionLoss, ExpectileLoss

    ema_decay = train.diffusion.ema_decay
    diffusion = DiffusionLoss(nets.noise, schedule=schedule, ema=ema_decay is not None)
    critic = ExpectileLoss(
        nets.qvalue, nets.value, expectile=float(aepo.expectile), discount=float(aepo.discount)
    )
    return AEPOLosses(
        diffusion=_maybe_compile(diffusion, compile),
        diffusion_ema=None if ema_decay is None else SoftUpdate(diffusion, tau=1.0 - ema_decay),
        critic=_maybe_compile(critic, compile),
        critic_target=SoftUpdate(critic, tau=float(train.critic.target_tau)),
    )


class AdvantageCritic(nn.Module):
    """``Q(s, a) - V(s)`` per head: the critic with a state-only baseline removed.

    Used by ``energy_baseline="value"``: the energy target then regresses ``beta (Q - V)``
    instead of ``beta Q``. ``V(s)`` does not depend on the action, so ``grad_a Q``, the
    posterior terms and hence the guidance ``grad_a f`` are unchanged; the network no longer
    has to fit the large state-dependent offset ``beta V(s)``.

    Example:
        >>> from torchrl_aepo import TwinQNetwork, ValueNetwork
        >>> critic = AdvantageCritic(TwinQNetwork(3, 1), ValueNetwork(3))
        >>> critic(torch.zeros(5, 3), torch.zeros(5, 1)).shape
        torch.Size([5, 2])
    """

    def __init__(self, qvalue: nn.Module, value: nn.Module) -> None:
        super().__init__()
        self.qvalue, self.value = qvalue, value
        self.obs_dim = getattr(qvalue, "obs_dim", None)
        self.action_dim = getattr(qvalue, "action_dim", None)

    def forward(self, observation: Tensor, action: Tensor) -> Tensor:
        """``[*B, s], [*B, d] -> [*B, heads]``."""
        return self.qvalue(observation, action) - self.value(observation)


def build_energy_loss(
    nets: AEPONetworks,
    losses: AEPOLosses,
    aepo: AEPOConfig,
    posterior_statistics: Any,
    compile: Mapping[str, Any] | None = None,
) -> nn.Module:
    """``AnalyticEnergyLoss`` (Eqs. 25-26) on the frozen behaviour model and target critic."""
    from torchrl_aepo.objectives import AnalyticEnergyLoss, frozen_view

    critic = losses.critic.target_qvalue_network()
    if aepo.energy_baseline == "value":
        critic = AdvantageCritic(critic, frozen_view(nets.value))
    elif aepo.energy_baseline not in (None, "none"):
        raise ValueError(
            f"aepo.energy_baseline must be none or value, got {aepo.energy_baseline!r}."
        )
    clip = aepo.clip_posterior_mean
    loss = AnalyticEnergyLoss(
        nets.energy,
        nets.behaviour,
        critic,
        posterior_statistics,
        beta=float(aepo.beta),
        posterior=int(aepo.posterior),
        clip_posterior_mean=None if clip is None else tuple(clip),
    )
    return _maybe_compile(loss, compile)


def estimate_posterior_statistics(
    behaviour: nn.Module,
    dataset: TensorDictBase,
    table: GammaTableConfig,
    schedule: VPSchedule | None = None,
    generator: torch.Generator | None = None,
) -> Any:
    """The ``Gamma(t)`` / Posterior-2 tables of ``behaviour`` on ``dataset``'s (s, a) pairs."""
    from torchrl_aepo.objectives import PosteriorStatistics

    return PosteriorStatistics.estimate(
        behaviour,
        dataset["observation"],
        dataset["action"],
        schedule=schedule,
        num_times=int(table.num_times),
        samples_per_time=int(table.samples_per_time),
        batch_size=int(table.batch_size),
        generator=generator,
    )


# -------------------------------------------------------------------------------------- actor
def build_actor(
    nets: AEPONetworks,
    losses: AEPOLosses,
    aepo: AEPOConfig,
    *,
    action_low: Tensor | float = -1.0,
    action_high: Tensor | float = 1.0,
    guidance: float | None = None,
    deterministic_seed: int = 0,
    compile: Mapping[str, Any] | None = None,
) -> Any:
    """The AEPO policy: guided DPM-Solver over ``nets.behaviour`` and ``nets.energy``.

    Args:
        nets / losses / aepo: as trained; the target critic picks among candidates when
            ``aepo.selection`` is not ``"first"``.
        action_low / action_high: the policy's action box (``[-1, 1]`` when the data's
            actions were scaled to it).
        guidance: overrides ``aepo.guidance``.
        deterministic_seed: seed of the actor's DETERMINISTIC-exploration sample.
        compile: ``torch.compile`` options for the solver loop, or ``None``.
    """
    from torchrl.data import Bounded

    from torchrl_aepo.actor import AEPOActor
    from torchrl_aepo.diffusion.solver import DPMSolver

    d = nets.energy.action_dim
    low = torch.as_tensor(action_low, dtype=torch.float32).expand(d).clone()
    high = torch.as_tensor(action_high, dtype=torch.float32).expand(d).clone()
    solver = DPMSolver(losses.diffusion.schedule, **dataclasses.asdict(aepo.solver))
    qvalue = losses.critic.target_qvalue_network() if aepo.selection != "first" else None
    return AEPOActor(
        nets.behaviour,
        nets.energy,
        action_spec=Bounded(low, high, shape=low.shape, dtype=torch.float32),
        guidance_scale=float(aepo.guidance if guidance is None else guidance),
        rescale=bool(aepo.rescale),
        solver=solver,
        num_candidates=int(aepo.num_candidates),
        selection=str(aepo.selection),
        qvalue_network=qvalue,
        deterministic_seed=int(deterministic_seed),
        compile=False if compile is None else dict(compile),
    )
