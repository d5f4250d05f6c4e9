"""Wall time of the diffusion and critic stages, one after the other against overlapped
(``train.overlap_stages=false`` against ``true``).

    OMP_NUM_THREADS=1 python -m benchmarks.overlap_stages [--diffusion-steps 2000]
        [--critic-steps 4000] [--energy-steps 200] [--repeats 1] [--out docs/bench/overlap_stages.json]
    OMP_NUM_THREADS=1 python -m benchmarks.overlap_stages --tiny     # seconds: checks it runs

Runs ``recipes/aepo_offline.py`` in-process on the local Pendulum dataset (built once in a
temporary directory), twice per round, sequential then overlapped, with the same settings:
``--diffusion-steps`` / ``--critic-steps`` / ``--energy-steps`` steps of batch
``--batch-size``, ``threads=1`` per process, a small final evaluation. The networks are the
config's defaults (the paper's sizes) unless ``--cells`` shrinks them. Per mode it reports the
seconds of each stage, the wall time of the diffusion + critic part (sequential: the sum of the
two stages; overlapped: from the child's start to its end, start-up included, from results.json
``timings.overlap``) and the run's total wall time; then the ratios sequential / overlapped.
The best (shortest total) round per mode is kept.

The overlapped critic needs a core of its own: with ``threads=1`` per process, two free cores
give at best ``(diffusion + critic) / max(diffusion, critic)``; on a machine whose cores are
busy the two processes share what is left.
"""

from __future__ import annotations

import argparse
import os
import sys

from benchmarks.recipe_rounds import (
    TASK,
    best_rounds,
    cells_overrides,
    machine,
    run_quietly,
    write_record,
)

MODES = {"sequential": "false", "overlapped": "true"}


def _overrides(args, data_root, run_dir, mode: str) -> list[str]:
    steps = {"diffusion": args.diffusion_steps, "critic": args.critic_steps,
             "energy": args.energy_steps}  # fmt: skip
    out = [
        f"task={TASK}", f"data.root={data_root}", f"run_dir={run_dir}", "threads=1",
        "device=cpu", "progress_bar=false", "logger=none", f"train.overlap_stages={MODES[mode]}",
        "train.gamma_table.num_times=16", "train.gamma_table.samples_per_time=256",
        f"train.log_interval={args.log_interval}", f"train.checkpoint_interval={args.log_interval}",
        "eval.episodes=2", "eval.num_envs=2", f"eval.max_steps={args.max_steps}",
        "eval.guidance_sweep=[0.0]", f"aepo.solver.steps={args.solver_steps}",
    ]  # fmt: skip
    for stage, n in steps.items():
        out += [f"train.{stage}.steps={n}", f"train.{stage}.batch_size={args.batch_size}"]
    return out + cells_overrides(args.cells)


def _measure(recipe, cfg, mode: str) -> dict:
    results = run_quietly(recipe, cfg)
    timings = results["timings"]
    seconds = {name: stage["seconds"] for name, stage in timings["stages"].items()}
    if mode == "overlapped":
        part = timings["overlap"]["wall_seconds"]
    else:
        part = seconds["diffusion"] + seconds["critic"]
    return {
        "mode": mode,
        "stage_seconds": {k: round(v, 3) for k, v in seconds.items()},
        "diffusion_critic_wall_s": round(part, 3),
        "total_wall_s": timings["total_seconds"],
        "final_normalized_mean": results["final"]["normalized_mean"],
    }


def _print_row(r: int, row: dict) -> None:
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in row["stage_seconds"].items())
    print(
        f"round {r} {row['mode']:10s}: diffusion+critic wall {row['diffusion_critic_wall_s']:7.2f}"
        f" s, total {row['total_wall_s']:7.2f} s ({stages})"
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--diffusion-steps", type=int, default=2000)
    p.add_argument("--critic-steps", type=int, default=4000)
    p.add_argument("--energy-steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--log-interval", type=int, default=500)
    p.add_argument("--max-steps", type=int, default=50, help="steps per evaluation episode")
    p.add_argument("--solver-steps", type=int, default=15)
    p.add_argument("--cells", type=int, nargs="*", default=None, help="hidden widths (mlp)")
    p.add_argument("--repeats", type=int, default=1, help="rounds (sequential, overlapped) each")
    p.add_argument("--tiny", action="store_true", help="a seconds-long check that it runs")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.tiny:
        args.diffusion_steps, args.critic_steps, args.energy_steps = 100, 200, 20
        args.batch_size, args.log_interval, args.max_steps = 64, 50, 20
        args.solver_steps, args.cells = 4, [32, 32]
    best = best_rounds(
        MODES,
        args.repeats,
        lambda data_root, run_dir, mode: _overrides(args, data_root, run_dir, mode),
        _measure,
        "total_wall_s",
        _print_row,
    )
    seq, ovl = best["sequential"], best["overlapped"]
    part = seq["diffusion_critic_wall_s"] / ovl["diffusion_critic_wall_s"]
    total = seq["total_wall_s"] / ovl["total_wall_s"]
    print(
        f"diffusion+critic wall: sequential {seq['diffusion_critic_wall_s']:.2f} s, overlapped "
        f"{ovl['diffusion_critic_wall_s']:.2f} s ({part:.2f}x); whole run: "
        f"{seq['total_wall_s']:.2f} s -> {ovl['total_wall_s']:.2f} s ({total:.2f}x); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    out = {
        "command": "OMP_NUM_THREADS=1 python -m benchmarks.overlap_stages " + " ".join(argv or []),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "rows": [seq, ovl],
        "diffusion_critic_speedup": round(part, 3),
        "total_speedup": round(total, 3),
    }
    write_record(out, args.out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
