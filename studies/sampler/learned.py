"""Sampler accuracy on a trained behaviour model: solver x grid x NFE against a 200-NFE reference.

    python -m studies.sampler.learned RUN_DIR [--states 64] [--samples 256] [--out FILE.json]

No closed form exists for a learned ``eps_theta``, so the reference is the same model integrated
with ``--reference-steps`` (default 200) steps of multistep order-3 DPM-Solver++ on the logSNR
grid. For ``--states`` dataset states, every configuration draws ``--samples`` actions per state
(unguided, ``w = 0``: the behaviour policy the guidance starts from) from the same ``x_T`` and
reports, averaged over states and action dimensions:

* ``variance_ratio``: per-state sample variance over the reference's (1 is exact);
* ``mean_error_in_std``: |per-state mean - reference mean| in reference standard deviations;
* ``saturated_fraction``: share of action entries at the box (|a| >= 0.999) after clipping,
  against the reference's (the data has 20-30% there).

Returns under each setting come from ``recipes/aepo_offline.py run_dir=RUN eval_only=true
aepo.solver.*=...`` on the same run (docs/sampler/README.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from studies.locomotion.runs import load_trained_run
from torchrl_aepo.atomic import write_text_atomic
from torchrl_aepo.diffusion.solver import DPMSolver

CONFIGS = [
    ("singlestep", 2, "time_uniform"),  # QGPO's
    ("singlestep", 2, "logSNR"),
    ("multistep", 2, "time_uniform"),
    ("multistep", 2, "logSNR"),  # the recipe's default
    ("multistep", 3, "logSNR"),
]
STEPS = (5, 10, 15, 25)


def _sample(solver: DPMSolver, network, observation: torch.Tensor, x_T: torch.Tensor):
    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return network(x, t.expand(x.shape[0], 1) if t.ndim < 2 else t, observation)

    with torch.inference_mode():
        return solver.sample(eps, x_T).clamp(-1.0, 1.0)


def _stats(actions: torch.Tensor, states: int, samples: int):
    a = actions.reshape(states, samples, -1)
    return a.mean(1), a.var(1), (a.abs() >= 0.999).float().mean()


def measure(run_dir: Path, states: int, samples: int, reference_steps: int, seed: int) -> dict:
    run = load_trained_run(run_dir)
    network, schedule = run.nets.behaviour, run.losses.diffusion.schedule
    g = torch.Generator().manual_seed(seed)
    rb = run.replay_buffer
    obs = rb[:][torch.randint(len(rb), (states,), generator=g)]["observation"]
    observation = obs.repeat_interleave(samples, 0)
    x_T = torch.randn(states * samples, run.metadata.action_dim, generator=g)
    reference = DPMSolver(schedule, order=3, steps=reference_steps, method="multistep",
                          skip_type="logSNR")  # fmt: skip
    ref_mean, ref_var, ref_sat = _stats(
        _sample(reference, network, observation, x_T), states, samples
    )
    ref_std = ref_var.clamp_min(1e-12).sqrt()
    rows = []
    for (method, order, skip), steps in [(c, s) for c in CONFIGS for s in STEPS]:
        solver = DPMSolver(schedule, order=order, steps=steps, method=method, skip_type=skip)
        start = time.perf_counter()
        mean, var, sat = _stats(_sample(solver, network, observation, x_T), states, samples)
        rows.append({
            "method": method, "order": order, "skip_type": skip, "steps": steps,
            "nfe": len(solver.eval_times),
            "variance_ratio": float((var / ref_var.clamp_min(1e-12)).median()),
            "variance_ratio_mean": float(var.sum() / ref_var.sum()),
            "mean_error_in_std": float(((mean - ref_mean).abs() / ref_std).median()),
            "saturated_fraction": float(sat), "reference_saturated_fraction": float(ref_sat),
            "seconds": round(time.perf_counter() - start, 3),
        })  # fmt: skip
    return {
        "run_dir": str(run_dir),
        "task": run.config["task"]["name"],
        "states": states,
        "samples_per_state": samples,
        "reference": f"multistep order 3 logSNR, {reference_steps} steps",
        "rows": rows,
    }


def to_markdown(result: dict) -> str:
    lines = [
        f"Learned behaviour model of `{result['task']}` ({result['states']} dataset states x "
        f"{result['samples_per_state']} samples; reference: {result['reference']}; medians over "
        "states and dimensions)",
        "",
        "| method | order | grid | NFE | variance ratio | mean error (ref. std) | at the box |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['method']} | {r['order']} | {r['skip_type']} | {r['nfe']} | "
            f"{r['variance_ratio']:.2f} | {r['mean_error_in_std']:.3f} | "
            f"{r['saturated_fraction']:.3f} (ref. {r['reference_saturated_fraction']:.3f}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--states", type=int, default=64)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--reference-steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = measure(args.run_dir, args.states, args.samples, args.reference_steps, args.seed)
    table = to_markdown(result)
    print(table)
    if args.out is not None:
        write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
        write_text_atomic(args.out.with_suffix(".md"), table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
