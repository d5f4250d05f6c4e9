"""AEPO's typed configuration: the ``model``, ``aepo`` and ``train`` groups of the recipe.

``from_dict`` reads a plain or OmegaConf mapping and refuses unknown keys
(:class:`ConfigKeyError`); :func:`config_problems` lists every invalid value at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

PLANS = ("staged", "joint")
STAGED = ("diffusion", "critic", "gamma", "energy")
JOINT = ("joint",)
#: ``train.eval_mode``: evaluations during training block training, or run in a thread.
EVAL_MODES = ("sync", "background")
#: Every stage a staged plan can have: ``supports`` only when a critic or energy reads
#: behaviour-model support actions, ``gamma`` only for the analytic energy.
ALL_STAGED = ("diffusion", "supports", "critic", "gamma", "energy")
CRITICS = ("expectile", "isql", "cql")
ENERGIES = ("analytic", "mse", "dps", "cep", "log_mean_exp", "support_posterior")


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

    The default is DPM-Solver++, multistep, order 2, on a logSNR grid, 15 model evaluations:
    on an exact Gaussian oracle it keeps the behaviour's variance within 5% for per-dimension
    variances from 1 down to 0.001 (``python -m studies.sampler``, ``docs/sampler/``), where
    QGPO's setting (``method="singlestep"``, ``skip_type="time_uniform"``, the same 15 NFE)
    keeps 0.89x, 0.64x, 0.24x and 0.19x: it collapses narrow per-state action distributions,
    the norm on locomotion data, onto their mean.
    """

    algorithm: str = "dpmsolver++"
    order: int = 2
    steps: int = 15
    method: str = "multistep"
    skip_type: str = "logSNR"

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
    """AEPO's hyperparameters (the ``aepo`` group); defaults are the paper's except
    ``energy_baseline``, ``variance_weight`` and the sampler (see :class:`SolverConfig`).

    Attributes:
        beta: inverse temperature of ``pi ∝ mu exp(beta Q)``.
        expectile: IQL expectile ``tau`` of the critic (Eq. 27).
        discount: the RL discount of the critic's TD target.
        posterior: ``1`` (``Gamma`` table, Eq. 22) or ``2`` (Eq. 24) for ``sigma^2_{0|t}``.
        clip_posterior_mean: box for ``mu_{0|t}`` in the energy target, or ``None``.
        variance_weight: weight in ``[0, 1]`` of the target's second-order term
            ``(beta^2/2) sigma^2_{0|t} ||g||^2``: ``0`` (default, a deviation: on locomotion
            data that term dwarfs the advantage signal and collapses the policy) or ``1``
            (Eq. 25, the paper's).
        energy_baseline: ``"value"`` (default) regresses ``beta (Q - V(s))``, which has the
            same action gradient as ``beta Q``; ``"none"`` regresses ``beta Q``, the paper's
            literal form (a deviation we make by default: the network otherwise has to fit
            the large state-dependent offset ``beta V(s)`` first).
        guidance: guidance degree ``w`` of the reported policy (``0``: the behaviour policy)
            with ``guidance_rule="fixed"``.
        guidance_rule: ``"fixed"`` (``guidance``) or ``"critic_lower_bound"``: ``w`` chosen
            after training from ``guidance_states`` dataset states
            (:func:`~torchrl_aepo.aepo.select_guidance`: the degree of ``guidance_ladder``
            with the largest critic advantage minus ``guidance_pessimism`` times the twin
            heads' disagreement).
        rescale: guidance rescaling (Eq. 45).
        latent_scale: standard deviation ``tau >= 0`` of the sampler's initial latent
            (:class:`~torchrl_aepo.AEPOActor`): ``1`` (default) samples the policy itself,
            ``0`` its deterministic image of the zero latent (a Gaussian policy's mean).
        num_candidates / selection: ``K`` actions per state and how one is picked
            (``"first"``, ``"argmax_q"``, ``"softmax_q"``, ``"mean"``: the average of the
            ``K`` samples, no critic).
        solver: the sampler.
        clip_denoised: clamp the sampler's data prediction to the action box at every model
            evaluation (:class:`~torchrl_aepo.AEPOActor`'s ``clip_denoised``); ``False``
            (default) is AEPO/QGPO's sampler.
        critic: ``"expectile"`` (IQL, Eq. 27, the paper's), ``"isql"`` (QGPO's in-support
            softmax Q-learning) or ``"cql"`` (conservative Q-learning): the Figure-1 ablations.
        energy: ``"analytic"`` (AEPO, Eq. 25), ``"mse"``, ``"dps"`` (Eq. 10), ``"cep"``
            (QGPO's contrastive energy; ``critic="isql", energy="cep"`` is QGPO) or
            ``"log_mean_exp"`` (the exact energy of Eq. 12 by regression,
            :class:`~torchrl_aepo.objectives.LogMeanExpEnergyLoss`) or ``"support_posterior"``
            (the exact energy of the behaviour model's ``num_support`` actions plus the
            dataset's, :class:`~torchrl_aepo.objectives.SupportPosteriorEnergyLoss`).
        energy_max_target: cap of the target ``beta Q`` of ``energy="log_mean_exp"`` (``None``:
            no cap); ``log(100)`` with the value baseline is IQL's weight clip.
        behaviour_weighting: ``"none"`` (default, the paper's: the diffusion model learns the
            dataset's behaviour ``mu``) or ``"advantage"``: it is trained after the critic on
            the dataset reweighted by ``min(exp(beta (min Q - V)), behaviour_weight_clip)``
            (:func:`~torchrl_aepo.aepo.advantage_weights`), so it models ``mu exp(beta A)``,
            the target itself, and the guided sampler at degree ``w`` targets
            ``mu exp((1 + w) beta Q)``. Only with ``critic="expectile"`` (the other critics
            read the behaviour model) and the staged plan.
        behaviour_weight_clip: the largest weight (IQL's 100).
        behaviour_weight_sampling: how the weights enter the diffusion stage: ``"loss"``
            (default) multiplies each transition's denoising loss by its weight; ``"resample"``
            draws the stage's batches with probability proportional to the weights (unit
            weights in the loss). Both have the same minimiser; resampling spends every
            update on the transitions the target favours (lower gradient variance when a few
            transitions carry most of the weight).
        num_support: ``K`` behaviour-model support actions per state (``isql``/``cql`` at
            ``s'``, ``cql``/``cep`` at ``s``), generated once after the diffusion stage.
        isql_beta: ``beta_Q`` of the ISQL softmax backup (QGPO: 1).
        cql_alpha / cql_num_random / cql_temperature: CQL's penalty weight, uniform actions
            per state and logsumexp temperature.
    """

    _group = "aepo."
    beta: float = 3.0
    expectile: float = 0.7
    discount: float = 0.99
    posterior: int = 1
    clip_posterior_mean: tuple[float, float] | None = (-1.0, 1.0)
    variance_weight: float = 0.0
    energy_baseline: Literal["none", "value"] = "value"
    guidance: float = 1.0
    guidance_rule: Literal["fixed", "critic_lower_bound"] = "fixed"
    guidance_ladder: tuple[float, ...] = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
    guidance_pessimism: float = 1.0
    guidance_states: int = 1024
    rescale: bool = True
    latent_scale: float = 1.0
    num_candidates: int = 1
    selection: Literal["first", "argmax_q", "softmax_q", "mean"] = "first"
    solver: SolverConfig = field(default_factory=SolverConfig)
    clip_denoised: bool = False
    critic: Literal["expectile", "isql", "cql"] = "expectile"
    energy: Literal["analytic", "mse", "dps", "cep", "log_mean_exp", "support_posterior"] = (
        "analytic"
    )
    energy_max_target: float | None = None
    behaviour_weighting: Literal["none", "advantage"] = "none"
    behaviour_weight_clip: float = 100.0
    behaviour_weight_sampling: Literal["loss", "resample"] = "loss"
    num_support: int = 16
    isql_beta: float = 1.0
    cql_alpha: float = 1.0
    cql_num_random: int = 10
    cql_temperature: float = 1.0

    def needs_supports(self) -> tuple[bool, bool]:
        """Whether support actions are needed ``(at s, at s')``."""
        at_s = self.critic == "cql" or self.energy in ("cep", "support_posterior")
        return at_s, self.critic in ("isql", "cql")

    def problems(self, prefix: str = "aepo.") -> list[str]:
        out = []
        if self.critic not in CRITICS:
            out.append(f"{prefix}critic={self.critic!r}: use expectile, isql or cql")
        if self.energy not in ENERGIES:
            out.append(
                f"{prefix}energy={self.energy!r}: use analytic, mse, dps, cep, log_mean_exp or "
                "support_posterior"
            )
        if self.energy_max_target is not None:
            if self.energy != "log_mean_exp":
                out.append(
                    f"{prefix}energy_max_target={self.energy_max_target!r}: only "
                    f"{prefix}energy=log_mean_exp reads it (got {prefix}energy={self.energy!r}); "
                    "set it to null"
                )
            elif not (
                isinstance(self.energy_max_target, (int, float))
                and math.isfinite(self.energy_max_target)
            ):
                out.append(
                    f"{prefix}energy_max_target={self.energy_max_target!r}: must be a finite "
                    "number or null"
                )
        if self.behaviour_weighting not in ("none", "advantage"):
            out.append(
                f"{prefix}behaviour_weighting={self.behaviour_weighting!r}: use none or advantage"
            )
        elif self.behaviour_weighting == "advantage" and self.critic != "expectile":
            out.append(
                f"{prefix}behaviour_weighting='advantage' with {prefix}critic={self.critic!r}: "
                "the weighted behaviour model is trained after the critic, and this critic "
                f"reads the behaviour model's actions; use {prefix}critic=expectile or "
                f"{prefix}behaviour_weighting=none"
            )
        if self.behaviour_weight_sampling not in ("loss", "resample"):
            out.append(
                f"{prefix}behaviour_weight_sampling={self.behaviour_weight_sampling!r}: use loss "
                "or resample"
            )
        clip = self.behaviour_weight_clip
        if isinstance(clip, bool) or not (
            isinstance(clip, (int, float)) and clip > 0 and math.isfinite(clip)
        ):
            out.append(f"{prefix}behaviour_weight_clip={clip!r}: must be a finite number > 0")
        if not isinstance(self.num_support, int) or self.num_support < 2:
            out.append(f"{prefix}num_support={self.num_support!r}: must be an integer >= 2")
        if not (isinstance(self.isql_beta, (int, float)) and self.isql_beta >= 0):
            out.append(f"{prefix}isql_beta={self.isql_beta!r}: must be >= 0")
        if not (isinstance(self.cql_alpha, (int, float)) and self.cql_alpha >= 0):
            out.append(f"{prefix}cql_alpha={self.cql_alpha!r}: must be >= 0")
        if not isinstance(self.cql_num_random, int) or self.cql_num_random < 0:
            out.append(f"{prefix}cql_num_random={self.cql_num_random!r}: must be an integer >= 0")
        if not (isinstance(self.cql_temperature, (int, float)) and self.cql_temperature > 0):
            out.append(f"{prefix}cql_temperature={self.cql_temperature!r}: must be > 0")
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
        if not (isinstance(self.variance_weight, (int, float)) and 0 <= self.variance_weight <= 1):
            out.append(f"{prefix}variance_weight={self.variance_weight!r}: must be in [0, 1]")
        if self.energy_baseline not in ("none", "value", None):
            out.append(f"{prefix}energy_baseline={self.energy_baseline!r}: use none or value")
        if not self.guidance >= 0:
            out.append(f"{prefix}guidance={self.guidance!r}: must be >= 0")
        if self.guidance_rule not in ("fixed", "critic_lower_bound"):
            out.append(
                f"{prefix}guidance_rule={self.guidance_rule!r}: use fixed or critic_lower_bound"
            )
        ladder = self.guidance_ladder
        if not ladder or any(not isinstance(w, (int, float)) or w < 0 for w in ladder):
            out.append(f"{prefix}guidance_ladder={ladder!r}: a non-empty list of degrees >= 0")
        pessimism = self.guidance_pessimism
        if not (isinstance(pessimism, (int, float)) and pessimism >= 0):
            out.append(f"{prefix}guidance_pessimism={pessimism!r}: must be >= 0")
        if not isinstance(self.guidance_states, int) or self.guidance_states < 1:
            out.append(f"{prefix}guidance_states={self.guidance_states!r}: must be an integer >= 1")
        scale = self.latent_scale
        if isinstance(scale, bool) or not (isinstance(scale, (int, float)) and scale >= 0):
            out.append(f"{prefix}latent_scale={scale!r}: must be a number >= 0")
        if not isinstance(self.num_candidates, int) or self.num_candidates < 1:
            out.append(f"{prefix}num_candidates={self.num_candidates!r}: must be >= 1")
        if self.selection not in ("first", "argmax_q", "softmax_q", "mean"):
            out.append(
                f"{prefix}selection={self.selection!r}: use first, argmax_q, softmax_q or mean"
            )
        if not isinstance(self.clip_denoised, bool):
            out.append(f"{prefix}clip_denoised={self.clip_denoised!r}: use true or false")
        return out + self.solver.problems(f"{prefix}solver.")


LR_SCHEDULES = ("constant", "cosine")


def _schedule_problems(prefix: str, lr_schedule: Any) -> list[str]:
    if lr_schedule is None or lr_schedule in LR_SCHEDULES:
        return []
    return [
        f"{prefix}lr_schedule={lr_schedule!r}: use constant, cosine or null (train.lr_schedule)"
    ]


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
    """Behaviour-model training: steps, batch size, lr, EMA decay (``None``: no EMA), and this
    stage's lr schedule (``None``: ``train.lr_schedule``)."""

    steps: int = 600_000
    batch_size: int = 4096
    lr: float = 1e-4
    ema_decay: float | None = 0.999
    lr_schedule: Literal["constant", "cosine"] | None = None

    def problems(self, prefix: str) -> list[str]:
        out = _budget_problems(prefix, self.steps, self.batch_size, self.lr)
        out += _schedule_problems(prefix, self.lr_schedule)
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            out.append(f"{prefix}ema_decay={self.ema_decay!r}: must be in [0, 1) or null")
        return out


@dataclass(frozen=True)
class CriticStageConfig(_Config):
    """Expectile-critic training: steps, batch size, lr, Polyak rate of the target Q, and this
    stage's lr schedule (``None``: ``train.lr_schedule``)."""

    steps: int = 1_000_000
    batch_size: int = 256
    lr: float = 3e-4
    target_tau: float = 0.005
    lr_schedule: Literal["constant", "cosine"] | None = None

    def problems(self, prefix: str) -> list[str]:
        out = _budget_problems(prefix, self.steps, self.batch_size, self.lr)
        out += _schedule_problems(prefix, self.lr_schedule)
        if not 0 < self.target_tau <= 1:
            out.append(f"{prefix}target_tau={self.target_tau!r}: must be in (0, 1]")
        return out


@dataclass(frozen=True)
class SupportsStageConfig(_Config):
    """Support-action generation (only with ``aepo.critic=isql|cql`` or ``aepo.energy=cep``):
    ``batch_size`` states per DPM-Solver call (each with ``aepo.num_support`` samples)."""

    batch_size: int = 1024

    def problems(self, prefix: str) -> list[str]:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            return [f"{prefix}batch_size={self.batch_size!r}: must be a positive integer"]
        return []


@dataclass(frozen=True)
class EnergyStageConfig(_Config):
    """Energy-network training: steps, batch size, lr, and this stage's lr schedule (``None``:
    ``train.lr_schedule``)."""

    steps: int = 1_000_000
    batch_size: int = 256
    lr: float = 3e-4
    lr_schedule: Literal["constant", "cosine"] | None = None

    def problems(self, prefix: str) -> list[str]:
        out = _budget_problems(prefix, self.steps, self.batch_size, self.lr)
        return out + _schedule_problems(prefix, self.lr_schedule)


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
        lr_schedule: ``"constant"`` or ``"cosine"`` (per stage, to 0 at its last step); a
            stage's own ``lr_schedule`` (``diffusion`` / ``critic`` / ``energy``) overrides it
            for that stage (:meth:`lr_schedule_of`).
        grad_clip: max gradient norm per optimiser, or ``None``.
        adam: torch Adam kernel: ``"fused"``, ``"foreach"`` or ``"loop"``.
        log_interval / checkpoint_interval: trainer intervals (steps).
        eval_interval / eval_episodes: evaluation during the last stage (``0``: off).
        eval_mode: ``"sync"`` (training waits for each evaluation during training) or
            ``"background"`` (a snapshot of the actor is evaluated in a thread by TorchRL's
            ``Evaluator`` while training continues; :mod:`torchrl_aepo.background_eval`).
        stop_after_stage: checkpoint and stop after this stage.
        num_seeds: train this many independent seeds (``seed``, ``seed + 1``, ...) at once,
            with stacked networks (:mod:`torchrl_aepo.stacked`); ``1``: the single-seed run.
            Above 1 only the staged plan of the expectile critic and the analytic energy,
            without gradient clipping or evaluations during training.
        overlap_stages: train the critic stage in a child process while this one trains the
            behaviour model (``recipes/overlapped_stages.py``); an execution setting. Only the
            staged plan with ``aepo.critic="expectile"`` (the only critic that does not read
            the behaviour model) and one seed.
    """

    _group = "train."
    plan: Literal["staged", "joint"] = "staged"
    diffusion: DiffusionStageConfig = field(default_factory=DiffusionStageConfig)
    critic: CriticStageConfig = field(default_factory=CriticStageConfig)
    gamma_table: GammaTableConfig = field(default_factory=GammaTableConfig)
    supports: SupportsStageConfig = field(default_factory=SupportsStageConfig)
    energy: EnergyStageConfig = field(default_factory=EnergyStageConfig)
    joint: JointStageConfig = field(default_factory=JointStageConfig)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float | None = None
    adam: Literal["fused", "foreach", "loop"] = "fused"
    log_interval: int = 1000
    checkpoint_interval: int = 10_000
    eval_interval: int = 0
    eval_episodes: int = 5
    eval_mode: Literal["sync", "background"] = "sync"
    stop_after_stage: str | None = None
    num_seeds: int = 1
    overlap_stages: bool = False

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

    def lr_schedule_of(self, stage: str) -> str:
        """The lr schedule of ``stage`` (``"diffusion"``, ``"critic"`` or ``"energy"``): its own
        ``lr_schedule`` when set, else ``train.lr_schedule``.

        Example:
            >>> t = TrainConfig(diffusion=DiffusionStageConfig(lr_schedule="cosine"))
            >>> t.lr_schedule_of("diffusion"), t.lr_schedule_of("critic")
            ('cosine', 'constant')
        """
        own = getattr(self, stage).lr_schedule
        return self.lr_schedule if own is None else own

    def stage_names(self, aepo: AEPOConfig | None = None) -> tuple[str, ...]:
        """The plan's stages, in order; without ``aepo`` every stage the plan may have.

        With ``aepo.behaviour_weighting="advantage"`` the critic comes first (the behaviour
        model is trained on its weights)."""
        if self.plan == "joint":
            return JOINT
        if aepo is None:
            return ALL_STAGED
        at_s, at_next = aepo.needs_supports()
        names = tuple(
            name
            for name in ALL_STAGED
            if (name != "supports" or at_s or at_next)
            and (name != "gamma" or aepo.energy == "analytic")
        )
        if aepo.behaviour_weighting == "advantage":
            names = ("critic", *(name for name in names if name != "critic"))
        return names

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
        out += self.supports.problems(f"{prefix}supports.")
        out += self.gamma_table.problems(f"{prefix}gamma_table.")
        if self.lr_schedule not in LR_SCHEDULES:
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
        if self.eval_mode not in EVAL_MODES:
            out.append(f"{prefix}eval_mode={self.eval_mode!r}: use sync or background")
        if (
            not isinstance(self.num_seeds, int)
            or isinstance(self.num_seeds, bool)
            or (self.num_seeds < 1)
        ):
            out.append(f"{prefix}num_seeds={self.num_seeds!r}: must be a positive integer")
        if not isinstance(self.overlap_stages, bool):
            out.append(f"{prefix}overlap_stages={self.overlap_stages!r}: use true or false")
        if self.stop_after_stage is not None and self.stop_after_stage not in self.stage_names():
            out.append(
                f"{prefix}stop_after_stage={self.stop_after_stage!r}: use one of "
                f"{list(self.stage_names())} or null"
            )
        return out


def config_problems(model: ModelConfig, aepo: AEPOConfig, train: TrainConfig) -> list[str]:
    """Every invalid value of the three groups, as ``"group.key=value: what is allowed"``."""
    out = model.problems() + aepo.problems() + train.problems()
    if train.plan == "joint" and (aepo.critic != "expectile" or aepo.energy != "analytic"):
        out.append(
            f"aepo.critic={aepo.critic!r} aepo.energy={aepo.energy!r}: train.plan=joint trains "
            "only the expectile critic and the analytic energy (the ablations need the trained "
            "behaviour model first); use train.plan=staged"
        )
    if train.plan == "joint" and aepo.behaviour_weighting == "advantage":
        out.append(
            "aepo.behaviour_weighting='advantage' with train.plan=joint: the weighted behaviour "
            "model needs the trained critic first; use train.plan=staged or "
            "aepo.behaviour_weighting=none"
        )
    out += num_seeds_problems(aepo, train)
    out += overlap_problems(aepo, train)
    stop = train.stop_after_stage
    if train.plan == "staged" and stop in ALL_STAGED and stop not in train.stage_names(aepo):
        out.append(
            f"train.stop_after_stage={stop!r}: this plan has the stages "
            f"{list(train.stage_names(aepo))}"
        )
    return out


def num_seeds_problems(aepo: AEPOConfig, train: TrainConfig) -> list[str]:
    """The settings ``train.num_seeds > 1`` (stacked seeds) does not support, each named."""
    n = train.num_seeds
    if not isinstance(n, int) or n <= 1:
        return []
    unsupported = {
        "aepo.critic": (aepo.critic, "expectile"),
        "aepo.energy": (aepo.energy, "analytic"),
        "train.plan": (train.plan, "staged"),
        "train.grad_clip": (train.grad_clip, None),
        "train.eval_interval": (train.eval_interval, 0),
        "aepo.guidance_rule": (aepo.guidance_rule, "fixed"),  # one w per seed: not aggregated
        "aepo.behaviour_weighting": (aepo.behaviour_weighting, "none"),
    }
    return [
        f"{key}={value!r} with train.num_seeds={n}: the stacked seeds support only "
        f"{key}={needed!r} (or use train.num_seeds=1, or a multirun over seed=...)"
        for key, (value, needed) in unsupported.items()
        if value != needed
    ]


def overlap_problems(aepo: AEPOConfig, train: TrainConfig) -> list[str]:
    """The settings ``train.overlap_stages=true`` does not support, each named with the fix.

    It trains the critic stage in a child process while the behaviour model trains, which
    needs a critic that never reads the behaviour model (``isql`` / ``cql`` read its support
    actions), a plan with separate stages, and one seed (the stacked seeds train each stage
    for all seeds in one process already).
    """
    if train.overlap_stages is not True:
        return []
    unsupported = {
        "train.plan": (train.plan, "staged", "the joint plan has a single stage"),
        "aepo.critic": (aepo.critic, "expectile", "this critic reads the behaviour model's "
                        "support actions, so it must follow the diffusion stage"),
        "train.num_seeds": (train.num_seeds, 1, "the stacked seeds are one process"),
        "aepo.behaviour_weighting": (aepo.behaviour_weighting, "none", "the weighted behaviour "
                                     "model is trained on the critic's weights, after it"),
    }  # fmt: skip
    return [
        f"{key}={value!r} with train.overlap_stages=true: {why}; use {key}={needed!r} or "
        f"train.overlap_stages=false"
        for key, (value, needed, why) in unsupported.items()
        if value != needed
    ]
