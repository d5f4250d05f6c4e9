"""The tiny-budget command-line overrides the recipe tests share (seconds per run)."""

from __future__ import annotations


def tiny_recipe_overrides(
    *,
    steps: int = 20,
    eval_max_steps: int = 20,
    guidance_sweep: str = "[0.0]",
    solver_steps: int = 4,
    eval_interval: int = 0,
    logger: str | None = "none",
) -> list[str]:
    """Overrides that shrink every network, stage and evaluation of ``recipes/aepo_offline.py``.

    ``eval_interval > 0`` also evaluates during training (2 episodes); ``logger=None`` keeps
    the config's logger (csv).
    """
    cells = "[32,32]"
    out = ["threads=1", "device=cpu", "progress_bar=false"]
    out += [] if logger is None else [f"logger={logger}"]
    out += [f"model.{net}_num_cells={cells}" for net in ("noise", "qvalue", "value", "energy")]
    for stage in ("diffusion", "critic", "energy"):
        out += [f"train.{stage}.steps={steps}", f"train.{stage}.batch_size=64"]
    out += [
        "train.gamma_table.num_times=8",
        "train.gamma_table.samples_per_time=32",
        "train.log_interval=10",
        "train.checkpoint_interval=10",
        f"train.eval_interval={eval_interval}",
        *(["train.eval_episodes=2"] if eval_interval else []),
        "eval.episodes=2",
        "eval.num_envs=2",
        f"eval.max_steps={eval_max_steps}",
        f"eval.guidance_sweep={guidance_sweep}",
        f"aepo.solver.steps={solver_steps}",
    ]
    return out
