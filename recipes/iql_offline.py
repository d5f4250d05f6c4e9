"""TorchRL's IQL on the same data, eval env and protocol as the AEPO recipe (a baseline).

    python recipes/iql_offline.py task=halfcheetah-medium-replay-local
    python recipes/iql_offline.py task=hopper-medium-local iql.actor=tanh_mean_normal

Configuration: ``configs/iql.yaml`` (+ the ``task`` and ``logger`` groups of the AEPO recipe).
The loss and actor come from :func:`torchrl_aepo.baselines.build_iql`; training runs in the
same :class:`~torchrl_aepo.trainer.OfflineTrainer` (checkpoints, resume, NaN guard) and the
score is written to ``results.json`` in the AEPO recipe's format (``final``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))  # recipes/utils.py
import utils  # noqa: E402
from utils import RecipeError  # noqa: E402


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate IQL as configured; returns the content of results.json."""
    from torchrl.objectives import SoftUpdate

    from torchrl_aepo.baselines import build_iql
    from torchrl_aepo.evaluation import evaluate_policy
    from torchrl_aepo.trainer import (
        CheckpointError,
        NonFiniteError,
        OfflineTrainer,
        Stage,
        adam_step,
    )

    wall_start = time.perf_counter()
    problems = utils.eval_problems(cfg.eval) + [
        f"iql.{key}={cfg.iql[key]!r}: must be a positive integer"
        for key in ("steps", "batch_size")
        if not isinstance(cfg.iql[key], int) or cfg.iql[key] < 1
    ]
    if problems:
        raise RecipeError(f"{len(problems)} invalid setting(s):\n  " + "\n  ".join(problems))
    run_dir = utils.resolve_run_dir(cfg.run_dir, cfg.resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = utils.setup_runtime(cfg.seed, cfg.threads, cfg.device)
    task = utils.make_task(cfg.task)
    replay_buffer, metadata = utils.make_data(
        cfg.data, task, cfg.task.get("eval_env_id"), device, int(cfg.seed)
    )
    env = utils.make_env(cfg.eval, metadata, int(cfg.eval.num_envs), device)
    print(f"[iql] task {task.name}: {len(replay_buffer)} transitions | run dir {run_dir}")

    q = cfg.iql
    loss, actor = build_iql(
        metadata.obs_dim, metadata.action_dim, actor=str(q.actor), num_cells=tuple(q.num_cells),
        expectile=float(q.expectile), temperature=float(q.temperature), discount=float(q.discount),
    )  # fmt: skip
    loss, actor = loss.to(device), actor.to(device)
    target = SoftUpdate(loss, tau=float(q.target_tau))
    step = adam_step(loss, q.lr, q.steps, adam=str(cfg.train.adam), name="loss_iql")

    def update(batch, _i):
        out = loss(batch)
        step(out["loss_actor"] + out["loss_qvalue"] + out["loss_value"])
        target.step()
        return {k: v.detach() for k, v in out.items() if k.startswith("loss")}

    trainer = OfflineTrainer(
        [Stage("iql", int(q.steps), update, lambda: {"loss": loss, "optim": step},
               batch_size=int(q.batch_size))],
        replay_buffer,
        run_dir=run_dir,
        logger=utils.make_logger(cfg.logger, run_dir, OmegaConf.to_container(cfg, resolve=True)),
        log_interval=int(cfg.train.log_interval),
        checkpoint_interval=int(cfg.train.checkpoint_interval),
        progress_bar=bool(cfg.progress_bar),
        config={k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("task", "data", "iql")}
        | {"seed": int(cfg.seed)},
        resume=cfg.resume is not False and cfg.resume != "false",
    )  # fmt: skip
    try:
        summary = trainer.train()
    except (CheckpointError, NonFiniteError) as err:
        raise RecipeError(str(err)) from err
    t0 = time.perf_counter()
    final = evaluate_policy(
        actor, env, **utils.eval_kwargs(cfg.eval, metadata, int(cfg.eval.episodes))
    )
    results = {
        "method": f"iql-{q.actor}",
        "task": task.name,
        "dataset": {"id": task.dataset_id, "num_transitions": len(replay_buffer),
                    "metadata": utils.jsonable(metadata.to_dict())},
        "seeds": {"train": int(cfg.seed), "eval": int(cfg.eval.seed), "eval_env_seeds": final.seeds},
        "final": final.to_dict(),
        "timings": {"stages": utils.stage_timings(summary["stages"]),
                    "eval_seconds": round(time.perf_counter() - t0, 3),
                    "total_seconds": round(time.perf_counter() - wall_start, 3)},
        "train": summary,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": utils.versions(),
        "run_dir": str(run_dir),
    }  # fmt: skip
    utils.write_results(run_dir / "results.json", results)
    print(f"[iql] {task.name}: normalized score {final.normalized_mean:.1f} ± "
          f"{final.normalized_std:.1f} ({len(final.returns)} episodes); {run_dir}/results.json")  # fmt: skip
    return results


@hydra.main(version_base="1.3", config_path="../configs", config_name="iql")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    utils.set_offline_defaults()
    main()
