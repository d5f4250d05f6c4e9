"""AEPO offline RL, end to end: data -> networks -> losses -> training -> evaluation -> report.

    python recipes/aepo_offline.py                      # CPU default: local Pendulum dataset
    python recipes/aepo_offline.py task=hopper-medium-v2 preset=paper device=cuda
    python recipes/aepo_offline.py aepo.beta=5 aepo.guidance=3 eval.episodes=20 logger=wandb

Configuration: ``configs/config.yaml`` (+ ``preset/``, ``task/``, ``logger/`` groups). The
factories below build each piece from the config; :func:`run` reads top to bottom and is
what the hydra entry point (and the tests, through hydra's compose API) call.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

# ----------------------------------------------------------------------------------- factories


class RecipeError(RuntimeError):
    """A user-facing configuration / data error; the CLI prints its message without a traceback."""


def setup_runtime(cfg: DictConfig) -> torch.device:
    """Seed, threads and device from the config."""
    if cfg.threads is not None:
        torch.set_num_threads(int(cfg.threads))
    seed = int(cfg.seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device not in ("cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
        raise RecipeError(f"device must be cpu, cuda, cuda:N or auto; got {cfg.device!r}.")
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError("device=cuda was requested but CUDA is not available; use device=cpu.")
    return device


def compile_options(cfg: DictConfig) -> dict[str, Any] | None:
    """``torch.compile`` keyword arguments from ``cfg.compile``, or ``None`` when it is off."""
    if not bool(cfg.compile.enabled):
        return None
    return {} if cfg.compile.mode is None else {"mode": str(cfg.compile.mode)}


def resolve_run_dir(cfg: DictConfig) -> Path:
    """The run directory: hydra's output dir (single or multirun) or ``cfg.run_dir``.

    ``resume=true`` with no checkpoints there picks the latest unfinished run of the task;
    ``resume=<path>`` picks that directory.
    """
    run_dir = Path(cfg.run_dir)
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            run_dir = Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        pass
    resume = cfg.resume
    if isinstance(resume, str) and resume not in ("auto", "true", "false"):
        target = Path(resume)
        if not (target / "checkpoints").is_dir():
            raise RecipeError(f"resume={resume!r}: no checkpoints directory in that run dir.")
        return target
    if resume is True and not (run_dir / "checkpoints").is_dir():
        root = run_dir.parent
        candidates = sorted(
            (
                d
                for d in root.glob("*")
                if (d / "checkpoints").is_dir()
                and not (d / "results.json").exists()
                and d != run_dir
            ),
            key=lambda d: d.stat().st_mtime,
        )
        if not candidates:
            raise RecipeError(
                f"resume=true: no unfinished run with checkpoints under {root}. Pass "
                f"resume=<run dir> or run_dir=<run dir>."
            )
        print(f"[aepo] resume=true: continuing the latest unfinished run {candidates[-1]}")
        return candidates[-1]
    return run_dir


def make_task(cfg: DictConfig):
    """The task's :class:`TaskSpec`, with dataset / eval env overridden from the config."""
    from torchrl_aepo.data import get_task

    try:
        spec = get_task(cfg.task.name)
    except KeyError as err:  # UnknownTaskError: the message lists the closest task names
        raise RecipeError(str(err)) from None
    overrides = {}
    for key, field_name in (
        ("dataset_id", "dataset_id"),
        ("eval_env_id", "eval_env_id"),
        ("max_episode_steps", "max_episode_steps"),
    ):
        value = cfg.task.get(key)
        if value is not None and value != getattr(spec, field_name):
            overrides[field_name] = value
    return dataclasses.replace(spec, **overrides) if overrides else spec


def make_data(cfg: DictConfig, task, device: torch.device):
    """TorchRL replay buffer of the dataset (TED keys) and its metadata."""
    from torchrl_aepo.data import DatasetUnavailableError, make_offline_data

    try:
        return make_offline_data(
            task,
            batch_size=int(cfg.train.critic.batch_size),
            root=cfg.data.root,
            build_if_missing=bool(cfg.data.build_if_missing),
            normalize_observations=bool(cfg.data.normalize_observations),
            reward_transform=cfg.data.reward_transform,
            device=device,
            seed=int(cfg.seed),
            drop_nonfinite=bool(cfg.data.drop_nonfinite),
        )
    except DatasetUnavailableError as err:
        raise RecipeError(str(err)) from err


def make_networks(cfg: DictConfig, obs_dim: int, action_dim: int, device: torch.device) -> dict:
    """Noise predictor (+ a frozen sampling copy), twin Q, V and energy networks."""
    from torchrl_aepo.nets import (
        EnergyNetwork,
        MLPNoisePredictor,
        TwinQNetwork,
        UMLPNoisePredictor,
        ValueNetwork,
    )

    m = cfg.model
    if m.noise_network == "umlp":
        noise = UMLPNoisePredictor(action_dim, obs_dim, widths=tuple(m.noise_widths))
    elif m.noise_network == "mlp":
        noise = MLPNoisePredictor(action_dim, obs_dim, num_cells=tuple(m.noise_num_cells))
    else:
        raise RecipeError(f"model.noise_network must be umlp or mlp, got {m.noise_network!r}.")
    nets = {
        "noise": noise,
        "qvalue": TwinQNetwork(obs_dim, action_dim, num_cells=tuple(m.qvalue_num_cells)),
        "value": ValueNetwork(obs_dim, num_cells=tuple(m.value_num_cells)),
        "energy": EnergyNetwork(action_dim, obs_dim, num_cells=tuple(m.energy_num_cells)),
    }
    nets = {k: v.to(device) for k, v in nets.items()}
    # The behaviour model used by the energy target, the Gamma table and the actor: a frozen
    # copy that receives the (EMA) weights when the diffusion stage finishes.
    nets["behaviour"] = copy.deepcopy(nets["noise"]).requires_grad_(False).eval()
    return nets


def make_losses(cfg: DictConfig, nets: dict, schedule) -> dict:
    """DiffusionLoss (+EMA SoftUpdate) and ExpectileLoss (+target SoftUpdate)."""
    from torchrl.objectives import SoftUpdate

    from torchrl_aepo.objectives import DiffusionLoss, ExpectileLoss

    ema_decay = cfg.train.diffusion.ema_decay
    diffusion = DiffusionLoss(nets["noise"], schedule=schedule, ema=ema_decay is not None)
    critic = ExpectileLoss(
        nets["qvalue"],
        nets["value"],
        expectile=float(cfg.aepo.expectile),
        gamma=float(cfg.aepo.gamma),
    )
    maybe_compile(cfg, diffusion)
    maybe_compile(cfg, critic)
    return {
        "diffusion": diffusion,
        "diffusion_updater": None
        if ema_decay is None
        else SoftUpdate(diffusion, tau=1.0 - float(ema_decay)),
        "critic": critic,
        "critic_updater": SoftUpdate(critic, tau=float(cfg.train.critic.target_tau)),
    }


def maybe_compile(cfg: DictConfig, loss: torch.nn.Module) -> torch.nn.Module:
    """Compile ``loss``'s forward in place (``nn.Module.compile``) when ``compile.enabled``.

    In place, so parameters, ``state_dict`` keys, target-parameter updates and checkpoints
    are those of the eager module.
    """
    options = compile_options(cfg)
    if options is not None:
        loss.compile(**options)
    return loss


class AdvantageCritic(torch.nn.Module):
    """``Q(s, a) - V(s)`` per head: the critic with a state-only baseline removed.

    Used by ``aepo.energy_baseline=value``: the energy target then regresses
    ``beta (Q - V)`` instead of ``beta Q``. ``V(s)`` does not depend on the action, so
    ``grad_a Q``, the posterior terms and hence the guidance ``grad_a f`` are unchanged; the
    network no longer has to fit the large state-dependent offset ``beta V(s)``.
    """

    def __init__(self, qvalue: torch.nn.Module, value: torch.nn.Module) -> None:
        super().__init__()
        self.qvalue, self.value = qvalue, value
        self.obs_dim = getattr(qvalue, "obs_dim", None)
        self.action_dim = getattr(qvalue, "action_dim", None)

    def forward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.qvalue(observation, action) - self.value(observation)


ADAM_IMPLEMENTATIONS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {}}


def make_optimizer_step(cfg: DictConfig, module: torch.nn.Module, lr: float, steps: int):
    """Adam over the trainable parameters of ``module`` with the configured lr schedule/clip.

    ``train.adam`` picks torch's Adam implementation (same update, different kernels):
    ``fused`` (one fused kernel per step, the default), ``foreach`` or ``loop``.
    """
    from torchrl_aepo.trainer import OptimizerStep, cosine_or_constant

    kind = str(cfg.train.adam)
    if kind not in ADAM_IMPLEMENTATIONS:
        raise RecipeError(
            f"train.adam must be one of {sorted(ADAM_IMPLEMENTATIONS)}, got {kind!r}."
        )
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=float(lr), **ADAM_IMPLEMENTATIONS[kind])
    return OptimizerStep(
        optimizer,
        grad_clip=None if cfg.train.grad_clip is None else float(cfg.train.grad_clip),
        scheduler=cosine_or_constant(optimizer, cfg.train.lr_schedule, int(steps)),
    )


def make_actor(cfg: DictConfig, nets: dict, critic_loss, metadata, schedule, guidance: float):
    """The AEPO policy: guided DPM-Solver over the behaviour model and the energy network."""
    from torchrl.data import Bounded

    from torchrl_aepo.actor import AEPOActor
    from torchrl_aepo.diffusion.solver import DPMSolver

    low, high = action_box(metadata)
    if needs_action_scaling(cfg, metadata):  # the eval env's ActionScaling maps [-1, 1] back
        low, high = -torch.ones_like(low), torch.ones_like(high)
    solver = DPMSolver(schedule, **OmegaConf.to_container(cfg.aepo.solver, resolve=True))
    qvalue = critic_loss.target_qvalue_network() if cfg.aepo.selection != "first" else None
    return AEPOActor(
        nets["behaviour"],
        nets["energy"],
        action_spec=Bounded(low, high, shape=low.shape, dtype=torch.float32),
        guidance_scale=float(guidance),
        rescale=bool(cfg.aepo.rescale),
        solver=solver,
        num_candidates=int(cfg.aepo.num_candidates),
        selection=str(cfg.aepo.selection),
        qvalue_network=qvalue,
        deterministic_seed=int(cfg.eval.seed),
        compile=False if (options := compile_options(cfg)) is None else options,
    )


def make_logger(cfg: DictConfig, run_dir: Path):
    """A TorchRL logger (csv | tensorboard | wandb) writing under ``run_dir/logs``, or None."""
    from torchrl.record.loggers import get_logger

    backend = cfg.logger.backend
    if backend in (None, "none", ""):
        return None
    log_dir = str(run_dir / "logs")
    if backend == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise RecipeError(
                "logger=tensorboard needs the tensorboard package: `pip install tensorboard`, "
                "or use logger=csv (default) / logger=wandb."
            ) from None
    if backend == "wandb":
        mode = cfg.logger.get("mode", "offline")
        wandb_kwargs = {
            "project": cfg.logger.project,
            "mode": mode,
            "offline": mode == "offline",
            "config": OmegaConf.to_container(cfg, resolve=True),
        }
        if cfg.logger.get("entity"):
            wandb_kwargs["entity"] = cfg.logger.entity
        return get_logger("wandb", log_dir, cfg.logger.exp_name, wandb_kwargs=wandb_kwargs)
    if backend not in ("csv", "tensorboard"):
        raise RecipeError(
            f"logger.backend must be csv, tensorboard, wandb or none; got {backend!r}."
        )
    return get_logger(backend, log_dir, cfg.logger.exp_name)


def training_config(cfg: DictConfig) -> dict:
    """The part of the config that determines training (hashed into the checkpoints)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    train = {
        k: v
        for k, v in c["train"].items()
        if k
        not in (
            "log_interval",
            "checkpoint_interval",
            "eval_interval",
            "eval_episodes",
            "stop_after_stage",
        )
    }
    aepo = {
        k: c["aepo"][k] for k in ("beta", "expectile", "gamma", "posterior", "clip_posterior_mean")
    }
    return {
        "task": c["task"],
        "data": c["data"],
        "model": c["model"],
        "aepo": aepo,
        "train": train,
        "seed": c["seed"],
    }


def eval_kwargs(cfg: DictConfig, metadata, episodes: int) -> dict:
    from torchrl_aepo.data import normalized_score

    max_steps = cfg.eval.max_steps or metadata.max_episode_steps
    return {
        "episodes": int(episodes),
        "max_steps": int(max_steps),
        "seed": int(cfg.eval.seed),
        "normalize": lambda returns: np.atleast_1d(normalized_score(metadata, np.asarray(returns))),
        "exploration": str(cfg.eval.exploration),
    }


def action_box(metadata) -> tuple[torch.Tensor, torch.Tensor]:
    low = torch.as_tensor(metadata.action_low, dtype=torch.float32).reshape(-1)
    high = torch.as_tensor(metadata.action_high, dtype=torch.float32).reshape(-1)
    return low, high


def needs_action_scaling(cfg: DictConfig, metadata) -> bool:
    """Whether actions are mapped to [-1, 1] (``data.normalize_actions`` and a different box)."""
    low, high = action_box(metadata)
    unit = bool((low == -1).all() and (high == 1).all())
    return bool(cfg.data.normalize_actions) and not unit


def scale_actions(cfg: DictConfig, replay_buffer, metadata, device: torch.device):
    """Map the dataset's actions to [-1, 1] when its box differs; returns the whole dataset.

    The diffusion prior, the mu_{0|t} clip box and the actor's box assume [-1, 1] (D4RL's
    convention). Sampled batches go through a forward-only ``ActionScaling`` on the replay
    buffer; the eval env gets an ``ActionScaling`` that maps the policy's actions back.
    """
    dataset = replay_buffer[:]
    if not needs_action_scaling(cfg, metadata):
        return dataset
    from torchrl.envs.transforms import ActionScaling

    low, high = (x.to(device) for x in action_box(metadata))
    loc, scale = (high + low) / 2, (high - low) / 2
    replay_buffer.append_transform(ActionScaling(in_keys_inv=[], loc=loc, scale=scale))
    dataset = dataset.clone()
    dataset["action"] = (dataset["action"] - loc) / scale
    return dataset


def make_env(cfg: DictConfig, metadata, num_envs: int, device: torch.device):
    """Batched eval env (+ the dataset's ObservationNorm, + ActionScaling to [-1, 1])."""
    from torchrl.envs.transforms import ActionScaling

    from torchrl_aepo.data import import_eval_requirements
    from torchrl_aepo.evaluation import make_eval_env

    try:
        import_eval_requirements(metadata)  # registers gymnasium-robotics envs, if needed
    except ImportError as err:
        raise RecipeError(str(err)) from err
    transforms = []
    if cfg.data.normalize_observations:
        transforms.append(metadata.observation_norm_transform())
    if needs_action_scaling(cfg, metadata):
        transforms.append(ActionScaling())
    try:
        return make_eval_env(
            metadata.eval_env_id,
            min(int(num_envs), int(cfg.eval.episodes)) if num_envs else 1,
            env_kwargs=dict(metadata.eval_env_kwargs or {}),
            max_episode_steps=metadata.max_episode_steps,
            transforms=transforms,
            device=device,
        )
    except RuntimeError as err:
        raise RecipeError(str(err)) from err


def make_stages(cfg: DictConfig, nets: dict, losses: dict, dataset, schedule, device):
    """The training stages (staged or joint schedule) and the EMA -> sampling-network copy.

    The diffusion, critic and energy optimisers, the Gamma-table estimate on the dataset
    (frozen sampling network) and the energy loss (built once the critic and the table exist).
    """
    from torchrl_aepo.objectives import AnalyticEnergyLoss, PosteriorStatistics, frozen_view
    from torchrl_aepo.trainer import make_aepo_stages

    tc = cfg.train
    schedule_kind = str(tc.schedule)
    n = {
        "diffusion": tc.diffusion.steps,
        "critic": tc.critic.steps,
        "energy": tc.energy.steps,
        "joint": tc.joint.steps,
    }
    clip = cfg.aepo.clip_posterior_mean
    gamma_generator = torch.Generator(device=device).manual_seed(int(cfg.seed) + 1)

    def copy_behaviour_weights() -> None:
        nets["behaviour"].load_state_dict(losses["diffusion"].sampling_network().state_dict())

    def estimate_gamma():
        return PosteriorStatistics.estimate(
            nets["behaviour"],
            dataset["observation"],
            dataset["action"],
            schedule=schedule,
            num_times=int(tc.gamma_table.num_times),
            samples_per_time=int(tc.gamma_table.samples_per_time),
            batch_size=int(tc.gamma_table.batch_size),
            generator=gamma_generator,
        )

    def make_energy_loss(posterior):
        critic = losses["critic"].target_qvalue_network()
        if cfg.aepo.energy_baseline == "value":
            critic = AdvantageCritic(critic, frozen_view(nets["value"]))
        elif cfg.aepo.energy_baseline not in (None, "none"):
            raise RecipeError(
                f"aepo.energy_baseline must be none or value, got {cfg.aepo.energy_baseline!r}."
            )
        energy_loss = AnalyticEnergyLoss(
            nets["energy"],
            nets["behaviour"],
            critic,
            posterior,
            beta=float(cfg.aepo.beta),
            posterior=int(cfg.aepo.posterior),
            clip_posterior_mean=None if clip is None else tuple(clip),
        )
        return maybe_compile(cfg, energy_loss)

    stages, _ = make_aepo_stages(
        schedule=schedule_kind,
        steps=n,
        batch_sizes={
            "diffusion": tc.diffusion.batch_size,
            "critic": tc.critic.batch_size,
            "energy": tc.energy.batch_size,
            "joint": tc.joint.batch_size,
        },
        diffusion_loss=losses["diffusion"],
        diffusion_step=make_optimizer_step(
            cfg,
            nets["noise"],
            tc.diffusion.lr,
            n["joint" if schedule_kind == "joint" else "diffusion"],
        ),
        diffusion_updater=losses["diffusion_updater"],
        critic_loss=losses["critic"],
        critic_step=make_optimizer_step(
            cfg,
            losses["critic"],
            tc.critic.lr,
            n["joint" if schedule_kind == "joint" else "critic"],
        ),
        critic_updater=losses["critic_updater"],
        estimate_gamma=estimate_gamma,
        make_energy_loss=make_energy_loss,
        energy_step=lambda loss: make_optimizer_step(
            cfg, nets["energy"], tc.energy.lr, n["joint" if schedule_kind == "joint" else "energy"]
        ),
        on_diffusion_done=copy_behaviour_weights,
        gamma_refresh_interval=int(tc.joint.gamma_refresh_interval),
        behaviour_network=nets["behaviour"],
        gamma_generator=gamma_generator,
    )
    return stages, copy_behaviour_weights


# ----------------------------------------------------------------------------------------- main


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, evaluate and report AEPO as configured; returns the content of results.json."""
    from torchrl._utils import timeit

    from torchrl_aepo.diffusion.schedule import VPSchedule
    from torchrl_aepo.evaluation import guidance_sweep, sweep_table
    from torchrl_aepo.plots import (
        plot_eval_over_training,
        plot_guidance_sweep,
        plot_training_losses,
    )
    from torchrl_aepo.trainer import CheckpointError, NonFiniteError, OfflineTrainer, config_hash

    wall_start = time.perf_counter()
    timeit.erase()

    # 1. compose: run dir, runtime, task
    run_dir = resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = setup_runtime(cfg)
    task = make_task(cfg)
    print(
        f"[aepo] task {task.name} ({task.backend}: {task.dataset_id}) | device {device} | "
        f"threads {torch.get_num_threads()} | run dir {run_dir}"
    )

    # 2. data
    t0 = time.perf_counter()
    replay_buffer, metadata = make_data(cfg, task, device)
    data_seconds = time.perf_counter() - t0
    dataset = scale_actions(cfg, replay_buffer, metadata, device)
    print(
        f"[aepo] dataset {task.dataset_id}: {len(replay_buffer)} transitions, obs {metadata.obs_dim}, "
        f"action {metadata.action_dim} ({data_seconds:.1f} s)"
    )

    # 3. modules and losses
    schedule = VPSchedule()
    nets = make_networks(cfg, metadata.obs_dim, metadata.action_dim, device)
    losses = make_losses(cfg, nets, schedule)
    stages, copy_behaviour_weights = make_stages(cfg, nets, losses, dataset, schedule, device)
    tc = cfg.train
    schedule_kind = str(tc.schedule)

    # 4. train
    logger = make_logger(cfg, run_dir)
    train_config = training_config(cfg)
    resume = cfg.resume
    trainer = OfflineTrainer(
        stages,
        replay_buffer,
        run_dir=run_dir,
        logger=logger,
        device=device,
        log_interval=int(tc.log_interval),
        checkpoint_interval=int(tc.checkpoint_interval),
        progress_bar=bool(cfg.progress_bar),
        config=train_config,
        stop_after_stage=tc.stop_after_stage,
        resume=resume is not False and resume != "false",
    )
    actor = make_actor(cfg, nets, losses["critic"], metadata, schedule, float(cfg.aepo.guidance))
    env = make_env(cfg, metadata, int(cfg.eval.num_envs), device)
    last_stage = stages[-1].name
    if int(tc.eval_interval) > 0:
        train_eval_kwargs = eval_kwargs(cfg, metadata, int(tc.eval_episodes))

        def evaluate_during_training(stage: str, step: int, _metrics) -> None:
            if (
                stage == last_stage
                and step % int(tc.eval_interval) == 0
                and step < stages[-1].total_steps
            ):
                if schedule_kind == "joint":
                    copy_behaviour_weights()
                with timeit("eval/during_training"):
                    result = guidance_sweep(
                        actor, env, [float(cfg.aepo.guidance)], **train_eval_kwargs
                    )[0]
                trainer.log_scalar(f"{stage}/eval_normalized_score", result.normalized_mean, step)
                trainer.log_scalar(f"{stage}/eval_return", result.return_mean, step)

        trainer.register_op("post_optim", evaluate_during_training)
    try:
        summary = trainer.train()
    except (CheckpointError, NonFiniteError) as err:
        raise RecipeError(str(err)) from err
    if summary["stopped_after"] is not None:
        _close_logger(cfg, logger)
        print(
            f"[aepo] stopped after stage '{summary['stopped_after']}' (train.stop_after_stage); "
            f"re-run with run_dir={run_dir} to resume."
        )
        return {
            "stopped_after": summary["stopped_after"],
            "train": summary,
            "run_dir": str(run_dir),
        }
    actor.save(run_dir / "actor.pt")

    # 5. evaluate: final policy (chosen w), behaviour policy (w = 0) and the guidance sweep
    chosen = float(cfg.aepo.guidance)
    sweep_ws = sorted({0.0, chosen, *[float(w) for w in (cfg.eval.guidance_sweep or [])]})
    t0 = time.perf_counter()
    with timeit("eval/final"):
        sweep = guidance_sweep(
            actor, env, sweep_ws, **eval_kwargs(cfg, metadata, int(cfg.eval.episodes))
        )
    eval_seconds = time.perf_counter() - t0
    by_w = {r.guidance: r for r in sweep}
    final, behaviour = by_w[chosen], by_w[0.0]
    for r in sweep:
        if logger is not None:
            logger.log_scalar(
                "eval/normalized_score_vs_guidance",
                r.normalized_mean,
                step=int(round(r.guidance * 100)),
            )
    best_sweep = max(sweep, key=lambda r: r.normalized_mean)
    during = trainer.history.get(f"{last_stage}/eval_normalized_score", [])
    during_points = [*during, [stages[-1].total_steps, final.normalized_mean]]
    best_during = max(during_points, key=lambda p: p[1])

    # 6. report: results.json, plots, summary
    stage_summary = summary["stages"]
    results = {
        "task": task.name,
        "dataset": {
            "id": task.dataset_id,
            "backend": task.backend,
            "num_transitions": len(replay_buffer),
            "metadata": _jsonable(metadata.to_dict()),
        },
        "config_hash": config_hash(experiment_config(cfg)),
        "train_config_hash": summary["config_hash"],
        "seeds": {
            "train": int(cfg.seed),
            "eval": int(cfg.eval.seed),
            "eval_env_seeds": final.seeds,
        },
        "device": str(device),
        "threads": torch.get_num_threads(),
        "schedule": schedule_kind,
        "final": final.to_dict(),
        "behaviour": behaviour.to_dict(),
        "improvement_over_behaviour": final.normalized_mean - behaviour.normalized_mean,
        "best": {
            "during_training": {
                "step": best_during[0],
                "normalized_score": best_during[1],
                "note": "max over evaluations during training and the final one",
            },
            "over_guidance_sweep": {
                "guidance": best_sweep.guidance,
                "normalized_mean": best_sweep.normalized_mean,
                "normalized_std": best_sweep.normalized_std,
                "note": "selected on the evaluation episodes (optimistic)",
            },
        },
        "guidance_sweep": [r.to_dict() for r in sweep],
        "eval_during_training": during,
        "timings": {
            "data_seconds": round(data_seconds, 3),
            "stages": {
                k: {
                    "seconds": v["seconds"],
                    "updates_per_s": v["updates_per_s"],
                    "steps": v["steps"],
                    "skipped": v["skipped"],
                }
                for k, v in stage_summary.items()
            },
            "eval_seconds": round(eval_seconds, 3),
            "total_seconds": None,
            "timeit": {
                k: {"mean_s": v[0], "total_s": v[1], "count": v[2]} for k, v in timeit._REG.items()
            },
        },
        "train": summary,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": _versions(),
        "run_dir": str(run_dir),
    }
    plots_dir = run_dir / "plots"
    title = f"{task.name} (seed {cfg.seed})"
    plots = [
        plot_training_losses(trainer.history, plots_dir / "training_losses.png", title=title),
        plot_eval_over_training(
            during_points,
            plots_dir / "eval_over_training.png",
            final=final.normalized_mean,
            behaviour=behaviour.normalized_mean,
            title=title,
        ),
        plot_guidance_sweep(
            [r.to_dict() for r in sweep],
            plots_dir / "guidance_sweep.png",
            chosen=chosen,
            title=title,
        ),
    ]
    results["plots"] = [str(p.relative_to(run_dir)) for p in plots if p is not None]
    results["timings"]["total_seconds"] = round(time.perf_counter() - wall_start, 3)
    write_results(run_dir / "results.json", results)
    _close_logger(cfg, logger)
    _print_report(results, sweep_table(sweep, chosen))
    return results


def _close_logger(cfg: DictConfig, logger) -> None:
    if logger is not None and cfg.logger.backend == "wandb":
        logger.experiment.finish()


def experiment_config(cfg: DictConfig) -> dict:
    """The resolved config without the keys that only say where/how a run is executed."""
    c = OmegaConf.to_container(cfg, resolve=True)
    for key in ("run_dir", "resume", "progress_bar", "logger", "hydra"):
        c.pop(key, None)
    return c


def _print_report(results: dict, table: str) -> None:
    f, b = results["final"], results["behaviour"]
    t = results["timings"]
    stages = ", ".join(
        f"{k} {v['seconds']:.0f} s" + (" (restored)" if v["skipped"] else "")
        for k, v in t["stages"].items()
    )
    print()
    print("=" * 78)
    print(
        f"AEPO on {results['task']} ({results['dataset']['id']}, {results['dataset']['num_transitions']} transitions)"
    )
    print(
        f"  final policy  w={f['guidance']:g}: normalized score {f['normalized_mean']:.1f} ± "
        f"{f['normalized_std']:.1f}  (return {f['return_mean']:.1f} ± {f['return_std']:.1f}, "
        f"{len(f['returns'])} episodes)"
    )
    print(
        f"  behaviour     w=0: normalized score {b['normalized_mean']:.1f} ± {b['normalized_std']:.1f}  "
        f"(return {b['return_mean']:.1f} ± {b['return_std']:.1f})"
    )
    bd = results["best"]["during_training"]
    print(f"  best during training: {bd['normalized_score']:.1f} at step {bd['step']}")
    print("  guidance sweep (same env seeds):")
    print("    " + table.replace("\n", "\n    "))
    print(
        f"  wall time {t['total_seconds']:.0f} s: data {t['data_seconds']:.0f} s, {stages}, "
        f"eval {t['eval_seconds']:.0f} s"
    )
    print(f"  results: {results['run_dir']}/results.json")
    print("=" * 78)


def _versions() -> dict:
    import tensordict
    import torchrl

    import torchrl_aepo

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchrl": torchrl.__version__,
        "tensordict": tensordict.__version__,
        "torchrl_aepo": getattr(torchrl_aepo, "__version__", "?"),
    }


#: Entries of results.json that hold evaluation scores: a non-finite value there is an error.
SCORE_KEYS = (
    "final",
    "behaviour",
    "improvement_over_behaviour",
    "best",
    "guidance_sweep",
    "eval_during_training",
)


def write_results(path: Path, results: dict) -> Path:
    """Write ``results`` to ``path`` as JSON, atomically; scores must be finite.

    A NaN/inf anywhere under :data:`SCORE_KEYS` raises :class:`RecipeError` naming the
    entries, and nothing is written (so the run also stays "unfinished" for ``resume=true``).
    Any other non-finite float is written as the string ``"nan"``, ``"inf"`` or ``"-inf"``
    (JSON has no such numbers), never as ``null``.
    """
    from torchrl_aepo.atomic import write_json_atomic

    bad = [
        f"{name}={value}"
        for key in SCORE_KEYS
        if key in results
        for name, value in _non_finite(results[key], key)
    ]
    if bad:
        raise RecipeError(
            f"the evaluation gave non-finite scores ({', '.join(bad[:6])}"
            f"{', ...' if len(bad) > 6 else ''}); {path} was not written. The policy or the "
            f"env produced NaN/inf returns (or no episode was run): check eval.episodes and "
            f"the dataset, and evaluate the saved {path.parent / 'actor.pt'} again."
        )
    return write_json_atomic(path, _jsonable(results))


def _non_finite(obj: Any, prefix: str) -> list[tuple[str, float]]:
    """``(dotted path, value)`` of every NaN/inf float inside ``obj``."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _non_finite(v, f"{prefix}.{k}")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in _non_finite(v, f"{prefix}[{i}]")]
    if isinstance(obj, (float, np.floating)) and not np.isfinite(obj):
        return [(prefix, float(obj))]
    return []


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not np.isfinite(obj):
        return "nan" if np.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; re-run with the same run_dir to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # fail fast instead of retrying without network
    main()
