"""Plumbing of ``recipes/aepo_offline.py``: runtime, run dir, task, data, env, logger, report.

Each factory takes the config group it needs (``cfg.data``, ``cfg.eval``, ...), in the style of
TorchRL's ``sota-implementations/*/utils.py``. The algorithm itself is built by
:mod:`torchrl_aepo.aepo`; nothing here knows how AEPO trains.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from torchrl_aepo.aepo import AEPOConfig, ModelConfig, TrainConfig, config_problems


class RecipeError(RuntimeError):
    """A user-facing configuration / data error; the CLI prints its message without a traceback."""


# ------------------------------------------------------------------------------ configuration
def algorithm_config(cfg: DictConfig) -> tuple[ModelConfig, AEPOConfig, TrainConfig]:
    """The typed ``model`` / ``aepo`` / ``train`` groups, after checking every value.

    Raises:
        RecipeError: listing every invalid key of the three groups and of ``eval``.
    """
    try:
        groups = (
            ModelConfig.from_dict(cfg.model),
            AEPOConfig.from_dict(cfg.aepo),
            TrainConfig.from_dict(cfg.train),
        )
    except (KeyError, TypeError) as err:
        raise RecipeError(str(err).strip("\"'")) from None
    problems = config_problems(*groups) + eval_problems(cfg.eval) + deploy_problems(cfg.deploy)
    problems += num_seeds_problems(cfg, groups[2].num_seeds)
    problems += overlap_run_problems(cfg, groups[2].overlap_stages)
    problems += torchrun_batch_problems(cfg)
    if problems:
        raise RecipeError(
            f"{len(problems)} invalid setting(s), nothing was run:\n  " + "\n  ".join(problems)
        )
    return groups


def num_seeds_problems(cfg: DictConfig, num_seeds: Any) -> list[str]:
    """The run options ``train.num_seeds > 1`` does not support (beyond the ``model`` /
    ``aepo`` / ``train`` ones of :func:`~torchrl_aepo.aepo.config_problems`)."""
    if not isinstance(num_seeds, int) or num_seeds <= 1:
        return []
    out = []
    suffix = f"with train.num_seeds={num_seeds}: not supported by the stacked seeds"
    if bool(cfg.compile.enabled):
        out.append(f"compile.enabled=true {suffix}; use compile.enabled=false")
    if cfg.get("init_from") is not None:
        out.append(f"init_from={cfg.init_from!r} {suffix}; use init_from=null")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        out.append(f"torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}) {suffix}; run one process")
    return out


def overlap_run_problems(cfg: DictConfig, overlap_stages: Any) -> list[str]:
    """The run options ``train.overlap_stages=true`` does not support (beyond the ``aepo`` /
    ``train`` ones of :func:`~torchrl_aepo.aepo.overlap_problems`). With ``eval_only`` it is
    ignored: nothing is trained."""
    if overlap_stages is not True or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return []
    return [
        f"torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}) with train.overlap_stages=true: "
        "the ranks train every stage together; run one process, or use "
        "train.overlap_stages=false"
    ]


def torchrun_batch_problems(cfg: DictConfig) -> list[str]:
    """Under ``torchrun`` every rank trains on an equal slice of each stage's global batch, so
    the batch sizes must be multiples of ``WORLD_SIZE``. With ``eval_only`` nothing is trained."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or cfg.get("eval_only"):
        return []
    out = []
    for stage in ("diffusion", "critic", "energy"):
        size = cfg.train[stage].get("batch_size")
        if isinstance(size, int) and size > 0 and size % world:
            out.append(
                f"train.{stage}.batch_size={size} with torchrun (WORLD_SIZE={world}): not "
                f"divisible by the {world} ranks; use a multiple of {world}"
            )
    return out


def eval_problems(eval_cfg: DictConfig) -> list[str]:
    """Invalid values of the ``eval`` group."""
    out = []
    for key in ("episodes", "num_envs"):
        value = eval_cfg.get(key)
        if not isinstance(value, int) or value < 1:
            out.append(f"eval.{key}={value!r}: must be a positive integer")
    max_steps = eval_cfg.get("max_steps")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        out.append(f"eval.max_steps={max_steps!r}: must be a positive integer or null")
    if eval_cfg.get("exploration") not in ("random", "deterministic"):
        out.append(f"eval.exploration={eval_cfg.get('exploration')!r}: use random or deterministic")
    if eval_cfg.get("backend", "sync") not in ("sync", "async"):
        out.append(f"eval.backend={eval_cfg.get('backend')!r}: use sync or async")
    if eval_cfg.get("async_context", "fork") not in ("fork", "spawn", "forkserver", None):
        out.append(
            f"eval.async_context={eval_cfg.get('async_context')!r}: use fork, spawn, "
            "forkserver or null"
        )
    sweep = eval_cfg.get("guidance_sweep") or []
    if any(not isinstance(w, (int, float)) or w < 0 for w in sweep):
        out.append(f"eval.guidance_sweep={list(sweep)}: guidance degrees must be >= 0")
    return out


def deploy_problems(deploy_cfg: DictConfig) -> list[str]:
    """Invalid values of the ``deploy`` group."""
    out = []
    k = deploy_cfg.get("num_candidates")
    if k is not None and (not isinstance(k, int) or k < 1):
        out.append(f"deploy.num_candidates={k!r}: must be a positive integer or null")
    if deploy_cfg.get("selection") not in ("argmax_q", "softmax_q", "mean", "first"):
        out.append(
            f"deploy.selection={deploy_cfg.get('selection')!r}: use argmax_q, softmax_q, mean "
            "or first"
        )
    degree = deploy_cfg.get("guidance")
    if degree is not None and (
        isinstance(degree, bool) or not isinstance(degree, (int, float)) or not degree >= 0
    ):
        out.append(f"deploy.guidance={degree!r}: must be a number >= 0 or null")
    scale = deploy_cfg.get("latent_scale")
    if scale is not None and (
        isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 0
    ):
        out.append(f"deploy.latent_scale={scale!r}: must be a number >= 0 or null")
    if k == 1 and deploy_cfg.get("selection") != "first":
        out.append(
            f"deploy.num_candidates=1 with deploy.selection={deploy_cfg.get('selection')!r}: one "
            "candidate leaves nothing to select; use deploy.selection=first"
        )
    sweep = deploy_cfg.get("guidance_sweep") or []
    if any(not isinstance(w, (int, float)) or w < 0 for w in sweep):
        out.append(f"deploy.guidance_sweep={list(sweep)}: guidance degrees must be >= 0")
    return out


def compile_options(compile_cfg: DictConfig) -> dict[str, Any] | None:
    """``torch.compile`` keyword arguments from ``cfg.compile``, or ``None`` when it is off."""
    if not bool(compile_cfg.enabled):
        return None
    return {} if compile_cfg.mode is None else {"mode": str(compile_cfg.mode)}


def setup_runtime(
    seed: int, threads: int | None, device: str, distributed: bool = False
) -> torch.device:
    """Seed torch / numpy / random, set the thread count, resolve the device.

    ``distributed`` (torchrun): every rank is seeded alike (same initial weights, same global
    batches); a CUDA device becomes ``cuda:$LOCAL_RANK``.
    """
    if threads is not None:
        torch.set_num_threads(int(threads))
    torch.manual_seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    random.seed(int(seed))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise RecipeError(f"device must be cpu, cuda, cuda:N or auto; got {device!r}.")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise RecipeError("device=cuda was requested but CUDA is not available; use device=cpu.")
    if distributed and torch.device(device).type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)


#: ``aepo`` keys that only the sampler/evaluation reads: never hashed into the checkpoints, so
#: ``eval_only`` may change them.
SAMPLING_KEYS = ("guidance", "guidance_rule", "guidance_ladder", "guidance_pessimism",
                 "guidance_states", "rescale", "latent_scale", "num_candidates", "selection",
                 "solver", "clip_denoised")  # fmt: skip
#: ``aepo`` keys of the paper's ablations: hashed only when the critic or energy is not AEPO's.
ABLATION_KEYS = ("critic", "energy", "energy_max_target", "num_support", "isql_beta",
                 "cql_alpha", "cql_num_random", "cql_temperature")  # fmt: skip
#: ``aepo`` training keys added after runs existed, with the value those runs were trained
#: with: hashed only off it, so that those runs keep resuming (``init_from`` reusing them)
#: when that value is given (e.g. ``aepo.variance_weight=1``).
LATER_TRAINING_DEFAULTS = {"variance_weight": 1.0, "energy_max_target": None,
                           "behaviour_weighting": "none", "behaviour_weight_clip": 100.0,
                           "behaviour_weight_sampling": "loss"}  # fmt: skip
#: ``train`` keys added after runs existed, hashed only off these defaults (as above).
#: ``overlap_stages`` is an execution setting but, unlike the ``untrained`` keys of
#: :func:`training_config` (intervals, ``eval_mode``, ``stop_after_stage``), it changes the
#: trained weights: the overlapped critic draws from its own seeded stream, not from the random
#: state the diffusion stage left. So it is hashed (when true): a run resumes only with the
#: setting it started with (each stage then continues its own stream from its checkpoint).
#: It is in no stage's own keys (``TrainingPlan.STAGE_KEYS``), so ``init_from`` reuses a
#: finished behaviour model or critic across overlap on/off, as it already ignores which random
#: stream a finished stage came from.
LATER_TRAIN_DEFAULTS = {"num_seeds": 1, "overlap_stages": False}
#: ``train.<stage>`` keys added after runs existed, hashed only off these defaults: a stage's own
#: ``lr_schedule`` (``null``: ``train.lr_schedule``) changes only that stage's checkpoint key, so
#: a run with ``train.diffusion.lr_schedule=cosine`` reuses a finished critic (``init_from``).
LATER_STAGE_DEFAULTS = {stage: {"lr_schedule": None} for stage in ("diffusion", "critic", "energy")}


def training_config(cfg: DictConfig) -> dict:
    """The part of the config that determines training (hashed into the checkpoints): every
    ``aepo`` key except :data:`SAMPLING_KEYS`, ``train`` without its logging/eval cadence."""
    c = OmegaConf.to_container(cfg, resolve=True)
    untrained = ("log_interval", "checkpoint_interval", "eval_interval", "eval_episodes",
                 "eval_mode", "stop_after_stage")  # fmt: skip
    train = {k: v for k, v in c["train"].items() if k not in untrained}
    aepo = {k: v for k, v in c["aepo"].items() if k not in SAMPLING_KEYS}
    for key, default in LATER_TRAINING_DEFAULTS.items():
        if aepo.get(key) == default:
            del aepo[key]
    for key, default in LATER_TRAIN_DEFAULTS.items():
        if key in train and train[key] == default:
            del train[key]
    for stage, defaults in LATER_STAGE_DEFAULTS.items():
        if isinstance(train.get(stage), dict):
            train[stage] = {
                k: v for k, v in train[stage].items() if k not in defaults or v != defaults[k]
            }
    if aepo.get("critic", "expectile") == "expectile" and aepo.get("energy", "analytic") == (
        "analytic"
    ):
        for key in ABLATION_KEYS:
            aepo.pop(key, None)
        train.pop("supports", None)
    return {
        "task": c["task"],
        "data": c["data"],
        "model": c["model"],
        "aepo": aepo,
        "train": train,
        "seed": c["seed"],
    }


def experiment_config(cfg: DictConfig) -> dict:
    """The resolved config without the keys that only say where/how a run is executed."""
    c = OmegaConf.to_container(cfg, resolve=True)
    for key in ("run_dir", "resume", "progress_bar", "logger", "hydra"):
        c.pop(key, None)
    c.get("train", {}).pop("eval_mode", None)  # where evaluations run, not what they give
    if c.get("train", {}).get("overlap_stages") is False:  # older runs keep their hash
        del c["train"]["overlap_stages"]
    return c


def make_trainer(cfg: DictConfig, train_cfg: TrainConfig, plan, replay_buffer, run_dir: Path,
                 **kwargs: Any):  # fmt: skip
    """The :class:`~torchrl_aepo.trainer.OfflineTrainer` of ``plan``'s stages as configured
    (intervals, progress bar, ``stop_after_stage``, ``resume``, the training-config hashes and
    the ``Gamma`` generator); ``kwargs`` (``logger``, ``distributed``, ``only_stages``, ...)
    are passed on and override these."""
    from torchrl_aepo.trainer import OfflineTrainer

    config = training_config(cfg)
    options = {
        "log_interval": train_cfg.log_interval,
        "checkpoint_interval": train_cfg.checkpoint_interval,
        "progress_bar": bool(cfg.progress_bar),
        "config": config,
        "stage_configs": plan.stage_configs(config),
        "stop_after_stage": train_cfg.stop_after_stage,
        "resume": cfg.resume is not False and cfg.resume != "false",
        "generators": {"gamma": plan.gamma_generator},
    }
    return OfflineTrainer(plan.stages, replay_buffer, run_dir=run_dir, **{**options, **kwargs})


# ------------------------------------------------------------------------------------ run dir
def resolve_run_dir(run_dir: str, resume: Any) -> Path:
    """The run directory: hydra's output dir (single or multirun) or ``run_dir``.

    ``resume=true`` with no checkpoints there picks the latest unfinished run of the task;
    ``resume=<path>`` picks that directory.
    """
    path = Path(run_dir)
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            path = Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        pass
    if isinstance(resume, str) and resume not in ("auto", "true", "false"):
        target = Path(resume)
        if not (target / "checkpoints").is_dir():
            raise RecipeError(f"resume={resume!r}: no checkpoints directory in that run dir.")
        return target
    if resume is True and not (path / "checkpoints").is_dir():
        candidates = sorted(
            (
                d
                for d in path.parent.glob("*")
                if (d / "checkpoints").is_dir() and not (d / "results.json").exists() and d != path
            ),
            key=lambda d: d.stat().st_mtime,
        )
        if not candidates:
            raise RecipeError(
                f"resume=true: no unfinished run with checkpoints under {path.parent}. Pass "
                f"resume=<run dir> or run_dir=<run dir>."
            )
        print(f"[aepo] resume=true: continuing the latest unfinished run {candidates[-1]}")
        return candidates[-1]
    return path


# ------------------------------------------------------------------------- task, data and env
def make_task(task_cfg: DictConfig):
    """The task's :class:`TaskSpec`, with ``dataset_id`` / ``eval_env_id`` /
    ``max_episode_steps`` overridden where the config sets them."""
    from torchrl_aepo.data import get_task

    try:
        spec = get_task(task_cfg.name)
    except KeyError as err:  # UnknownTaskError: the message lists the closest task names
        raise RecipeError(str(err)) from None
    overrides = {
        key: task_cfg.get(key)
        for key in ("dataset_id", "eval_env_id", "max_episode_steps")
        if task_cfg.get(key) is not None and task_cfg.get(key) != getattr(spec, key)
    }
    return dataclasses.replace(spec, **overrides) if overrides else spec


def make_data(data_cfg: DictConfig, task, eval_env_id: str | None, device: torch.device, seed: int):
    """TorchRL replay buffer of the dataset (TED keys, actions in ``[-1, 1]`` when
    ``data.normalize_actions``) and its metadata.

    ``eval_env_id`` (``task.eval_env_id``), when set, is the env the policy is evaluated on,
    also for Minari datasets whose metadata names another one.
    """
    from torchrl_aepo.data import DatasetUnavailableError, make_offline_data

    try:
        replay_buffer, metadata = make_offline_data(
            task,
            root=data_cfg.root,
            build_if_missing=bool(data_cfg.build_if_missing),
            normalize_observations=bool(data_cfg.normalize_observations),
            normalize_actions=bool(data_cfg.normalize_actions),
            reward_transform=data_cfg.reward_transform,
            device=device,
            seed=seed,
            drop_nonfinite=bool(data_cfg.drop_nonfinite),
        )
    except (DatasetUnavailableError, ValueError) as err:
        raise RecipeError(str(err)) from err
    if eval_env_id is not None and eval_env_id != metadata.eval_env_id:
        print(
            f"[aepo] evaluating on task.eval_env_id={eval_env_id!r} (the dataset names "
            f"{metadata.eval_env_id!r})"
        )
        metadata = dataclasses.replace(metadata, eval_env_id=eval_env_id)
    return replay_buffer, metadata


def make_env(eval_cfg: DictConfig, metadata, num_envs: int, device: torch.device):
    """Batched eval env (+ the dataset's ``ObservationNorm`` and ``ActionScaling``), checked
    against the dataset: observation size, action size and action box must agree."""
    from torchrl_aepo.data import import_eval_requirements
    from torchrl_aepo.evaluation import make_eval_env

    try:
        import_eval_requirements(metadata)  # registers gymnasium-robotics envs, if needed
    except ImportError as err:
        raise RecipeError(str(err)) from err
    transforms = []
    if metadata.observations_normalized:
        transforms.append(metadata.observation_norm_transform())
    if metadata.actions_normalized:
        transforms.append(metadata.action_scaling_transform())
    try:
        env = make_eval_env(
            metadata.eval_env_id,
            min(int(num_envs), int(eval_cfg.episodes)),
            env_kwargs=dict(metadata.eval_env_kwargs or {}),
            max_episode_steps=metadata.max_episode_steps,
            transforms=transforms,
            device=device,
            backend=str(eval_cfg.get("backend", "sync")),
            async_context=eval_cfg.get("async_context", "fork"),
        )
    except RuntimeError as err:
        raise RecipeError(str(err)) from err
    check_env_matches_data(env, metadata)
    return env


def check_env_matches_data(env, metadata) -> None:
    """Refuse an eval env whose observation size, action size or action box is not the data's."""
    obs = env.observation_spec["observation"].shape[-1]
    base_action = env.base_env.action_spec if hasattr(env, "base_env") else env.action_spec
    action_dim = base_action.shape[-1]
    problems = []
    if obs != metadata.obs_dim:
        problems.append(f"observation size {obs} (dataset: {metadata.obs_dim})")
    if action_dim != metadata.action_dim:
        problems.append(f"action size {action_dim} (dataset: {metadata.action_dim})")
    else:
        low = base_action.space.low.reshape(-1)[-action_dim:].cpu().tolist()
        high = base_action.space.high.reshape(-1)[-action_dim:].cpu().tolist()
        if not (np.allclose(low, metadata.action_low) and np.allclose(high, metadata.action_high)):
            problems.append(
                f"action box [{low}, {high}] (dataset: [{metadata.action_low}, "
                f"{metadata.action_high}])"
            )
    if problems:
        raise RecipeError(
            f"The eval env {metadata.eval_env_id!r} does not match the dataset "
            f"{metadata.dataset_id!r}: {'; '.join(problems)}. Set task.eval_env_id to the env the "
            "data was collected on."
        )


def stopped_early(summary: dict, run_dir: Path, logger, env) -> dict:
    """Close the logger and env of a run that ``train.stop_after_stage`` stopped, say how to
    resume it, and return its (short) result."""
    close_logger(logger)
    env.close()
    print(
        f"[aepo] stopped after stage '{summary['stopped_after']}' (train.stop_after_stage); "
        f"re-run with run_dir={run_dir} to resume."
    )
    return {"stopped_after": summary["stopped_after"], "train": summary, "run_dir": str(run_dir)}


def evaluate_deployed(cfg, nets, losses, aepo_cfg, box, env, metadata, guidance, compile_options):
    """The deployed policy (``deploy.num_candidates`` guided candidates per state, drawn with
    the latent scale ``deploy.latent_scale`` (null: ``aepo.latent_scale``), one picked by the
    target critic with ``deploy.selection``) evaluated at its degree
    (:func:`deployed_guidance`: ``deploy.guidance``, or the reported policy's ``guidance``) and
    at every degree of ``deploy.guidance_sweep``: ``(result at that degree, sweep results)``,
    or ``(None, [])`` when ``deploy.num_candidates`` is null."""
    from torchrl_aepo import aepo
    from torchrl_aepo.evaluation import guidance_sweep

    if cfg.deploy.num_candidates is None:
        return None, []
    deploy_cfg = dataclasses.replace(
        aepo_cfg,
        num_candidates=int(cfg.deploy.num_candidates),
        selection=str(cfg.deploy.selection),
        latent_scale=deployed_latent_scale(cfg, aepo_cfg),
    )
    actor = aepo.build_actor(
        nets,
        losses,
        deploy_cfg,
        action_low=box[0],
        action_high=box[1],
        deterministic_seed=int(cfg.eval.seed),
        compile=compile_options,
    )
    kwargs = eval_kwargs(cfg.eval, metadata, int(cfg.eval.episodes))
    guidance = deployed_guidance(cfg, guidance)
    degrees = sorted({float(guidance), *[float(w) for w in (cfg.deploy.guidance_sweep or [])]})
    sweep = guidance_sweep(actor, env, degrees, **kwargs)
    return sweep[degrees.index(float(guidance))], sweep


def deployed_guidance(cfg: DictConfig, reported: float) -> float:
    """The deployed policy's guidance degree: ``deploy.guidance``, or the reported (faithful)
    policy's degree ``reported`` when that is null."""
    degree = cfg.deploy.get("guidance")
    return float(reported if degree is None else degree)


def deployed_latent_scale(cfg: DictConfig, aepo_cfg) -> float:
    """The deployed sampler's latent scale: ``deploy.latent_scale``, or ``aepo.latent_scale``
    when that is null."""
    scale = cfg.deploy.get("latent_scale")
    return float(aepo_cfg.latent_scale if scale is None else scale)


def deployed_record(result, cfg: DictConfig, aepo_cfg) -> dict | None:
    """results.json ``deployed``: the evaluation ``result`` (an ``EvalResult``, or ``None``
    when the deployed policy was not evaluated) with the ``deploy`` settings, its latent
    scale and guidance degree the effective ones (:func:`deployed_latent_scale`; the degree the
    result was evaluated at)."""
    if result is None:
        return None
    return {
        **result.to_dict(),
        **dict(cfg.deploy),
        "latent_scale": deployed_latent_scale(cfg, aepo_cfg),
        "guidance": result.guidance,
    }


def eval_kwargs(eval_cfg: DictConfig, metadata, episodes: int) -> dict:
    """Keyword arguments of :func:`~torchrl_aepo.evaluation.guidance_sweep`."""
    from torchrl_aepo.data import normalized_score

    return {
        "episodes": int(episodes),
        "max_steps": int(eval_cfg.max_steps or metadata.max_episode_steps),
        "seed": int(eval_cfg.seed),
        "normalize": lambda returns: np.atleast_1d(normalized_score(metadata, np.asarray(returns))),
        "exploration": str(eval_cfg.exploration),
    }


def register_background_evaluation(trainer, plan, actor, env, guidance: float, kwargs: dict,
                                   interval: int):  # fmt: skip
    """``train.eval_mode=background``: trainer ops that evaluate snapshots of ``actor`` at the
    steps of the synchronous mode, in TorchRL's ``Evaluator`` thread
    (:class:`~torchrl_aepo.background_eval.BackgroundEvaluation`), and record each result in
    the trainer's history at the step it was taken.

    * every ``interval`` steps of the last stage (as ``plan.evaluation_op``): snapshot and
      submit; if the previous evaluation is still running, first wait for it (one in flight);
    * every step: record the finished ones without waiting; at each checkpoint step and at
      the last step wait for them first, so that a checkpoint holds every evaluation
      submitted before it (and a resumed run's history matches the synchronous one);
    * resuming at a step that was due an evaluation (submitted after its checkpoint was
      written): evaluate it again, on the restored weights of that step.

    Returns the :class:`BackgroundEvaluation` (it records what it returns): ``drain()`` and
    ``close()`` it after training.
    """
    from torchrl_aepo.background_eval import BackgroundEvaluation

    last = plan.stages[-1]

    def record(step: int, result) -> None:  # logged late: their own channel of logged steps
        for key, value in (("eval_normalized_score", result.normalized_mean),
                           ("eval_return", result.return_mean)):  # fmt: skip
            trainer.log_scalar(f"{last.name}/{key}", value, step, channel=f"{last.name}/eval")

    background = BackgroundEvaluation(actor, env, guidance=guidance, on_result=record, **kwargs)

    def every_step(_stage: str, step: int) -> None:
        if not background.pending:
            return
        if step % trainer.checkpoint_interval == 0 or step >= last.total_steps:
            background.drain()
        else:
            background.poll()

    def evaluate(_stage: str, step: int) -> None:
        background.submit(actor, step)

    def resubmit(stage: str) -> None:
        step = trainer.records[stage].steps
        done = {s for s, _ in trainer.history.get(f"{stage}/eval_normalized_score", [])}
        if stage == last.name and 0 < step < last.total_steps and step % interval == 0:
            if step not in done:
                plan.sync_behaviour()
                evaluate(stage, step)

    trainer.register_op("pre_stage", resubmit)
    trainer.register_op("post_optim", plan.evaluation_op(evaluate, interval, every_step))
    return background


# ------------------------------------------------------------------------------------- logger
def make_logger(logger_cfg: DictConfig, run_dir: Path, config: dict | None = None):
    """A TorchRL logger (csv | tensorboard | wandb) writing under ``run_dir/logs``, or None."""
    from torchrl.record.loggers import get_logger

    backend = logger_cfg.backend
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
        mode = logger_cfg.get("mode", "offline")
        wandb_kwargs = {"project": logger_cfg.project, "mode": mode, "offline": mode == "offline",
                        "config": config}  # fmt: skip
        if logger_cfg.get("entity"):
            wandb_kwargs["entity"] = logger_cfg.entity
        return get_logger("wandb", log_dir, logger_cfg.exp_name, wandb_kwargs=wandb_kwargs)
    if backend not in ("csv", "tensorboard"):
        raise RecipeError(
            f"logger.backend must be csv, tensorboard, wandb or none; got {backend!r}."
        )
    return get_logger(backend, log_dir, logger_cfg.exp_name)


def close_logger(logger) -> None:
    """Finish a wandb run (other TorchRL loggers need no closing)."""
    experiment = getattr(logger, "experiment", None)
    if experiment is not None and hasattr(experiment, "finish"):
        experiment.finish()


# ------------------------------------------------------------------------------------- report
def stage_timings(stages: dict) -> dict:
    """``{stage: {seconds, updates_per_s, steps, skipped}}`` from the trainer summary."""
    keys = ("seconds", "updates_per_s", "steps", "skipped")
    return {name: {k: record[k] for k in keys} for name, record in stages.items()}


def timeit_summary() -> dict:
    """TorchRL ``timeit`` registry as ``{name: {mean_s, total_s, count}}``."""
    from torchrl._utils import timeit

    return {k: {"mean_s": v[0], "total_s": v[1], "count": v[2]} for k, v in timeit._REG.items()}


def results_dict(
    cfg: DictConfig,
    task,
    metadata,
    num_transitions: int,
    summary: dict,
    sweep: list,
    chosen: float,
    during: list,
    device: torch.device,
    run_dir: Path,
) -> dict:
    """The content of results.json: final (chosen ``w``) and behaviour (``w = 0``) scores,
    the sweep, the best scores (marked optimistic), seeds, timings, config and versions."""
    from torchrl_aepo.trainer import config_hash

    by_w = {r.guidance: r for r in sweep}
    final, behaviour = by_w[chosen], by_w[0.0]
    best_sweep = max(sweep, key=lambda r: r.normalized_mean)
    last_step = list(summary["stages"].values())[-1]["steps"]  # the last stage's
    during_points = [*during, [last_step, final.normalized_mean]]
    best_during = max(during_points, key=lambda p: p[1])
    from torchrl_aepo.report import method_name

    config = OmegaConf.to_container(cfg, resolve=True)
    return {
        "task": task.name,
        "method": config.get("method") or method_name(config),
        "dataset": {
            "id": task.dataset_id,
            "backend": task.backend,
            "num_transitions": num_transitions,
            "metadata": jsonable(metadata.to_dict()),
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
        "plan": str(cfg.train.plan),
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
        "eval_over_training": during_points,
        "timings": {
            "data_seconds": None,
            "stages": stage_timings(summary["stages"]),
            "eval_seconds": None,
            "total_seconds": None,
            "timeit": timeit_summary(),
        },
        "train": summary,
        "config": config,
        "versions": versions(),
        "run_dir": str(run_dir),
    }


def evaluation_name(cfg: DictConfig) -> str:
    """``".eval-<hash>"``: the file suffix of an ``eval_only`` evaluation, from the sampling
    and evaluation settings (the ``aepo`` keys training does not read, ``eval`` and
    ``deploy``)."""
    from torchrl_aepo.trainer import config_hash

    c = OmegaConf.to_container(cfg, resolve=True)
    sampling = {k: v for k, v in c["aepo"].items() if k in SAMPLING_KEYS}
    settings = {"aepo": sampling, "eval": c["eval"], "deploy": c["deploy"]}
    return f".eval-{config_hash(settings)}"


def write_plots(
    run_dir: Path, history: dict, results: dict, title: str, suffix: str = ""
) -> list[str]:
    """Training losses, evaluation over training and the guidance sweep as PNGs under
    ``run_dir/plots<suffix>``; returns their paths relative to ``run_dir``."""
    from torchrl_aepo.plots import (
        plot_eval_over_training,
        plot_guidance_sweep,
        plot_training_losses,
    )

    plots_dir = run_dir / f"plots{suffix}"
    final, behaviour = results["final"], results["behaviour"]
    plots = [
        plot_training_losses(history, plots_dir / "training_losses.png", title=title),
        plot_eval_over_training(
            results["eval_over_training"],
            plots_dir / "eval_over_training.png",
            final=final["normalized_mean"],
            behaviour=behaviour["normalized_mean"],
            title=title,
        ),
        plot_guidance_sweep(
            results["guidance_sweep"],
            plots_dir / "guidance_sweep.png",
            chosen=final["guidance"],
            title=title,
        ),
    ]
    return [str(p.relative_to(run_dir)) for p in plots if p is not None]


#: Entries of results.json that hold evaluation scores: a non-finite value there is an error.
SCORE_KEYS = (
    "final",
    "deployed",
    "deployed_sweep",
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
    return write_json_atomic(path, jsonable(results))


def _non_finite(obj: Any, prefix: str) -> list[tuple[str, float]]:
    """``(dotted path, value)`` of every NaN/inf float inside ``obj``."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _non_finite(v, f"{prefix}.{k}")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in _non_finite(v, f"{prefix}[{i}]")]
    if isinstance(obj, (float, np.floating)) and not np.isfinite(obj):
        return [(prefix, float(obj))]
    return []


def print_report(results: dict, table: str, path: Path | None = None) -> None:
    """The end-of-run summary on stdout; ``path``: the results file written (default
    ``<run_dir>/results.json``)."""
    f, b = results["final"], results["behaviour"]
    t = results["timings"]
    stages = ", ".join(
        f"{k} {v['seconds']:.0f} s" + (" (restored)" if v["skipped"] else "")
        for k, v in t["stages"].items()
    )
    data = results["dataset"]
    bd = results["best"]["during_training"]
    print("\n" + "=" * 78)
    print(f"AEPO on {results['task']} ({data['id']}, {data['num_transitions']} transitions)")
    print(
        f"  final policy  w={f['guidance']:g}: normalized score {f['normalized_mean']:.1f} ± "
        f"{f['normalized_std']:.1f}  (return {f['return_mean']:.1f} ± {f['return_std']:.1f}, "
        f"{len(f['returns'])} {'seeds' if results.get('num_seeds') else 'episodes'})"
    )
    print(
        f"  behaviour     w=0: normalized score {b['normalized_mean']:.1f} ± "
        f"{b['normalized_std']:.1f}  (return {b['return_mean']:.1f} ± {b['return_std']:.1f})"
    )
    if results.get("deployed"):
        d = results["deployed"]
        print(
            f"  deployed      w={d['guidance']:g}, K={d['num_candidates']} ({d['selection']}), "
            f"latent scale {d.get('latent_scale', 1.0):g}: "
            f"normalized score {d['normalized_mean']:.1f} ± {d['normalized_std']:.1f}"
        )
        others = [r for r in results.get("deployed_sweep", []) if r["guidance"] != d["guidance"]]
        if others:
            cells = ", ".join(f"w={r['guidance']:g}: {r['normalized_mean']:.1f}" for r in others)
            print(f"                deployed at other degrees: {cells}")
    print(f"  best during training: {bd['normalized_score']:.1f} at step {bd['step']}")
    print("  guidance sweep (same env seeds):")
    print("    " + table.replace("\n", "\n    "))
    print(
        f"  wall time {t['total_seconds']:.0f} s: data {t['data_seconds']:.0f} s, {stages}, "
        f"eval {t['eval_seconds']:.0f} s"
    )
    print(f"  results: {path or Path(results['run_dir']) / 'results.json'}")
    print("=" * 78)


def versions() -> dict:
    """Versions of Python and the stack, and the CPU, for results.json.

    The CPU's model and torch's kernel level (``cpu_capability``: e.g. AVX2, AVX512) are
    recorded because floating-point results can differ between kernels, so a run repeated on
    another kind of CPU may not give the same weights or scores."""
    import tensordict
    import torchrl

    import torchrl_aepo

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchrl": torchrl.__version__,
        "tensordict": tensordict.__version__,
        "torchrl_aepo": getattr(torchrl_aepo, "__version__", "?"),
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def jsonable(obj: Any) -> Any:
    """``obj`` with tensors, arrays and numpy scalars as plain JSON values; NaN/inf floats as
    the strings ``"nan"`` / ``"inf"`` / ``"-inf"`` (never ``null``)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return jsonable(obj.item())
    if isinstance(obj, float) and not np.isfinite(obj):
        return "nan" if np.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def set_offline_defaults() -> None:
    """Fail fast instead of retrying without network (HF hub)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def sweep_objective(results: dict) -> float | None:
    """What a hyperparameter sweeper maximises: ``results["final"]["normalized_mean"]``, the
    final policy's normalized score averaged over the final *evaluation* episodes (so a search
    on it selects on the evaluation episodes; report the selected setting with new seeds).
    ``None`` when the run stopped before evaluating (``train.stop_after_stage``)."""
    final = results.get("final")
    return None if final is None else float(final["normalized_mean"])
