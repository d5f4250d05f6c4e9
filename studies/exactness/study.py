"""The exactness study: learned and definitional intermediate energies against the exact one.

Two measurements per 2-D toy problem (:mod:`studies.exactness.toy`), both against the
importance-weighted exact energy of :mod:`studies.exactness.exact` and exact samples of
the target policy ``pi ∝ mu exp(beta Q)``:

**Learned energies** (:func:`run_learned`, one dataset and one critic): a small behaviour
model ``eps_theta`` is trained with :class:`~torchrl_aepo.objectives.DiffusionLoss`, then one
:class:`~torchrl_aepo.EnergyNetwork` per loss of :data:`LEARNED_METHODS`: AEPO Posterior 1
and Posterior 2 (:class:`~torchrl_aepo.objectives.AnalyticEnergyLoss` with
:class:`~torchrl_aepo.objectives.PosteriorStatistics`), MSE, DPS, CEP and
the two exact regressions, log-mean-exp and support posterior
(:mod:`torchrl_aepo.objectives.energy_baselines`), all with the same frozen ``eps_theta`` and
the analytic critic. The method ``"exact"`` guides the same ``eps_theta`` with the
importance-weighted exact energy itself. Measured:

* the *gradient error* per time ``t`` with ``a_t`` drawn from the diffused target ``pi_t``
  (where guided sampling goes), relative, ``E ||grad f - grad E_t||^2 / E ||grad E_t||^2``,
  and in noise units, ``E ||sigma_t (grad f - grad E_t)||^2`` (the error of the guided noise
  prediction at ``w = 1``; ``E ||eps||^2 = 2``). Gradients, not values, because an
  intermediate energy is only defined up to a ``t``-dependent constant and guidance only
  uses its gradient. The ``"exact"`` row is the error of the exact energy of an independent
  reference sample: the Monte-Carlo floor of this metric. The error of the learned posterior
  mean ``mu_{0|t}`` (Eq. 18), an input of the AEPO and DPS targets, is recorded too, and so is
  the gradient error of a diagnostic AEPO Posterior 1 energy trained with the *exact* noise
  prediction (:data:`DIAGNOSTICS`), which isolates the regression from that input error.
* the distance (sliced Wasserstein-2 and MMD, :mod:`studies.exactness.metrics`) between
  guided samples (:class:`~torchrl_aepo.actor.AEPOActor`, DPM-Solver++ 2S) and exact target
  samples, for each guidance degree ``w`` with rescaling off and on, with the noise floor of
  two independent target samples.

**Definitional energies** (:func:`run_definitions`, no training): everything exact (the noise
prediction is the exact one of the reference sample) except the energy, which is the exact
limit of each definition (:data:`~studies.exactness.exact.ENERGY_KINDS`: ``"exact"``,
``"aepo"`` — the minimiser of AEPO's regression with the exact posterior mean and variance,
i.e. Posterior 1 and 2 with a perfect noise network — ``"mse"``, ``"dps"``). This separates
the bias of a definition from the error of learning it.

Examples:
    >>> cfg = StudyConfig(datasets=("moons",), behaviour_steps=20, energy_steps=20,
    ...                   num_data=512, num_reference=512, num_eval_samples=128,
    ...                   guidance_scales=(0.0, 1.0), error_times=(0.1, 0.5), error_points=64,
    ...                   posterior_times=8, posterior_samples=64, cep_pool=128,
    ...                   reference_critics=("bump",))
    >>> results = run_study(cfg)
    >>> sorted(results["learned"]["moons"]["distance"]["sw"])
    ['aepo_p1', 'aepo_p2', 'cep', 'dps', 'exact', 'mse']
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import multiprocessing
import time as _time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict
from torch import Tensor, nn
from torchrl.data import Unbounded
from torchrl.objectives import LossModule

from studies.exactness.exact import (
    EmpiricalNoisePredictor,
    ImportanceWeightedPosterior,
    ReferenceEnergy,
)
from studies.exactness.metrics import mmd, noise_floor, sliced_wasserstein
from studies.exactness.toy import (
    ToyCritic,
    constant_observation,
    make_critic,
    sample_dataset,
    sample_target,
)
from torchrl_aepo.actor import AEPOActor
from torchrl_aepo.autograd import value_and_input_gradient
from torchrl_aepo.diffusion.schedule import VPSchedule
from torchrl_aepo.diffusion.solver import DPMSolver
from torchrl_aepo.nets import EnergyNetwork, MLPNoisePredictor
from torchrl_aepo.objectives.diffusion import DiffusionLoss
from torchrl_aepo.objectives.energy import AnalyticEnergyLoss
from torchrl_aepo.objectives.energy_baselines import (
    CEPEnergyLoss,
    DPSEnergyLoss,
    LogMeanExpEnergyLoss,
    MSEEnergyLoss,
    SupportPosteriorEnergyLoss,
    sample_support_actions,
)
from torchrl_aepo.objectives.posterior import PosteriorStatistics
from torchrl_aepo.trainer import OfflineTrainer, Stage, adam_step

__all__ = [
    "LEARNED_METHODS",
    "DIAGNOSTICS",
    "METHOD_LABELS",
    "DEFINITIONS",
    "StudyConfig",
    "run_study",
    "run_learned",
    "run_definitions",
    "guided_samples",
]

LEARNED_METHODS = (
    "aepo_p1",
    "aepo_p2",
    "mse",
    "dps",
    "cep",
    "log_mean_exp",
    "support_posterior",
    "exact",
)
"""Methods of the learned part; ``"exact"`` is the importance-weighted energy (not trained)."""

DIAGNOSTICS = ("aepo_p1_exact_eps",)
"""Energies only used for the gradient error: AEPO Posterior 1 trained with the *exact* noise
prediction of an independent behaviour sample instead of the learned ``eps_theta``."""

DEFINITIONS = ("exact", "aepo", "mse", "dps")
"""Energy definitions of the definitional part (exact limits, no learning)."""

METHOD_LABELS = {
    "aepo_p1": "AEPO Posterior 1",
    "aepo_p2": "AEPO Posterior 2",
    "mse": "MSE",
    "dps": "DPS",
    "cep": "CEP",
    "log_mean_exp": "log-mean-exp",
    "support_posterior": "support posterior",
    "exact": "exact",
    "aepo": "AEPO (exact posterior)",
    "aepo_p1_exact_eps": "AEPO Posterior 1, exact ε",
}

_RESCALE_KEYS = {False: "no_rescale", True: "rescale"}


@dataclass
class StudyConfig:
    """Every setting of the study (sizes, budgets, grids); defaults are the committed run.

    Attributes:
        datasets: toy datasets (names of :data:`~studies.exactness.toy.DATASETS`).
        critic: the critic of the learned part.
        reference_critics: critics of the definitional part.
        beta: inverse temperature of the target policy.
        seed: global seed (networks, data, sampling).
        num_data: behaviour dataset size (training data of the learned part).
        num_reference: size of the independent sample behind the exact energies.
        behaviour_cells: hidden widths of the behaviour :class:`~torchrl_aepo.MLPNoisePredictor`.
        behaviour_steps: Adam steps of the behaviour model.
        behaviour_batch: its batch size.
        behaviour_lr: its learning rate (cosine-decayed to 0).
        energy_cells: hidden widths of each :class:`~torchrl_aepo.EnergyNetwork`.
        energy_steps: Adam steps of each energy network.
        energy_batch: batch size of the regression losses (samples per step).
        energy_lr: learning rate of the energy networks (cosine-decayed to 0).
        cep_support: ``K``, supports per state of CEP.
        cep_states: states per CEP step (``cep_states * cep_support`` network evaluations).
        cep_pool: behaviour-model samples from which the CEP supports are drawn.
        posterior_times: grid size of :class:`~torchrl_aepo.objectives.PosteriorStatistics`.
        posterior_samples: Monte-Carlo samples per grid time.
        num_eval_samples: guided samples per setting (and target samples).
        guidance_scales: guidance degrees ``w`` (``0`` is the behaviour policy).
        error_times: times of the gradient-error measurement.
        error_points: points ``a_t ~ pi_t`` per time.
        solver_steps: evaluations of the DPM-Solver++ 2S sampler.
        solver_skip_type: its time grid, ``"logSNR"`` (default) or ``"time_uniform"`` (QGPO's;
            with 15 steps its last step jumps from ``t = 0.067`` to ``t_min`` and blurs sharp
            modes even with the exact score, which would mask the energies' differences).
        floor_repeats: pairs of target samples averaged for the noise floor.
    """

    datasets: Sequence[str] = ("8gaussians", "swissroll", "moons", "checkerboard")
    critic: str = "bump"
    reference_critics: Sequence[str] = ("linear", "bump", "twobumps")
    beta: float = 3.0
    seed: int = 0
    num_data: int = 20000
    num_reference: int = 4096
    behaviour_cells: Sequence[int] = (128, 128, 128)
    behaviour_steps: int = 30000
    behaviour_batch: int = 512
    behaviour_lr: float = 2e-3
    energy_cells: Sequence[int] = (128, 128, 128)
    energy_steps: int = 1500
    energy_batch: int = 512
    energy_lr: float = 2e-3
    cep_support: int = 16
    cep_states: int = 64
    cep_pool: int = 8192
    posterior_times: int = 200
    posterior_samples: int = 2048
    num_eval_samples: int = 2000
    guidance_scales: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
    error_times: Sequence[float] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
    error_points: int = 1024
    solver_steps: int = 15
    solver_skip_type: str = "logSNR"
    floor_repeats: int = 3

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (sequences as lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cosine_fit(
    loss_module: LossModule,
    batch_fn: Callable[[], TensorDict],
    steps: int,
    lr: float,
    loss_key: str,
) -> list[float]:
    """Adam with a cosine learning-rate decay, run by the library's trainer (in memory, no
    checkpoints); returns the loss every ``steps // 20`` steps and at the last step."""
    optimizer_step = adam_step(loss_module, lr, steps, adam="foreach", lr_schedule="cosine")
    every, history = max(steps // 20, 1), []

    def update(_batch: None, _step: int) -> dict[str, Tensor]:
        loss = loss_module(batch_fn())[loss_key]
        optimizer_step(loss)
        return {loss_key: loss.detach()}

    def record(_stage: str, done: int, metrics: dict[str, Tensor]) -> None:
        if (done - 1) % every == 0 or done == steps:
            history.append(float(metrics[loss_key]))

    stage = Stage(loss_key, steps, update, dict, batch_size=None)
    trainer = OfflineTrainer(
        [stage], None, run_dir=None, progress_bar=False, log_interval=max(steps, 1)
    )
    trainer.register_op("post_optim", record)
    trainer.train()
    return history


def _energy_gradient(
    energy: nn.Module, noisy_action: Tensor, time: Tensor, chunk: int = 4096
) -> Tensor:
    """``grad_{a_t} f(a_t, t, s)`` for the constant toy observation ``[N, d]``."""
    grads = []
    for x, t in zip(noisy_action.split(chunk), time.split(chunk), strict=True):
        obs = constant_observation(x.shape[:-1], like=x)
        grads.append(value_and_input_gradient(lambda a, t=t, obs=obs: energy(a, t, obs), x)[1])
    return torch.cat(grads)


GradientFn = Callable[[Tensor, Tensor], Tensor]


def _gradient_errors(
    problem: _Problem, estimators: dict[str, GradientFn]
) -> dict[str, dict[str, list[float]]]:
    """Gradient errors per ``cfg.error_times`` against the exact energy of ``problem``.

    ``a_t ~ pi_t`` (:meth:`_Problem.error_points`). Two normalisations of the same error:

    * ``relative``: ``E ||g - grad E_t||^2 / E ||grad E_t||^2``;
    * ``guidance``: ``E ||sigma_t (g - grad E_t)||^2``, the squared error of the guided noise
      prediction at ``w = 1`` (in the units of ``E ||eps||^2 = d = 2``).

    Args:
        problem: the toy problem (exact energy, error points).
        estimators: ``name -> (a_t [N, 2], t [N, 1]) -> gradient [N, 2]``.
    """
    errors: dict[str, dict[str, list[float]]] = {
        "relative": {name: [] for name in estimators},
        "guidance": {name: [] for name in estimators},
    }
    for t in problem.cfg.error_times:
        points, time = problem.error_points(t)
        reference = problem.posterior.energy_gradient("exact", points, time)
        sigma2 = problem.schedule.sigma(time[:1]).item() ** 2
        scale = reference.pow(2).sum(-1).mean().item()
        for name, estimator in estimators.items():
            squared = (estimator(points, time) - reference).pow(2).sum(-1).mean().item()
            errors["relative"][name].append(squared / scale)
            errors["guidance"][name].append(squared * sigma2)
    return errors


@torch.no_grad()
def guided_samples(
    noise_network: nn.Module,
    energy_network: nn.Module | None,
    w: float,
    rescale: bool,
    solver: DPMSolver,
    num_samples: int,
    seed: int,
    chunk: int = 1000,
) -> Tensor:
    """``num_samples`` unclipped actions of :class:`~torchrl_aepo.actor.AEPOActor` for the
    constant toy observation, drawn in chunks of ``chunk`` (bounds the autograd memory of
    importance-weighted energies).

    Args:
        noise_network: behaviour noise predictor ``(a_t, t, s) -> eps``.
        energy_network: energy ``(a_t, t, s) -> [N, 1]`` or ``None`` (behaviour policy).
        w: guidance degree.
        rescale: guidance rescaling (Eq. 45).
        solver: the ODE solver.
        num_samples: number of actions.
        seed: seed of the latent noise.
        chunk: actions per actor call.

    Returns:
        ``[num_samples, 2]``.
    """
    actor = AEPOActor(
        noise_network,
        energy_network,
        action_spec=Unbounded(shape=(2,)),
        guidance_scale=w,
        rescale=rescale,
        solver=solver,
    )
    generator = _generator(seed)
    out = [
        actor.sample(constant_observation((min(chunk, num_samples - start),)), generator=generator)
        for start in range(0, num_samples, chunk)
    ]
    return torch.cat(out)


class _Problem:
    """One toy problem: dataset, critic, reference posterior, target sampler, distances."""

    def __init__(self, dataset: str, critic: ToyCritic, cfg: StudyConfig, seed: int) -> None:
        self.dataset, self.critic, self.cfg = dataset, critic, cfg
        self.generator = _generator(seed)
        self.schedule = VPSchedule()
        self.posterior = ImportanceWeightedPosterior(
            sample_dataset(dataset, cfg.num_reference, generator=self.generator),
            critic,
            cfg.beta,
            schedule=self.schedule,
            generator=self.generator,
        )
        self.target = self.sample_target(cfg.num_eval_samples)
        self.floor = {
            "sw": noise_floor(
                self.sample_target, self.sw, cfg.num_eval_samples, repeats=cfg.floor_repeats
            ),
            "mmd": noise_floor(
                self.sample_target, mmd, cfg.num_eval_samples, repeats=cfg.floor_repeats
            ),
        }

    def sample_target(self, n: int) -> Tensor:
        return sample_target(self.dataset, self.critic, self.cfg.beta, n, generator=self.generator)

    def sample_behaviour(self) -> Tensor:
        return sample_dataset(self.dataset, self.cfg.num_eval_samples, generator=self.generator)

    def sw(self, x: Tensor, y: Tensor) -> Tensor:
        return sliced_wasserstein(x, y, generator=_generator(self.cfg.seed + 1))

    def distances(self, samples: Tensor) -> dict[str, float]:
        return {
            "sw": float(self.sw(samples, self.target)),
            "mmd": float(mmd(samples, self.target)),
        }

    def error_points(self, t: float) -> tuple[Tensor, Tensor]:
        """``a_t ~ pi_t`` ``[n, 2]`` (diffused target samples) and ``t`` ``[n, 1]``."""
        n = self.cfg.error_points
        time = torch.full((n, 1), float(t))
        noise = torch.randn(n, 2, generator=self.generator)
        return self.schedule.add_noise(self.sample_target(n), time, noise), time


def _train_behaviour(data: Tensor, cfg: StudyConfig) -> tuple[nn.Module, list[float]]:
    network = MLPNoisePredictor(2, 1, num_cells=tuple(cfg.behaviour_cells))
    loss = DiffusionLoss(network)
    generator = _generator(cfg.seed + 2)

    def batch() -> TensorDict:
        index = torch.randint(0, len(data), (cfg.behaviour_batch,), generator=generator)
        return TensorDict(
            {"observation": constant_observation((cfg.behaviour_batch,)), "action": data[index]},
            batch_size=[cfg.behaviour_batch],
        )

    history = _cosine_fit(loss, batch, cfg.behaviour_steps, cfg.behaviour_lr, "loss_diffusion")
    return loss.sampling_network(), history


def _energy_loss(
    method: str,
    noise_network: nn.Module,
    critic: ToyCritic,
    statistics: PosteriorStatistics,
    cfg: StudyConfig,
) -> LossModule:
    """A fresh energy network (same initialisation for every method) and the loss of ``method``."""
    torch.manual_seed(cfg.seed + 3)
    energy = EnergyNetwork(2, 1, num_cells=tuple(cfg.energy_cells))
    if method in ("aepo_p1", "aepo_p2", "aepo_p1_exact_eps"):
        posterior = 2 if method == "aepo_p2" else 1
        return AnalyticEnergyLoss(
            energy, noise_network, critic, statistics, beta=cfg.beta, posterior=posterior
        )
    if method == "mse":
        return MSEEnergyLoss(energy, noise_network, critic, beta=cfg.beta)
    if method == "dps":
        return DPSEnergyLoss(energy, noise_network, critic, beta=cfg.beta)
    if method == "cep":
        return CEPEnergyLoss(energy, noise_network, critic, beta=cfg.beta)
    if method == "log_mean_exp":
        return LogMeanExpEnergyLoss(energy, noise_network, critic, beta=cfg.beta)
    if method == "support_posterior":
        return SupportPosteriorEnergyLoss(energy, noise_network, critic, beta=cfg.beta)
    raise ValueError(f"Unknown trained method {method!r}.")


class _PhaseTimer:
    """Wall-clock and process CPU seconds per named phase (``with timer("phase"): ...``)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        wall, cpu = _time.perf_counter(), _time.process_time()
        yield
        self.wall[phase] = round(_time.perf_counter() - wall, 2)
        self.cpu[phase] = round(_time.process_time() - cpu, 2)

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            "wall": {**self.wall, "total": round(sum(self.wall.values()), 2)},
            "cpu": {**self.cpu, "total": round(sum(self.cpu.values()), 2)},
        }


def _train_energies(
    data: Tensor,
    noise_network: nn.Module,
    exact_noise: nn.Module,
    critic: ToyCritic,
    solver: DPMSolver,
    cfg: StudyConfig,
) -> tuple[dict[str, nn.Module], dict[str, list[float]]]:
    """Train the energy networks of ``LEARNED_METHODS[:-1]`` with ``noise_network`` and of
    :data:`DIAGNOSTICS` with ``exact_noise``; returns them frozen, with their loss histories."""
    observations = constant_observation((len(data),))
    statistics = {
        "learned": PosteriorStatistics.estimate(
            noise_network,
            observations,
            data,
            num_times=cfg.posterior_times,
            samples_per_time=cfg.posterior_samples,
            generator=_generator(cfg.seed + 5),
        ),
        "exact": PosteriorStatistics.estimate(
            exact_noise,
            observations,
            data,
            num_times=max(cfg.posterior_times // 4, 2),
            samples_per_time=max(cfg.posterior_samples // 8, 1),
            generator=_generator(cfg.seed + 5),
        ),
    }
    pool = sample_support_actions(
        noise_network,
        constant_observation((cfg.cep_pool,)),
        1,
        solver=solver,
        generator=_generator(cfg.seed + 6),
    ).squeeze(-2)
    generator = _generator(cfg.seed + 7)

    def regression_batch() -> TensorDict:
        index = torch.randint(0, len(data), (cfg.energy_batch,), generator=generator)
        return TensorDict(
            {"observation": constant_observation((cfg.energy_batch,)), "action": data[index]},
            batch_size=[cfg.energy_batch],
        )

    def support_batch() -> TensorDict:
        batch = regression_batch()
        index = torch.randint(
            0, len(pool), (cfg.energy_batch, cfg.cep_support), generator=generator
        )
        batch.set(("support", "action"), pool[index])
        return batch

    def cep_batch() -> TensorDict:
        index = torch.randint(0, len(pool), (cfg.cep_states, cfg.cep_support), generator=generator)
        return TensorDict(
            {
                "observation": constant_observation((cfg.cep_states,)),
                ("support", "action"): pool[index],
            },
            batch_size=[cfg.cep_states],
        )

    energies: dict[str, nn.Module] = {}
    histories: dict[str, list[float]] = {}
    for method in (*LEARNED_METHODS[:-1], *DIAGNOSTICS):
        exact = method in DIAGNOSTICS
        loss = _energy_loss(
            method,
            exact_noise if exact else noise_network,
            critic,
            statistics["exact" if exact else "learned"],
            cfg,
        )
        torch.manual_seed(cfg.seed + 8)
        batch_fn = {"cep": cep_batch, "support_posterior": support_batch}.get(
            method, regression_batch
        )
        histories[method] = _cosine_fit(
            loss, batch_fn, cfg.energy_steps, cfg.energy_lr, "loss_energy"
        )
        energies[method] = loss.energy_network.eval().requires_grad_(False)
    return energies, histories


def _posterior_mean_errors(
    problem: _Problem, noise_network: nn.Module, clip: tuple[float, float] = (-1.0, 1.0)
) -> list[float]:
    """``E ||clip(mu_theta(a_t)) - E[a_0 | a_t]||^2`` per ``cfg.error_times``, ``a_t ~ pi_t``.

    ``mu_theta = (a_t - sigma_t eps_theta) / alpha_t`` (Eq. 18) is the posterior mean that the
    AEPO and DPS targets use; its error is the noise network's error times ``sigma_t/alpha_t``.
    """
    errors = []
    for t in problem.cfg.error_times:
        points, time = problem.error_points(t)
        with torch.no_grad():
            eps = noise_network(points, time, constant_observation((len(points),)))
        mean = problem.schedule.posterior_mean(points, eps, time).clamp(*clip)
        exact = problem.posterior.posterior_mean(points, time)
        errors.append((mean - exact).pow(2).sum(-1).mean().item())
    return errors


def run_learned(dataset: str, cfg: StudyConfig) -> dict[str, Any]:
    """The learned part on one dataset (critic ``cfg.critic``); see the module docstring.

    Returns:
        a JSON-friendly dict: ``noise_floor`` (``sw``, ``mmd``), ``behaviour_fit`` (``sw`` of
        unguided samples to fresh data, and the ``sw_floor`` of two data samples),
        ``error_times``, ``gradient_error`` (``{"relative"|"guidance": {method: [per time]}}``,
        see :func:`_gradient_errors`, plus the definitional limits under
        ``definition:<kind>``), ``posterior_mean_error`` (per time, of the learned Tweedie mean
        used by the AEPO and DPS targets), ``distance``
        (``{metric: {method: {"no_rescale"|"rescale": {str(w): value}}}}``), training
        ``losses``, ``seconds`` (wall and CPU per phase) and ``samples`` (target, behaviour
        and every method at ``w = 1`` without rescaling, for the figures).
    """
    timer = _PhaseTimer()
    critic = make_critic(cfg.critic)
    with timer("setup"):
        problem = _Problem(dataset, critic, cfg, cfg.seed)
        independent = ImportanceWeightedPosterior(
            sample_dataset(dataset, cfg.num_reference, generator=_generator(cfg.seed + 9)),
            critic,
            cfg.beta,
            schedule=problem.schedule,
            generator=_generator(cfg.seed + 10),
        )
        data = sample_dataset(dataset, cfg.num_data, generator=_generator(cfg.seed + 4))
        solver = DPMSolver(problem.schedule, steps=cfg.solver_steps, skip_type=cfg.solver_skip_type)
    with timer("behaviour"):
        torch.manual_seed(cfg.seed)
        noise_network, behaviour_losses = _train_behaviour(data, cfg)
    with timer("energies"):
        energies, energy_losses = _train_energies(
            data, noise_network, EmpiricalNoisePredictor(independent), critic, solver, cfg
        )
    with timer("gradient_error"):
        estimators: dict[str, GradientFn] = {
            method: functools.partial(_energy_gradient, energy)
            for method, energy in energies.items()
        }
        estimators["exact"] = functools.partial(independent.energy_gradient, "exact")
        for kind in DEFINITIONS[1:]:
            estimators[f"definition:{kind}"] = functools.partial(
                problem.posterior.energy_gradient, kind
            )
        gradient_error = _gradient_errors(problem, estimators)
        posterior_mean_error = _posterior_mean_errors(problem, noise_network)
    energies["exact"] = ReferenceEnergy(problem.posterior, "exact")
    with timer("sampling"):
        behaviour = guided_samples(
            noise_network, None, 0.0, False, solver, cfg.num_eval_samples, cfg.seed + 11
        )
        behaviour_distance = problem.distances(behaviour)
        samples = {"target": problem.target.tolist(), "behaviour": behaviour.tolist()}
        distance: dict[str, dict[str, Any]] = {"sw": {}, "mmd": {}}
        for method in LEARNED_METHODS:
            for metric in distance:
                distance[metric][method] = {key: {} for key in _RESCALE_KEYS.values()}
            for (rescale, key), w in itertools.product(_RESCALE_KEYS.items(), cfg.guidance_scales):
                if w == 0:
                    values = behaviour_distance
                else:
                    guided = guided_samples(
                        noise_network,
                        energies[method],
                        w,
                        rescale,
                        solver,
                        cfg.num_eval_samples,
                        cfg.seed + 11,
                    )
                    values = problem.distances(guided)
                    if w == 1.0 and not rescale:
                        samples[method] = guided.tolist()
                for metric, value in values.items():
                    distance[metric][method][key][str(w)] = value
        behaviour_fit = {
            "sw": float(problem.sw(behaviour, problem.sample_behaviour())),
            "sw_floor": float(problem.sw(problem.sample_behaviour(), problem.sample_behaviour())),
        }
    return {
        "critic": cfg.critic,
        "noise_floor": problem.floor,
        "behaviour_fit": behaviour_fit,
        "error_times": list(cfg.error_times),
        "gradient_error": gradient_error,
        "posterior_mean_error": posterior_mean_error,
        "distance": distance,
        "losses": {"behaviour": behaviour_losses, **energy_losses},
        "seconds": timer.summary(),
        "samples": samples,
    }


def run_definitions(dataset: str, critic_name: str, cfg: StudyConfig) -> dict[str, Any]:
    """The definitional part on one dataset and critic; see the module docstring.

    Returns:
        ``noise_floor``, ``distance`` (``{metric: {kind: value}}`` at ``w = 1`` without
        rescaling, the setting where the exact energy is exact), ``gradient_error``
        (``{"relative"|"guidance": {kind: [per time]}}`` against the exact energy, see
        :func:`_gradient_errors`), ``seconds`` and the samples per kind.
    """
    timer = _PhaseTimer()
    critic = make_critic(critic_name)
    with timer("setup"):
        problem = _Problem(dataset, critic, cfg, cfg.seed + 100)
        noise = EmpiricalNoisePredictor(problem.posterior)
        solver = DPMSolver(problem.schedule, steps=cfg.solver_steps, skip_type=cfg.solver_skip_type)
    distance: dict[str, dict[str, float]] = {"sw": {}, "mmd": {}}
    samples: dict[str, list[list[float]]] = {"target": problem.target.tolist()}
    with timer("sampling"):
        for kind in DEFINITIONS:
            guided = guided_samples(
                noise,
                ReferenceEnergy(problem.posterior, kind),
                1.0,
                False,
                solver,
                cfg.num_eval_samples,
                cfg.seed + 12,
            )
            samples[kind] = guided.tolist()
            for metric, value in problem.distances(guided).items():
                distance[metric][kind] = value
    with timer("gradient_error"):
        errors = _gradient_errors(
            problem,
            {
                kind: functools.partial(problem.posterior.energy_gradient, kind)
                for kind in DEFINITIONS[1:]
            },
        )
    return {
        "noise_floor": problem.floor,
        "distance": distance,
        "gradient_error": errors,
        "seconds": timer.summary(),
        "samples": samples,
    }


def _run_unit(
    unit: tuple[str, str, str | None], cfg: StudyConfig, threads: int | None
) -> dict[str, Any]:
    """One independent unit of work (``("learned", dataset, None)`` or ``("definitions",
    dataset, critic)``); every unit seeds its own random sources, so the order and the
    process it runs in do not change its result."""
    if threads is not None:
        torch.set_num_threads(threads)
    part, dataset, critic = unit
    if part == "learned":
        return run_learned(dataset, cfg)
    return run_definitions(dataset, critic, cfg)


def run_study(
    cfg: StudyConfig,
    *,
    workers: int = 1,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run both parts of the study on every dataset of ``cfg``.

    Args:
        cfg: the configuration.
        workers: processes running the units (one learned part per dataset, one definitional
            part per dataset and critic) in parallel; ``1`` runs them in this process. The
            results do not depend on it.
        threads: ``torch.set_num_threads`` of each unit (``None``: unchanged in this process,
            1 in worker processes).
        log: optional progress callback (one line per finished unit).

    Returns:
        ``{"config": ..., "learned": {dataset: run_learned(...)}, "definitions":
        {dataset: {critic: run_definitions(...)}}, "seconds": total wall time}``.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    log = log if log is not None else (lambda message: None)
    start = _time.perf_counter()
    units: list[tuple[str, str, str | None]] = [("learned", d, None) for d in cfg.datasets]
    units += [("definitions", d, c) for d in cfg.datasets for c in cfg.reference_critics]
    outputs: dict[tuple[str, str, str | None], dict[str, Any]] = {}
    if workers == 1:
        for unit in units:
            outputs[unit] = _run_unit(unit, cfg, threads)
            log(f"{'/'.join(u for u in unit if u)}: {outputs[unit]['seconds']['wall']}")
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = {
                pool.submit(_run_unit, unit, cfg, 1 if threads is None else threads): unit
                for unit in units
            }
            for future in as_completed(futures):
                unit = futures[future]
                outputs[unit] = future.result()
                log(f"{'/'.join(u for u in unit if u)}: {outputs[unit]['seconds']['wall']}")
    return {
        "config": cfg.to_dict(),
        "learned": {d: outputs["learned", d, None] for d in cfg.datasets},
        "definitions": {
            d: {c: outputs["definitions", d, c] for c in cfg.reference_critics}
            for d in cfg.datasets
        },
        "seconds": round(_time.perf_counter() - start, 1),
    }
