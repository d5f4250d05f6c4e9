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
        critic: the critic of ``aepo.critic`` (:func:`build_critic_loss`):
            :class:`~torchrl_aepo.ExpectileLoss` (Eq. 27, the default), ``ISQLLoss`` or
            ``CQLCriticLoss``.
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


def build_critic_loss(nets: AEPONetworks, aepo: AEPOConfig) -> nn.Module:
    """The critic of ``aepo.critic`` on ``nets.qvalue`` / ``nets.value``.

    * ``"expectile"``: :class:`~torchrl_aepo.objectives.ExpectileLoss` (IQL, Eq. 27);
    * ``"isql"``: :class:`~torchrl_aepo.objectives.ISQLLoss` (QGPO's softmax backup over
      ``aepo.num_support`` behaviour-model actions at ``s'``, ``beta_Q = aepo.isql_beta``);
    * ``"cql"``: :class:`~torchrl_aepo.objectives.CQLCriticLoss` (penalty weight
      ``aepo.cql_alpha`` over ``aepo.cql_num_random`` uniform actions in ``[-1, 1]``, the
      training box, and the supports at ``s``).

    For ``isql``/``cql`` ``nets.value`` is trained as a state baseline (for
    ``energy_baseline=value``) and does not enter the TD target.
    """
    from torchrl_aepo.objectives import CQLCriticLoss, ExpectileLoss, ISQLLoss

    discount = float(aepo.discount)
    if aepo.critic == "expectile":
        return ExpectileLoss(
            nets.qvalue, nets.value, expectile=float(aepo.expectile), discount=discount
        )
    if aepo.critic == "isql":
        return ISQLLoss(nets.qvalue, nets.value, beta_q=float(aepo.isql_beta), discount=discount)
    if aepo.critic == "cql":
        return CQLCriticLoss(
            nets.qvalue,
            nets.value,
            alpha=float(aepo.cql_alpha),
            num_random=int(aepo.cql_num_random),
            temperature=float(aepo.cql_temperature),
            discount=discount,
        )
    raise ValueError(f"aepo.critic must be expectile, isql or cql, got {aepo.critic!r}.")


def build_losses(
    nets: AEPONetworks,
    aepo: AEPOConfig,
    train: TrainConfig,
    schedule: VPSchedule | None = None,
    compile: Mapping[str, Any] | None = None,
) -> AEPOLosses:
    """``DiffusionLoss`` (+ EMA) on ``nets.noise`` and the critic of ``aepo.critic``
    (:func:`build_critic_loss`) with its target update.

    ``compile``: ``torch.compile`` keyword arguments (``{}`` for the defaults) to compile each
    loss's forward in place, or ``None``.
    """
    from torchrl_aepo.objectives import DiffusionLoss

    ema_decay = train.diffusion.ema_decay
    diffusion = DiffusionLoss(nets.noise, schedule=schedule, ema=ema_decay is not None)
    critic = build_critic_loss(nets, aepo)
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
    """The energy loss of ``aepo.energy`` on the frozen behaviour model and target critic.

    * ``"analytic"``: :class:`~torchrl_aepo.objectives.AnalyticEnergyLoss` (AEPO, Eqs. 25-26;
      needs ``posterior_statistics``);
    * ``"mse"`` / ``"dps"``: :class:`~torchrl_aepo.objectives.MSEEnergyLoss` /
      :class:`~torchrl_aepo.objectives.DPSEnergyLoss` (Eq. 10's inexact energies);
    * ``"log_mean_exp"``: :class:`~torchrl_aepo.objectives.LogMeanExpEnergyLoss` (the exact
      energy of Eq. 12 by regression, its target capped at ``aepo.energy_max_target``);
    * ``"support_posterior"``: :class:`~torchrl_aepo.objectives.SupportPosteriorEnergyLoss`
      (the exact energy of the support actions plus the dataset action; reads the supports as
      ``"cep"`` does);
    * ``"cep"``: :class:`~torchrl_aepo.objectives.CEPEnergyLoss` (QGPO's contrastive energy);
      it reads ``aepo.num_support`` support actions at ``s`` from the batch key
      ``("support", "action")``, which the plan's ``supports`` stage provides.

    With ``aepo.energy_baseline="value"`` the critic is ``Q - V(s)`` (:class:`AdvantageCritic`).
    """
    from torchrl_aepo.objectives import (
        AnalyticEnergyLoss,
        CEPEnergyLoss,
        DPSEnergyLoss,
        LogMeanExpEnergyLoss,
        MSEEnergyLoss,
        SupportPosteriorEnergyLoss,
        frozen_view,
    )

    critic = losses.critic.target_qvalue_network()
    if aepo.energy_baseline == "value":
        critic = AdvantageCritic(critic, frozen_view(nets.value))
    elif aepo.energy_baseline not in (None, "none"):
        raise ValueError(
            f"aepo.energy_baseline must be none or value, got {aepo.energy_baseline!r}."
        )
    clip = aepo.clip_posterior_mean
    clip = None if clip is None else tuple(clip)
    beta = float(aepo.beta)
    if aepo.energy == "analytic":
        if posterior_statistics is None:
            raise ValueError("aepo.energy=analytic needs the posterior statistics (Gamma table).")
        loss = AnalyticEnergyLoss(
            nets.energy,
            nets.behaviour,
            critic,
            posterior_statistics,
            beta=beta,
            posterior=int(aepo.posterior),
            clip_posterior_mean=clip,
            variance_weight=float(aepo.variance_weight),
        )
    elif aepo.energy == "mse":
        loss = MSEEnergyLoss(nets.energy, nets.behaviour, critic, beta=beta)
    elif aepo.energy == "dps":
        loss = DPSEnergyLoss(
            nets.energy, nets.behaviour, critic, beta=beta, clip_posterior_mean=clip
        )
    elif aepo.energy == "log_mean_exp":
        loss = LogMeanExpEnergyLoss(
            nets.energy, nets.behaviour, critic, beta=beta, max_target=aepo.energy_max_target
        )
    elif aepo.energy == "support_posterior":
        loss = SupportPosteriorEnergyLoss(nets.energy, nets.behaviour, critic, beta=beta)
    elif aepo.energy == "cep":
        loss = CEPEnergyLoss(nets.energy, nets.behaviour, critic, beta=beta)
    else:
        raise ValueError(
            "aepo.energy must be analytic, mse, dps, cep, log_mean_exp or support_posterior, "
            f"got {aepo.energy!r}."
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
            ``aepo.selection`` is ``"argmax_q"`` or ``"softmax_q"``.
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
    picks_by_q = aepo.selection in ("argmax_q", "softmax_q")
    qvalue = losses.critic.target_qvalue_network() if picks_by_q else None
    return AEPOActor(
        nets.behaviour,
        nets.energy,
        action_spec=Bounded(low, high, shape=low.shape, dtype=torch.float32),
        guidance_scale=float(aepo.guidance if guidance is None else guidance),
        rescale=bool(aepo.rescale),
        latent_scale=float(aepo.latent_scale),
        clip_denoised=bool(aepo.clip_denoised),
        solver=solver,
        num_candidates=int(aepo.num_candidates),
        selection=str(aepo.selection),
        qvalue_network=qvalue,
        deterministic_seed=int(deterministic_seed),
        compile=False if compile is None else dict(compile),
    )
