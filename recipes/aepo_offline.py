"""AEPO offline RL, end to end: data -> networks -> losses -> training -> evaluation -> report.

    python recipes/aepo_offline.py                      # CPU default: local Pendulum dataset
    python recipes/aepo_offline.py task=hopper-medium-v2 preset=paper device=cuda
    python recipes/aepo_offline.py aepo.beta=5 aepo.guidance=3 eval.episodes=20 logger=wandb

Configuration: ``configs/config.yaml`` (+ ``preset/``, ``task/``, ``logger/`` groups). The
algorithm is built by :mod:`torchrl_aepo.aepo`, trained by the generic
:class:`~torchrl_aepo.trainer.OfflineTrainer`; run dir, data, env, logger and the report come
from ``recipes/utils.py``. :func:`run` is what the hydra entry point (and the tests, through
hydra's compose API) call.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

sys.path.insert(
    0, str(Path(__file__).resolve().parent)
)  # recipes/utils.py, as in TorchRL's recipes
import utils  # noqa: E402
from utils import RecipeError  # noqa: E402, F401  (re-exported for callers of run())


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, evaluate and report AEPO as configured; returns the content of results.json."""
    from torchrl._utils import timeit

    from torchrl_aepo import aepo
    from torchrl_aepo import distributed as dist
    from torchrl_aepo.evaluation import guidance_sweep, sweep_table
    from torchrl_aepo.trainer import CheckpointError, NonFiniteError

    wall_start = time.perf_counter()
    timeit.erase()

    # 1. compose: config check, run dir, runtime, task (under torchrun: one process group,
    # rank 0's run dir; rank 0 alone evaluates and writes logs, checkpoints and results)
    model_cfg, aepo_cfg, train_cfg = utils.algorithm_config(cfg)
    compile_options = utils.compile_options(cfg.compile)
    distributed = dist.init_from_env(str(cfg.device))
    main = dist.is_main_process()
    run_dir = dist.broadcast_object(utils.resolve_run_dir(cfg.run_dir, cfg.resume))
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    device = utils.setup_runtime(cfg.seed, cfg.threads, cfg.device, distributed=distributed)
    task = utils.make_task(cfg.task)
    print(
        f"[aepo] task {task.name} ({task.backend}: {task.dataset_id}) | device {device} | "
        f"threads {torch.get_num_threads()} | run dir {run_dir}"
    )

    # 2. data, and the eval env checked against it before any training
    t0 = time.perf_counter()
    with dist.main_process_first():  # rank 0 builds a missing dataset, the others read it
        replay_buffer, metadata = utils.make_data(
            cfg.data, task, cfg.task.get("eval_env_id"), device, int(cfg.seed)
        )
    data_seconds = time.perf_counter() - t0
    dataset = replay_buffer[:]
    print(
        f"[aepo] dataset {task.dataset_id}: {len(replay_buffer)} transitions, obs "
        f"{metadata.obs_dim}, action {metadata.action_dim} ({data_seconds:.1f} s)"
    )
    env = utils.make_env(cfg.eval, metadata, int(cfg.eval.num_envs), device) if main else None
    if train_cfg.num_seeds > 1:  # several seeds at once, stacked: recipes/multi_seed.py
        import multi_seed

        return multi_seed.run(
            cfg,
            {"model_cfg": model_cfg, "aepo_cfg": aepo_cfg, "train_cfg": train_cfg,
             "run_dir": run_dir, "device": device, "task": task, "metadata": metadata,
             "replay_buffer": replay_buffer, "dataset": dataset, "env": env,
             "data_seconds": data_seconds, "wall_start": wall_start},
        )  # fmt: skip

    # 3. the algorithm: networks, losses, training plan, actor
    nets = aepo.build_networks(model_cfg, metadata.obs_dim, metadata.action_dim, device)
    losses = aepo.build_losses(nets, aepo_cfg, train_cfg, compile=compile_options)
    plan = aepo.build_training_plan(
        nets, losses, dataset, aepo=aepo_cfg, train=train_cfg, seed=int(cfg.seed),
        compile=compile_options,
    )  # fmt: skip
    low, high = metadata.policy_action_box
    actor = aepo.build_actor(
        nets, losses, aepo_cfg, action_low=torch.tensor(low), action_high=torch.tensor(high),
        deterministic_seed=int(cfg.eval.seed), compile=compile_options,
    )  # fmt: skip

    # 4. train (with optional evaluations during the last stage), or restore a finished run
    eval_only = bool(cfg.eval_only)
    logger = (
        utils.make_logger(cfg.logger, run_dir, OmegaConf.to_container(cfg, resolve=True))
        if main and not eval_only
        else None
    )
    trainer = utils.make_trainer(
        cfg, train_cfg, plan, replay_buffer, run_dir, logger=logger, distributed=distributed
    )
    if cfg.init_from is not None and not eval_only:  # reuse the finished stages of another run
        try:
            imported = trainer.import_checkpoints(cfg.init_from)
        except CheckpointError as err:
            raise RecipeError(str(err)) from err
        print(f"[aepo] init_from={cfg.init_from}: reusing the trained stages {imported or 'none'}")
    chosen = aepo_cfg.guidance
    background = None  # train.eval_mode=background: utils.register_background_evaluation
    if train_cfg.eval_interval > 0 and main and not eval_only:
        during_kwargs = utils.eval_kwargs(cfg.eval, metadata, train_cfg.eval_episodes)

        def evaluate(stage: str, step: int) -> None:
            with timeit("eval/during_training"):
                result = guidance_sweep(actor, env, [chosen], **during_kwargs)[0]
            trainer.log_scalar(f"{stage}/eval_normalized_score", result.normalized_mean, step)
            trainer.log_scalar(f"{stage}/eval_return", result.return_mean, step)

        if train_cfg.eval_mode == "background":
            background = utils.register_background_evaluation(
                trainer, plan, actor, env, chosen, during_kwargs, train_cfg.eval_interval
            )
        else:
            trainer.register_op("post_optim", plan.evaluation_op(evaluate, train_cfg.eval_interval))
    overlapped = None  # train.overlap_stages: the critic in a child process, during diffusion
    if train_cfg.overlap_stages and not eval_only:
        import overlapped_stages

        overlapped = overlapped_stages.OverlappedStage(cfg, run_dir, trainer)
    try:
        summary = trainer.restore() if eval_only else trainer.train()
        if background is not None:  # normally nothing left: the last step waited for them
            background.drain()
    except (CheckpointError, NonFiniteError) as err:
        raise RecipeError(str(err)) from err
    finally:
        if background is not None:
            background.close()
        if overlapped is not None:
            overlapped.close()
    if overlapped is not None:
        summary = overlapped.merge_summary(summary)
    if not main:  # the other ranks only train
        return {"rank": dist.rank(), "train": summary, "run_dir": str(run_dir)}
    if summary["stopped_after"] is not None:
        return utils.stopped_early(summary, run_dir, logger, env)
    # 5. the reported guidance degree: fixed, or chosen from dataset states (no eval episode)
    selection = None
    if aepo_cfg.guidance_rule == "critic_lower_bound":
        with timeit("eval/select_guidance"):
            selection = aepo.select_guidance(
                actor, losses.critic.target_qvalue_network(), nets.value, dataset,
                aepo_cfg.guidance_ladder, pessimism=aepo_cfg.guidance_pessimism,
                states=aepo_cfg.guidance_states, seed=int(cfg.seed),
            )  # fmt: skip
        chosen = actor.guidance_scale = selection.guidance
        print(f"[aepo] guidance w = {chosen:g} chosen from {selection.states} dataset states "
              f"(critic lower bound, pessimism {selection.pessimism:g}; no evaluation episode)")  # fmt: skip
    if not eval_only:
        actor.save(run_dir / "actor.pt")  # the reported policy, at its guidance degree

    # 6. evaluate: final policy (chosen w), behaviour policy (w = 0) and the guidance sweep
    sweep_ws = sorted({0.0, chosen, *[float(w) for w in (cfg.eval.guidance_sweep or [])]})
    t0 = time.perf_counter()
    with timeit("eval/final"):
        sweep = guidance_sweep(
            actor, env, sweep_ws, **utils.eval_kwargs(cfg.eval, metadata, int(cfg.eval.episodes))
        )
        deployed, deployed_sweep = utils.evaluate_deployed(
            cfg, nets, losses, aepo_cfg, (low, high), env, metadata, chosen, compile_options
        )
    eval_seconds = time.perf_counter() - t0
    if logger is not None:
        for r in sweep:
            step = int(round(r.guidance * 100))
            logger.log_scalar("eval/normalized_score_vs_guidance", r.normalized_mean, step=step)
    during = trainer.history.get(f"{plan.stages[-1].name}/eval_normalized_score", [])

    # 7. report: results.json, plots, summary
    results = utils.results_dict(
        cfg, task, metadata, len(replay_buffer), summary, sweep, chosen, during, device, run_dir
    )
    results["deployed"] = utils.deployed_record(deployed, cfg, aepo_cfg)
    results["deployed_sweep"] = [r.to_dict() for r in deployed_sweep]
    results["guidance_selection"] = None if selection is None else selection.to_dict()
    results["timings"].update(
        data_seconds=round(data_seconds, 3),
        eval_seconds=round(eval_seconds, 3),
        support_actions=plan.support_stats or None,
    )
    if background is not None:  # train.eval_mode=background (sync: timeit eval/during_training)
        results["timings"]["eval_during_training"] = background.stats()
    if overlapped is not None:
        results["timings"]["overlap"] = overlapped.timings(summary)
    name = utils.evaluation_name(cfg) if eval_only else ""  # "" | ".eval-<hash of the settings>"
    if distributed:
        results["distributed"] = {"world_size": dist.world_size(), "backend": "torchrun"}
    results["plots"] = utils.write_plots(
        run_dir, trainer.history, results, title=f"{task.name} (seed {cfg.seed})", suffix=name
    )
    results["timings"]["total_seconds"] = round(time.perf_counter() - wall_start, 3)
    path = utils.write_results(run_dir / f"results{name}.json", results)
    utils.close_logger(logger)
    env.close()  # the subprocesses of eval.backend=async
    utils.print_report(results, sweep_table(sweep, chosen), path)
    return results


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """The hydra entry point; returns the sweep objective (for ``hydra-optuna-sweeper``): the
    final policy's normalized score, mean over the ``eval.episodes`` evaluation episodes."""
    try:
        return utils.sweep_objective(run(cfg))
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; re-run with the same run_dir to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    utils.set_offline_defaults()
    main()
