"""AEPO assembled in one place: typed configuration, builders and the training plan.

Everything that makes the pieces of this package *AEPO* lives here (``aepo-math.md`` §9):

* :class:`ModelConfig`, :class:`AEPOConfig` and :class:`TrainConfig` mirror the ``model``,
  ``aepo`` and ``train`` groups of ``configs/config.yaml`` (``from_dict`` reads a plain or
  OmegaConf mapping and refuses unknown keys; :func:`config_problems` lists every bad value);
* :func:`build_networks` -> :class:`AEPONetworks` (noise predictor, its frozen *behaviour*
  copy, twin Q, V, energy network), :func:`build_losses` -> :class:`AEPOLosses`
  (``DiffusionLoss`` + EMA, ``ExpectileLoss`` + target update), :func:`build_energy_loss`
  (``AnalyticEnergyLoss``, optionally on the advantage ``Q - V``) and :func:`build_actor`
  (:class:`~torchrl_aepo.AEPOActor`);
* :func:`build_training_plan` -> :class:`TrainingPlan`: the stages the generic
  :class:`~torchrl_aepo.trainer.OfflineTrainer` runs, either *staged* (``diffusion -> critic
  -> gamma -> energy``, QGPO's practice and the default) or *joint* (Algorithm 1's single
  loop, refreshing the ``Gamma(t)`` table periodically). The plan owns the one invariant that
  ties the stages together: the (EMA) weights of the noise network are copied into the
  behaviour network (:meth:`TrainingPlan.sync_behaviour`) before the ``Gamma`` table, the
  energy target or an evaluation use it. It also builds the energy loss late, once the
  critic and the table exist.

Example (the whole algorithm in a few lines, no hydra):
    >>> import tempfile
    >>> from torchrl_aepo import OfflineTrainer, build_local_dataset, make_offline_data
    >>> from torchrl_aepo.aepo import AEPOConfig, ModelConfig, TrainConfig, build_actor
    >>> from torchrl_aepo.aepo import build_losses, build_networks, build_training_plan
    >>> root = tempfile.mkdtemp()
    >>> _ = build_local_dataset("pendulum-medium", root=root, num_steps=600, ref_episodes=2)
    >>> rb, meta = make_offline_data("pendulum-medium", root=root, seed=0)
    >>> model = ModelConfig.small()
    >>> train = TrainConfig.budget(steps=5, batch_size=32)
    >>> aepo = AEPOConfig(beta=0.3, energy_baseline="value")
    >>> nets = build_networks(model, meta.obs_dim, meta.action_dim)
    >>> losses = build_losses(nets, aepo, train)
    >>> plan = build_training_plan(nets, losses, rb[:], aepo=aepo, train=train)
    >>> _ = OfflineTrainer(plan.stages, rb, run_dir=tempfile.mkdtemp(), progress_bar=False).train()
    >>> actor = build_actor(nets, losses, aepo, action_low=-2.0, action_high=2.0)
    >>> actor(rb.sample(4))["action"].shape
    torch.Size([4, 1])
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from tensordict import TensorDictBase
from torch import Tensor, nn
from torchrl._utils import timeit
from torchrl.objectives import SoftUpdate

from torchrl_aepo.diffusion.schedule import VPSchedule
from torchrl_aepo.trainer import OptimizerStep, Stage, adam_step

__all__ = [
    "AEPOConfig",
    "ConfigKeyError",
    "AEPOLosses",
    "AEPONetworks",
    "AdvantageCritic",
    "CriticStageConfig",
    "DiffusionStageConfig",
    "EnergyStageConfig",
    "GammaTableConfig",
    "JointStageConfig",
    "ModelConfig",
    "SolverConfig",
    "TrainConfig",
    "TrainingPlan",
    "build_actor",
    "build_energy_loss",
    "build_losses",
    "build_networks",
    "build_training_plan",
    "config_problems",
    "estimate_posterior_statistics",
]

PLANS = ("staged", "joint")
STAGED = ("diffusion", "critic", "gamma", "energy")
JOINT = ("joint",)


# ------------------------------------------------------------------------------ configuration
def _from_mapping(cls: type, mapping: Mapping[str, Any] | None, path: str) -> Any:
    """Build the dataclass ``cls`` from ``mapping``, recursing into dataclass-typed fields."""
    if mapping is None:
        return cls()
    if isinstance(mapping, cls):
        return mapping
    if not isinstance(mapping, Mapping):
        try:  # an OmegaConf DictConfig
            from omegaconf import OmegaConf

            mapping = OmegaConf.to_container(mapping, resolve=True)
        except Exception:  # noqa: BLE001 - not a config object either
            raise TypeError(
                f"{path or cls.__name__}: expected a mapping, got {mapping!r}."
            ) from None
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        raise ConfigKeyError(
            f"unknown key(s) {[f'{path}{k}' for k in unknown]}; "
            f"{path.rstrip('.') or cls.__name__} takes {sorted(names)}."
        )
    values = {}
    for name, value in mapping.items():
        default = names[name].default_factory  # dataclass-typed fields use a default factory
        if default is not dataclasses.MISSING and dataclasses.is_dataclass(default):
            value = _from_mapping(default, value, f"{path}{name}.")
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)


class ConfigKeyError(KeyError):
    """An unknown configuration key (the message names it and lists the valid ones)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class _Config:
    """``from_dict`` / ``to_dict`` for the configuration dataclasses."""

    _group = ""  # the yaml group, the prefix of key names in messages

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any] | None):
        """Build from a plain dict or an OmegaConf node; unknown keys raise ``ConfigKeyError``."""
        return _from_mapping(cls, mapping, cls._group)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict (tuples become lists)."""
        return _jsonable(dataclasses.asdict(self))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


_WIDTH_FIELDS = (
    "noise_widths",
    "noise_num_cells",
    "qvalue_num_cells",
    "value_num_cells",
    "energy_num_cells",
)


@dataclass(frozen=True)
class ModelConfig(_Config):
    """Network sizes (the ``model`` group).

    Attributes:
        noise_network: ``"umlp"`` (QGPO's U-shaped residual MLP, :class:`UMLPNoisePredictor`)
            or ``"mlp"`` (:class:`MLPNoisePredictor`).
        noise_widths: the U-MLP's ``(w1, w2, w3)``.
        noise_num_cells: the plain MLP's hidden widths.
        qvalue_num_cells / value_num_cells / energy_num_cells: hidden widths of twin Q, V and
            the energy network.
    """

    _group = "model."
    noise_network: Literal["umlp", "mlp"] = "umlp"
    noise_widths: tuple[int, ...] = (512, 256, 128)
    noise_num_cells: tuple[int, ...] = (256, 256, 256)
    qvalue_num_cells: tuple[int, ...] = (256, 256, 256)
    value_num_cells: tuple[int, ...] = (256, 256, 256)
    energy_num_cells: tuple[int, ...] = (256, 256, 256)

    @classmethod
    def small(cls) -> ModelConfig:
        """Small plain MLPs (32x32) for examples and tests."""
        cells = (32, 32)
        return cls("mlp", (32, 32, 32), cells, cells, cells, cells)

    def problems(self, prefix: str = "model.") -> list[str]:
        out = []
        if self.noise_network not in ("umlp", "mlp"):
            out.append(f"{prefix}noise_network={self.noise_network!r}: use umlp or mlp")
        for name in _WIDTH_FIELDS:
            widths = getattr(self, name)
            if not widths or any(int(w) < 1 for w in widths):
                out.append(f"{prefix}{name}={list(widths)}: widths must be positive integers")
        if self.noise_network == "umlp" and len(self.noise_widths) != 3:
            out.append(f"{prefix}noise_widths={list(self.noise_widths)}: the U-MLP takes 3 widths")
        return out


@dataclass(frozen=True)
class SolverConfig(_Config):
    """The actor's DPM-Solver (``aepo.solver``): keyword arguments of :class:`DPMSolver`.

    The default is QGPO's: DPM-Solver++, singlestep, order 2, 15 model evaluations.
    """

    algorithm: str = "dpmsolver++"
    order: int = 2
    steps: int = 15
    method: str = "singlestep"
    skip_type: str = "time_uniform"

    def problems(self, prefix: str = "aepo.solver.") -> list[str]:
        out = []
        if self.algorithm not in ("dpmsolver", "dpmsolver++"):
            out.append(f"{prefix}algorithm={self.algorithm!r}: use dpmsolver or dpmsolver++")
        if self.order not in (1, 2, 3):
            out.append(f"{prefix}order={self.order!r}: use 1, 2 or 3")
        if not isinstance(self.steps, int) or self.steps < 1:
            out.append(f"{prefix}steps={self.steps!r}: must be a positive integer")
        if self.method not in ("singlestep", "multistep"):
            out.append(f"{prefix}method={self.method!r}: use singlestep or multistep")
        if self.skip_type not in ("time_uniform", "logSNR"):
            out.append(f"{prefix}skip_type={self.skip_type!r}: use time_uniform or logSNR")
        return out


@dataclass(frozen=True)
class AEPOConfig(_Config):
    """AEPO's hyperparameters (the ``aepo`` group); defaults are the paper's.

    Attributes:
        beta: inverse temperature of ``pi ∝ mu exp(beta Q)``.
        expectile: IQL expectile ``tau`` of the critic (Eq. 27).
        discount: the RL discount of the critic's TD target.
        posterior: ``1`` (``Gamma`` table, Eq. 22) or ``2`` (Eq. 24) for ``sigma^2_{0|t}``.
        clip_posterior_mean: box for ``mu_{0|t}`` in the energy target, or ``None``.
        energy_baseline: ``"none"`` regresses ``beta Q`` (the paper); ``"value"`` regresses
            ``beta (Q - V(s))``, which has the same action gradient.
        guidance: guidance degree ``w`` of the reported policy (``0``: the behaviour policy).
        rescale: guidance rescaling (Eq. 45).
        num_candidates / selection: ``K`` actions per state and how one is picked
            (``"first"``, ``"argmax_q"``, ``"softmax_q"``).
        solver: the sampler.
    """

    _group = "aepo."
    beta: float = 3.0
    expectile: float = 0.7
    discount: float = 0.99
    posterior: int = 1
    clip_posterior_mean: tuple[float, float] | None = (-1.0, 1.0)
    energy_baseline: Literal["none", "value"] = "none"
    guidance: float = 1.0
    rescale: bool = True
    num_candidates: int = 1
    selection: Literal["first", "argmax_q", "softmax_q"] = "first"
    solver: SolverConfig = field(default_factory=SolverConfig)

    def problems(self, prefix: str = "aepo.") -> list[str]:
        out = []
        if not self.beta > 0:
            out.append(f"{prefix}beta={self.beta!r}: must be > 0")
        if not 0 < self.expectile < 1:
            out.append(f"{prefix}expectile={self.expectile!r}: must be in (0, 1)")
        if not 0 <= self.discount <= 1:
            out.append(f"{prefix}discount={self.discount!r}: must be in [0, 1]")
        if self.posterior not in (1, 2):
            out.append(f"{prefix}posterior={self.posterior!r}: use 1 or 2")
        clip = self.clip_posterior_mean
        if clip is not None and (len(clip) != 2 or not clip[0] < clip[1]):
            out.append(f"{prefix}clip_posterior_mean={clip!r}: use [low, high] with low < high")
        if self.energy_baseline not in ("none", "value", None):
            out.append(f"{prefix}energy_baseline={self.energy_baseline!r}: use none or value")
        if not self.guidance >= 0:
            out.append(f"{prefix}guidance={self.guidance!r}: must be >= 0")
        if not isinstance(self.num_candidates, int) or self.num_candidates < 1:
            out.append(f"{prefix}num_candidates={self.num_candidates!r}: must be >= 1")
        if self.selection not in ("first", "argmax_q", "softmax_q"):
            out.append(f"{prefix}selection={self.selection!r}: use first, argmax_q or softmax_q")
        return out + self.solver.problems(f"{prefix}solver.")


def _budget_problems(prefix: str, steps: Any, batch_size: Any, lr: Any = 1.0) -> list[str]:
    out = []
    if not isinstance(steps, int) or steps < 1:
        out.append(f"{prefix}steps={steps!r}: must be a positive integer")
    if not isinstance(batch_size, int) or batch_size < 1:
        out.append(f"{prefix}batch_size={batch_size!r}: must be a positive integer")
    if not (isinstance(lr, (int, float)) and lr > 0):
        out.append(f"{prefix}lr={lr!r}: must be > 0")
    return out


@dataclass(frozen=True)
class DiffusionStageConfig(_Config):
    """Behaviour-model training: steps, batch size, lr, EMA decay (``None``: no EMA)."""

    steps: int = 600_000
    batch_size: int = 4096
    lr: float = 1e-4
    ema_decay: float | None = 0.999

    def problems(self, prefix: str) -> list[str]:
        out = _budget_problems(prefix, self.steps, self.batch_size, self.lr)
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            out.append(f"{prefix}ema_decay={self.ema_decay!r}: must be in [0, 1) or null")
        return out


@dataclass(frozen=True)
class CriticStageConfig(_Config):
    """Expectile-critic training: steps, batch size, lr, Polyak rate of the target Q."""

    steps: int = 1_000_000
    batch_size: int = 256
    lr: float = 3e-4
    target_tau: float = 0.005

    def problems(self, prefix: str) -> list[str]:
        out = _budget_problems(prefix, self.steps, self.batch_size, self.lr)
        if not 0 < self.target_tau <= 1:
            out.append(f"{prefix}target_tau={self.target_tau!r}: must be in (0, 1]")
        return out


@dataclass(frozen=True)
class EnergyStageConfig(_Config):
    """Energy-network training: steps, batch size, lr."""

    steps: int = 1_000_000
    batch_size: int = 256
    lr: float = 3e-4

    def problems(self, prefix: str) -> list[str]:
        return _budget_problems(prefix, self.steps, self.batch_size, self.lr)


@dataclass(frozen=True)
class JointStageConfig(_Config):
    """The joint plan's single loop: steps, batch size, ``Gamma`` refresh interval."""

    steps: int = 1_000_000
    batch_size: int = 256
    gamma_refresh_interval: int = 10_000

    def problems(self, prefix: str) -> list[str]:
        out = _budget_problems(prefix, self.steps, self.batch_size)
        if not isinstance(self.gamma_refresh_interval, int) or self.gamma_refresh_interval < 1:
            out.append(
                f"{prefix}gamma_refresh_interval={self.gamma_refresh_interval!r}: must be >= 1"
            )
        return out


@dataclass(frozen=True)
class GammaTableConfig(_Config):
    """Monte-Carlo size of the Posterior-1 table ``Gamma(t)`` (:class:`PosteriorStatistics`)."""

    num_times: int = 1000
    samples_per_time: int = 4096
    batch_size: int = 65536

    def problems(self, prefix: str) -> list[str]:
        return [
            f"{prefix}{name}={value!r}: must be a positive integer"
            for name, value in dataclasses.asdict(self).items()
            if not isinstance(value, int) or value < 1
        ]


@dataclass(frozen=True)
class TrainConfig(_Config):
    """Budgets and optimisation (the ``train`` group).

    Attributes:
        plan: ``"staged"`` (diffusion -> critic -> gamma -> energy) or ``"joint"``.
        diffusion / critic / energy / joint / gamma_table: per-stage settings.
        lr_schedule: ``"constant"`` or ``"cosine"`` (per stage, to 0 at its last step).
        grad_clip: max gradient norm per optimiser, or ``None``.
        adam: torch Adam kernel: ``"fused"``, ``"foreach"`` or ``"loop"``.
        log_interval / checkpoint_interval: trainer intervals (steps).
        eval_interval / eval_episodes: evaluation during the last stage (``0``: off).
        stop_after_stage: checkpoint and stop after this stage.
    """

    _group = "train."
    plan: Literal["staged", "joint"] = "staged"
    diffusion: DiffusionStageConfig = field(default_factory=DiffusionStageConfig)
    critic: CriticStageConfig = field(default_factory=CriticStageConfig)
    gamma_table: GammaTableConfig = field(default_factory=GammaTableConfig)
    energy: EnergyStageConfig = field(default_factory=EnergyStageConfig)
    joint: JointStageConfig = field(default_factory=JointStageConfig)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float | None = None
    adam: Literal["fused", "foreach", "loop"] = "fused"
    log_interval: int = 1000
    checkpoint_interval: int = 10_000
    eval_interval: int = 0
    eval_episodes: int = 5
    stop_after_stage: str | None = None

    @classmethod
    def budget(cls, steps: int, batch_size: int, **kwargs: Any) -> TrainConfig:
        """Every stage with ``steps`` steps of ``batch_size``, a tiny ``Gamma`` table, lr 1e-3.

        For examples and tests: ``TrainConfig.budget(steps=100, batch_size=64)``.
        """
        return cls(
            diffusion=DiffusionStageConfig(steps, batch_size, 1e-3, 0.99),
            critic=CriticStageConfig(steps, batch_size, 1e-3, 0.01),
            gamma_table=GammaTableConfig(8, 64, 4096),
            energy=EnergyStageConfig(steps, batch_size, 1e-3),
            joint=JointStageConfig(steps, batch_size, max(steps // 2, 1)),
            **kwargs,
        )

    def stage_names(self) -> tuple[str, ...]:
        return JOINT if self.plan == "joint" else STAGED

    def problems(self, prefix: str = "train.") -> list[str]:
        out = []
        if self.plan not in PLANS:
            out.append(f"{prefix}plan={self.plan!r}: use staged or joint")
        if self.plan == "joint":  # one loop: the joint budget, each optimiser's lr
            out += self.joint.problems(f"{prefix}joint.")
            for name in ("diffusion", "critic", "energy"):
                lr = getattr(self, name).lr
                if not (isinstance(lr, (int, float)) and lr > 0):
                    out.append(f"{prefix}{name}.lr={lr!r}: must be > 0")
        else:
            out += self.diffusion.problems(f"{prefix}diffusion.")
            out += self.critic.problems(f"{prefix}critic.")
            out += self.energy.problems(f"{prefix}energy.")
        out += self.gamma_table.problems(f"{prefix}gamma_table.")
        if self.lr_schedule not in ("constant", "cosine"):
            out.append(f"{prefix}lr_schedule={self.lr_schedule!r}: use constant or cosine")
        if self.grad_clip is not None and not self.grad_clip > 0:
            out.append(f"{prefix}grad_clip={self.grad_clip!r}: must be > 0 or null")
        if self.adam not in ("fused", "foreach", "loop"):
            out.append(f"{prefix}adam={self.adam!r}: use fused, foreach or loop")
        for name in ("log_interval", "checkpoint_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                out.append(f"{prefix}{name}={value!r}: must be a positive integer")
        if not isinstance(self.eval_interval, int) or self.eval_interval < 0:
            out.append(f"{prefix}eval_interval={self.eval_interval!r}: must be >= 0 (0: off)")
        if self.eval_interval and (
            not isinstance(self.eval_episodes, int) or self.eval_episodes < 1
        ):
            out.append(f"{prefix}eval_episodes={self.eval_episodes!r}: must be >= 1")
        if self.stop_after_stage is not None and self.stop_after_stage not in self.stage_names():
            out.append(
                f"{prefix}stop_after_stage={self.stop_after_stage!r}: use one of "
                f"{list(self.stage_names())} or null"
            )
        return out


def config_problems(model: ModelConfig, aepo: AEPOConfig, train: TrainConfig) -> list[str]:
    """Every invalid value of the three groups, as ``"group.key=value: what is allowed"``."""
    return model.problems() + aepo.problems() + train.problems()


# ----------------------------------------------------------------------------------- networks
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


# --------------------------------------------------------------------------------------- plan
def _metrics(td: TensorDictBase) -> dict[str, Tensor]:
    """Scalar entries of a loss output (losses and diagnostics), detached."""
    return {
        key: value.detach().reshape(())
        for key, value in td.items()
        if isinstance(value, Tensor) and value.numel() == 1
    }


class _PosteriorSlot:
    """Checkpoints the plan's ``Gamma`` statistics (they are built during training)."""

    def __init__(self, plan: TrainingPlan) -> None:
        self.plan = plan

    def state_dict(self) -> dict[str, Any]:
        return self.plan.posterior.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        from torchrl_aepo.objectives import PosteriorStatistics

        self.plan._set_posterior(PosteriorStatistics.from_state_dict(dict(state)))


class TrainingPlan:
    """AEPO's training stages for :class:`~torchrl_aepo.trainer.OfflineTrainer`.

    Built by :func:`build_training_plan`. :attr:`stages` is ``[diffusion, critic, gamma,
    energy]`` (``train.plan="staged"``) or ``[joint]``. The plan holds the ``Gamma``
    statistics (:attr:`posterior`) and the energy loss (:attr:`energy_loss`, built when the
    energy stage starts) and keeps the behaviour network in sync with the trained noise
    network (:meth:`sync_behaviour`).
    """

    def __init__(
        self,
        nets: AEPONetworks,
        losses: AEPOLosses,
        dataset: TensorDictBase,
        *,
        aepo: AEPOConfig,
        train: TrainConfig,
        optimizer_step: Callable[[nn.Module, float, int], OptimizerStep],
        seed: int = 0,
        compile: Mapping[str, Any] | None = None,
    ) -> None:
        if train.plan not in PLANS:
            raise ValueError(f"train.plan must be 'staged' or 'joint', got {train.plan!r}.")
        self.nets, self.losses, self.dataset = nets, losses, dataset
        self.aepo, self.train = aepo, train
        self.compile = compile
        self.posterior: Any = None
        self.energy_loss: nn.Module | None = None
        self._energy_step: OptimizerStep | None = None
        self._optimizer_step = optimizer_step
        self._gamma_generator = torch.Generator(device=dataset.device or "cpu").manual_seed(
            seed + 1
        )
        joint = train.plan == "joint"
        # The lr schedule of each optimiser spans the steps it takes (the joint loop's in joint).
        budget = {
            name: train.joint.steps if joint else getattr(train, name).steps
            for name in ("diffusion", "critic", "energy")
        }
        self._budget = budget
        self.diffusion_step = optimizer_step(nets.noise, train.diffusion.lr, budget["diffusion"])
        self.critic_step = optimizer_step(losses.critic, train.critic.lr, budget["critic"])
        self.stages = self._joint() if joint else self._staged()

    # ------------------------------------------------------------- the one invariant
    def sync_behaviour(self) -> None:
        """Copy the (EMA) noise-network weights into ``nets.behaviour``.

        Called when the diffusion stage completes (also when it is restored on resume), before
        every ``Gamma`` refresh of the joint loop and before every evaluation hook
        (:meth:`evaluation_op`). Idempotent.
        """
        state = self.losses.diffusion.sampling_network().state_dict()
        self.nets.behaviour.load_state_dict(state)

    def evaluation_op(
        self, evaluate: Callable[[str, int], None], interval: int
    ) -> Callable[[str, int, Any], None]:
        """A trainer ``"post_optim"`` op that evaluates the policy during the last stage.

        Every ``interval`` steps of the last stage (not at its final step, which the caller
        evaluates anyway) it syncs the behaviour network and calls ``evaluate(stage, step)``.
        """
        last = self.stages[-1]

        def op(stage: str, step: int, _metrics: Any) -> None:
            if stage == last.name and step % interval == 0 and step < last.total_steps:
                self.sync_behaviour()
                evaluate(stage, step)

        return op

    # ---------------------------------------------------------------------- pieces
    def _set_posterior(self, posterior: Any) -> None:
        self.posterior = posterior
        if self.energy_loss is not None:
            self.energy_loss.update_posterior_statistics(posterior)

    def _estimate_gamma(self) -> None:
        with timeit("train/gamma/estimate"):
            posterior = estimate_posterior_statistics(
                self.nets.behaviour,
                self.dataset,
                self.train.gamma_table,
                schedule=self.losses.diffusion.schedule,
                generator=self._gamma_generator,
            )
        self._set_posterior(posterior)

    def _build_energy(self) -> None:
        if self.energy_loss is None:
            self.energy_loss = build_energy_loss(
                self.nets, self.losses, self.aepo, self.posterior, self.compile
            )
            self._energy_step = self._optimizer_step(
                self.nets.energy, self.train.energy.lr, self._budget["energy"]
            )

    def _diffusion_update(self, batch: TensorDictBase, _step: int) -> dict[str, Tensor]:
        out = self.losses.diffusion(batch)
        self.diffusion_step(out["loss_diffusion"])
        if self.losses.diffusion_ema is not None:
            self.losses.diffusion_ema.step()
        return _metrics(out)

    def _critic_update(self, batch: TensorDictBase, _step: int) -> dict[str, Tensor]:
        out = self.losses.critic(batch)
        self.critic_step(out["loss_qvalue"] + out["loss_value"])
        self.losses.critic_target.step()
        return _metrics(out)

    def _energy_update(self, batch: TensorDictBase, _step: int) -> dict[str, Tensor]:
        out = self.energy_loss(batch)
        self._energy_step(out["loss_energy"])
        return _metrics(out)

    def _gamma_update(self, _batch: None, _step: int) -> dict[str, Tensor]:
        self._estimate_gamma()
        return {}

    def _staged(self) -> list[Stage]:
        t = self.train
        return [
            Stage(
                "diffusion",
                t.diffusion.steps,
                self._diffusion_update,
                lambda: {"loss": self.losses.diffusion, "optim": self.diffusion_step},
                batch_size=t.diffusion.batch_size,
                finalize=self.sync_behaviour,
            ),
            Stage(
                "critic",
                t.critic.steps,
                self._critic_update,
                lambda: {"loss": self.losses.critic, "optim": self.critic_step},
                batch_size=t.critic.batch_size,
            ),
            Stage(
                "gamma",
                1,
                self._gamma_update,
                lambda: {"posterior": _PosteriorSlot(self)},
                batch_size=None,
            ),
            Stage(
                "energy",
                t.energy.steps,
                self._energy_update,
                lambda: {"loss": self.energy_loss, "optim": self._energy_step},
                batch_size=t.energy.batch_size,
                setup=self._build_energy,
            ),
        ]

    def _joint(self) -> list[Stage]:
        refresh = self.train.joint.gamma_refresh_interval

        def setup() -> None:
            # A provisional table from the untrained network, so that the energy loss exists;
            # refreshed every `refresh` steps.
            self.sync_behaviour()
            self._estimate_gamma()
            self._build_energy()

        def update(batch: TensorDictBase, step: int) -> dict[str, Tensor]:
            metrics = self._diffusion_update(batch, step)
            metrics.update(self._critic_update(batch, step))
            if step % refresh == 0 and step > 0:
                self.sync_behaviour()
                self._estimate_gamma()
            metrics.update(self._energy_update(batch, step))
            return metrics

        return [
            Stage(
                "joint",
                self.train.joint.steps,
                update,
                lambda: {
                    "diffusion": self.losses.diffusion,
                    "diffusion_optim": self.diffusion_step,
                    "critic": self.losses.critic,
                    "critic_optim": self.critic_step,
                    "posterior": _PosteriorSlot(self),
                    "energy": self.energy_loss,
                    "energy_optim": self._energy_step,
                },
                batch_size=self.train.joint.batch_size,
                setup=setup,
                finalize=self.sync_behaviour,
            )
        ]


def build_training_plan(
    nets: AEPONetworks,
    losses: AEPOLosses,
    dataset: TensorDictBase,
    *,
    aepo: AEPOConfig,
    train: TrainConfig,
    seed: int = 0,
    compile: Mapping[str, Any] | None = None,
) -> TrainingPlan:
    """AEPO's training plan on ``dataset`` (all transitions, actions in the training box).

    Args:
        nets / losses: from :func:`build_networks` / :func:`build_losses`.
        dataset: the whole dataset as a TensorDict (``observation [N, s]``, ``action
            [N, d]``); the ``Gamma`` table is estimated on it.
        aepo / train: the configuration.
        seed: seeds the ``Gamma`` estimate's generator (``seed + 1``).
        compile: ``torch.compile`` options for the energy loss, or ``None``.

    Returns:
        a :class:`TrainingPlan`; pass ``plan.stages`` to ``OfflineTrainer``.
    """

    def optimizer_step(module: nn.Module, lr: float, steps: int) -> OptimizerStep:
        return adam_step(
            module,
            lr,
            steps,
            adam=train.adam,
            lr_schedule=train.lr_schedule,
            grad_clip=train.grad_clip,
        )

    return TrainingPlan(
        nets,
        losses,
        dataset,
        aepo=aepo,
        train=train,
        optimizer_step=optimizer_step,
        seed=seed,
        compile=compile,
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
