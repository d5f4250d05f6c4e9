"""Share of the last stage's wall time spent on periodic evaluation: ``train.eval_mode=sync``
against ``background``.

    OMP_NUM_THREADS=1 python -m benchmarks.eval_overlap [--steps 2000] [--eval-interval 250]
        [--repeats 2] [--out docs/bench/eval_overlap.json]
    OMP_NUM_THREADS=1 python -m benchmarks.eval_overlap --tiny     # seconds: checks it runs

Runs ``recipes/aepo_offline.py`` in-process on the local Pendulum dataset (built once in a
temporary directory), twice per round, sync then background, with the same settings: short
diffusion and critic stages, then ``--steps`` energy steps with an evaluation of
``--episodes`` episodes (``--max-steps`` steps each, ``eval.num_envs = episodes``) every
``--eval-interval`` steps, ``checkpoint_interval = eval_interval`` (as in ``preset=quick``:
a background evaluation then has one interval to finish). The networks are the config's
defaults (the paper's sizes) unless ``--cells`` shrinks them. Per mode it reports the energy
stage's wall seconds, the seconds the *training thread* spent on evaluations (sync:
``timeit`` ``eval/during_training``; background: snapshot + submit + waiting for results)
and their share of the stage, and the background rollout seconds (in the evaluator's
thread). Both modes must record the same ``eval_during_training`` (checked). The best
(shortest-stage) round per mode is kept.

On a 2-core CPU the background rollout competes with training for the cores (and the GIL for
the env's Python code), so the stage time drops by less than the sync evaluation time.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks.recipe_rounds import (
    TASK,
    best_rounds,
    cells_overrides,
    machine,
    run_quietly,
    write_record,
)


def _overrides(args, data_root, run_dir, mode: str) -> list[str]:
    out = [
        f"task={TASK}", f"data.root={data_root}", f"run_dir={run_dir}", "threads=1",
        "device=cpu", "progress_bar=false", "logger=none",
        "train.diffusion.steps=20", "train.critic.steps=20",
        "train.gamma_table.num_times=8", "train.gamma_table.samples_per_time=64",
        f"train.energy.steps={args.steps}", f"train.energy.batch_size={args.batch_size}",
        f"train.eval_interval={args.eval_interval}", f"train.eval_episodes={args.episodes}",
        f"train.checkpoint_interval={args.eval_interval}", f"train.log_interval={args.eval_interval}",
        f"train.eval_mode={mode}",
        f"eval.num_envs={args.episodes}", "eval.episodes=1", f"eval.max_steps={args.max_steps}",
        "eval.guidance_sweep=[0.0]", f"aepo.solver.steps={args.solver_steps}",
    ]  # fmt: skip
    return out + cells_overrides(args.cells)


def _measure(recipe, cfg, mode: str) -> dict:
    results = run_quietly(recipe, cfg)
    stage = results["train"]["stages"]["energy"]
    timings = results["timings"]
    if mode == "sync":
        entry = timings["timeit"].get("eval/during_training", {"total_s": 0.0, "count": 0})
        main_thread, rollout, waits = entry["total_s"], entry["total_s"], None
    else:
        stats = timings["eval_during_training"]
        main_thread = stats["submit_seconds"] + stats["wait_seconds"]
        rollout, waits = stats["eval_seconds"], stats["waits"]
    seconds = stage["seconds"]
    return {
        "mode": mode,
        "stage_seconds": round(seconds, 3),
        "eval_in_training_thread_s": round(main_thread, 3),
        "eval_share_of_stage": round(main_thread / seconds, 4) if seconds else None,
        "eval_rollout_s": round(rollout, 3),
        "waits_for_previous": waits,
        "evaluations": len(results["eval_during_training"]),
        "eval_during_training": results["eval_during_training"],
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000, help="energy steps")
    p.add_argument("--eval-interval", type=int, default=250)
    p.add_argument("--episodes", type=int, default=5, help="episodes per evaluation (= envs)")
    p.add_argument("--max-steps", type=int, default=200, help="steps per episode")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--solver-steps", type=int, default=15)
    p.add_argument("--cells", type=int, nargs="*", default=None, help="hidden widths (mlp)")
    p.add_argument("--repeats", type=int, default=1, help="rounds (sync, background) each")
    p.add_argument("--tiny", action="store_true", help="a seconds-long check that it runs")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.tiny:
        args.steps, args.eval_interval, args.episodes, args.max_steps = 400, 100, 2, 30
        args.batch_size, args.solver_steps, args.cells = 64, 4, [32, 32]

    def report(r: int, row: dict) -> None:
        print(
            f"round {r} {row['mode']:10s}: stage {row['stage_seconds']:8.2f} s, eval in the "
            f"training thread {row['eval_in_training_thread_s']:7.2f} s "
            f"({100 * row['eval_share_of_stage']:.1f} %), rollouts "
            f"{row['eval_rollout_s']:.2f} s, {row['evaluations']} evaluations"
        )

    best = best_rounds(
        ("sync", "background"),
        args.repeats,
        lambda data_root, run_dir, mode: _overrides(args, data_root, run_dir, mode),
        _measure,
        "stage_seconds",
        report,
    )
    sync, background = best["sync"], best["background"]
    if sync["eval_during_training"] != background["eval_during_training"]:
        raise AssertionError("sync and background recorded different evaluations")
    speedup = sync["stage_seconds"] / background["stage_seconds"]
    print(
        f"energy stage: sync {sync['stage_seconds']:.2f} s, background "
        f"{background['stage_seconds']:.2f} s ({speedup:.2f}x); eval share of the stage "
        f"{100 * sync['eval_share_of_stage']:.1f} % -> {100 * background['eval_share_of_stage']:.1f} %"
    )
    out = {
        "command": "OMP_NUM_THREADS=1 python -m benchmarks.eval_overlap " + " ".join(argv or []),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "rows": [sync, background],
        "stage_speedup": round(speedup, 3),
    }
    write_record(out, args.out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
