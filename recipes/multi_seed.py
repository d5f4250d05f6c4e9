"""``train.num_seeds=N`` of ``recipes/aepo_offline.py``: N seeds trained at once, each evaluated.

The seeds ``seed, seed + 1, ..., seed + N - 1`` are trained together by
:class:`~torchrl_aepo.aepo.StackedTrainingPlan` (stacked networks, ``torch.vmap``; member ``k``
with its own initial weights, data order and noise) through the same
:class:`~torchrl_aepo.trainer.OfflineTrainer` as a single run (checkpoints of every member,
resume, ``train.stop_after_stage``, ``eval_only``). Then every member becomes an ordinary
single-seed network set and actor (:func:`~torchrl_aepo.aepo.build_actor`), saved as
``actor_seed<s>.pt`` and evaluated exactly like the single-seed run (the final policy at
``aepo.guidance``, the behaviour policy ``w = 0``, ``eval.guidance_sweep``, the deployed
policy when ``deploy.num_candidates`` is set), on the same env seeds.

results.json has the keys of a single run; ``final`` / ``behaviour`` / ``guidance_sweep`` /
``deployed`` hold the mean over seeds (``normalized_mean``: the mean of the per-seed means,
``normalized_std``: their std across seeds, ddof 0; ``returns`` / ``normalized_scores``: the
per-seed means), and ``seeds`` is the list of per-seed results ``{"seed", "final",
"behaviour", "deployed", "guidance_sweep"}``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import utils
from omegaconf import DictConfig, OmegaConf


def mean_over_seeds(results: list) -> Any:
    """One :class:`~torchrl_aepo.evaluation.EvalResult` of per-seed results (one guidance
    degree): its "episodes" are the seeds, each with its mean return and normalized score."""
    from torchrl_aepo.evaluation import EvalResult

    return EvalResult(
        guidance=results[0].guidance,
        returns=[r.return_mean for r in results],
        normalized_scores=[r.normalized_mean for r in results],
        episode_lengths=[int(round(float(np.mean(r.episode_lengths)))) for r in results],
        seeds=results[0].seeds,
        seconds=sum(r.seconds for r in results),
        env_steps=sum(r.env_steps for r in results),
    )


def run(cfg: DictConfig, context: dict[str, Any]) -> dict[str, Any]:
    """Train the ``train.num_seeds`` seeds stacked, evaluate each, write one results.json.

    ``context``: what ``aepo_offline.run`` composed before dispatching here (typed config
    groups, run dir, device, task, data, eval env, timings).
    """
    from torchrl._utils import timeit

    from torchrl_aepo import aepo
    from torchrl_aepo.evaluation import guidance_sweep, sweep_table
    from torchrl_aepo.trainer import CheckpointError, NonFiniteError, OfflineTrainer

    c = context
    aepo_cfg, train_cfg, metadata = c["aepo_cfg"], c["train_cfg"], c["metadata"]
    run_dir: Path = c["run_dir"]
    env, replay_buffer = c["env"], c["replay_buffer"]
    seeds = [int(cfg.seed) + k for k in range(int(train_cfg.num_seeds))]
    print(f"[aepo] train.num_seeds={len(seeds)}: seeds {seeds} trained at once (stacked)")
    try:
        plan = aepo.StackedTrainingPlan(
            c["model_cfg"], aepo_cfg, train_cfg, metadata.obs_dim, metadata.action_dim,
            c["dataset"], seeds, c["device"],
        )  # fmt: skip
    except ValueError as err:
        raise utils.RecipeError(str(err)) from err

    eval_only = bool(cfg.eval_only)
    logger = (
        None
        if eval_only
        else utils.make_logger(cfg.logger, run_dir, OmegaConf.to_container(cfg, resolve=True))
    )
    trainer = OfflineTrainer(
        plan.stages,
        replay_buffer,
        run_dir=run_dir,
        logger=logger,
        log_interval=train_cfg.log_interval,
        checkpoint_interval=train_cfg.checkpoint_interval,
        progress_bar=bool(cfg.progress_bar),
        config=utils.training_config(cfg),
        stop_after_stage=train_cfg.stop_after_stage,
        resume=cfg.resume is not False and cfg.resume != "false",
        generators=plan.generators,
        distributed=False,
    )
    try:
        summary = trainer.restore() if eval_only else trainer.train()
    except (CheckpointError, NonFiniteError) as err:
        raise utils.RecipeError(str(err)) from err
    if summary["stopped_after"] is not None:
        return utils.stopped_early(summary, run_dir, logger, env)

    # every member as a single-seed network set and actor, evaluated like a single run
    chosen = aepo_cfg.guidance
    sweep_ws = sorted({0.0, chosen, *[float(w) for w in (cfg.eval.guidance_sweep or [])]})
    kwargs = utils.eval_kwargs(cfg.eval, metadata, int(cfg.eval.episodes))
    low, high = metadata.policy_action_box
    per_seed, sweeps, deployed_sweeps = [], [], []
    t0 = time.perf_counter()
    for k, seed in enumerate(seeds):
        nets, losses = plan.member(k)
        actor = aepo.build_actor(
            nets, losses, aepo_cfg, action_low=torch.tensor(low), action_high=torch.tensor(high),
            deterministic_seed=int(cfg.eval.seed),
        )  # fmt: skip
        if not eval_only:
            actor.save(run_dir / f"actor_seed{seed}.pt")
        with timeit("eval/final"):
            sweep = guidance_sweep(actor, env, sweep_ws, **kwargs)
            deployed, deployed_sweep = utils.evaluate_deployed(
                cfg, nets, losses, aepo_cfg, (low, high), env, metadata, chosen, None
            )
        by_w = {r.guidance: r for r in sweep}
        per_seed.append(
            {
                "seed": seed,
                "final": by_w[chosen].to_dict(),
                "behaviour": by_w[0.0].to_dict(),
                "deployed": utils.deployed_record(deployed, cfg, aepo_cfg),
                "guidance_sweep": [r.to_dict() for r in sweep],
                "deployed_sweep": [r.to_dict() for r in deployed_sweep],
            }
        )
        sweeps.append(sweep)
        deployed_sweeps.append(deployed_sweep)
        print(
            f"[aepo] seed {seed}: final {by_w[chosen]} | behaviour {by_w[0.0].normalized_mean:.1f}"
        )
    eval_seconds = time.perf_counter() - t0
    sweep = [mean_over_seeds([s[i] for s in sweeps]) for i in range(len(sweep_ws))]
    deployed_sweep = [
        mean_over_seeds([s[i] for s in deployed_sweeps]) for i in range(len(deployed_sweeps[0]))
    ]

    results = utils.results_dict(
        cfg, c["task"], metadata, len(replay_buffer), summary, sweep, chosen, [], c["device"],
        run_dir,
    )  # fmt: skip
    env_seeds = results["seeds"]["eval_env_seeds"]
    results["seeds"] = per_seed
    results["num_seeds"] = len(seeds)
    results["eval_seeds"] = {"eval": int(cfg.eval.seed), "eval_env_seeds": env_seeds}
    results["over_seeds"] = (
        "final / behaviour / guidance_sweep / deployed: mean over the seeds of the per-seed "
        "means (normalized_std, return_std: std across seeds, ddof 0; returns and "
        "normalized_scores: the per-seed means); per-seed results under 'seeds'"
    )
    if per_seed[0]["deployed"] is None:
        results["deployed"] = None
    else:
        degrees = [r.guidance for r in deployed_sweep]
        results["deployed"] = utils.deployed_record(
            deployed_sweep[degrees.index(utils.deployed_guidance(cfg, chosen))], cfg, aepo_cfg
        )
    results["deployed_sweep"] = [r.to_dict() for r in deployed_sweep]
    results["timings"].update(
        data_seconds=round(c["data_seconds"], 3), eval_seconds=round(eval_seconds, 3)
    )
    name = utils.evaluation_name(cfg) if eval_only else ""
    results["plots"] = utils.write_plots(
        run_dir, trainer.history, results,
        title=f"{c['task'].name} (seeds {seeds[0]}-{seeds[-1]})", suffix=name,
    )  # fmt: skip
    results["timings"]["total_seconds"] = round(time.perf_counter() - c["wall_start"], 3)
    utils.write_results(run_dir / f"results{name}.json", results)
    utils.close_logger(logger)
    env.close()
    utils.print_report(results, sweep_table(sweep, chosen))
    return results
