"""How well does each policy fit IQL's actor target, the advantage-weighted conditional mean?

    python -m studies.locomotion.weighted_fit --iql IQL_RUN --aepo NAME=RUN_DIR [NAME=RUN_DIR ...] \\
        [--states 20000] [--samples 32] [--awr-steps 50000] [--out FILE.json]

IQL's actor regresses the dataset's actions weighted by ``w = min(exp(beta A), 100)`` (``A``
from IQL's critic); the minimiser of ``sum w ||a - f(s)||^2`` is the weighted conditional mean
``E_w[a | s]``, the mean of ``mu exp(beta A)`` (clipped). An advantage-weighted behaviour model
(``aepo.behaviour_weighting=advantage``) targets that same distribution, so the mean of its
samples should fit the same objective as well. This study scores, on ``--states`` dataset
transitions drawn at random, each policy's point prediction ``f(s)`` by the weighted and the
plain squared error to the dataset's action: IQL's actor (its mode), an MLP fitted IQL's way
(:func:`studies.locomotion.distill.distill`, ``--awr-steps`` on every transition; 0: skip),
and for each ``--aepo`` run its behaviour model (guidance 0) as the mean of ``--samples``
samples per state. No environment step is taken.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from studies.locomotion.distill import distill, sampler_targets
from studies.locomotion.iql_actions import IQLRun, actions_of
from studies.locomotion.runs import load_trained_run
from torchrl_aepo import AEPOActor
from torchrl_aepo.aepo.weighting import advantage_weights


def fit_errors(prediction: Tensor, action: Tensor, weights: Tensor) -> dict[str, float]:
    """``weighted_mse = sum_i w_i ||p_i - a_i||^2 / sum_i w_i`` and the unweighted ``mse``
    (``prediction``, ``action``: ``[n, d]``; ``weights``: ``[n]``, ``>= 0``, not all 0)."""
    if prediction.shape != action.shape or weights.shape != action.shape[:1]:
        raise ValueError(
            f"shapes: prediction {tuple(prediction.shape)}, action {tuple(action.shape)}, "
            f"weights {tuple(weights.shape)}; need [n, d], [n, d], [n]"
        )
    if not bool((weights >= 0).all()) or not float(weights.sum()) > 0:
        raise ValueError("weights must be >= 0 and not all 0")
    error = (prediction - action).pow(2).sum(-1)
    return {
        "weighted_mse": float((weights * error).sum() / weights.sum()),
        "mse": float(error.mean()),
    }


def sample_mean(actor: AEPOActor, obs: Tensor, samples: int, chunk: int = 5000) -> Tensor:
    """The mean of ``samples`` actions of ``actor`` per state, ``[n, d]``."""
    return torch.stack([sampler_targets(actor, obs, chunk) for _ in range(samples)]).mean(0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iql", type=Path, required=True, help="the IQL run: critic and actor")
    parser.add_argument("--aepo", nargs="+", required=True, metavar="NAME=RUN_DIR")
    parser.add_argument("--states", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--awr-steps", type=int, default=50_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    runs = {}
    for item in args.aepo:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"--aepo {item!r}: write NAME=RUN_DIR")
        runs[name] = Path(path)
    torch.manual_seed(0)
    first = load_trained_run(next(iter(runs.values())))
    iql = IQLRun(args.iql, first.metadata.obs_dim, first.metadata.action_dim)
    data = first.replay_buffer[:]
    index = torch.randint(0, len(data), (args.states,), generator=torch.Generator().manual_seed(2))
    every = advantage_weights(iql.qvalue, iql.value, data, beta=iql.temperature)
    obs, action, weights = data["observation"][index], data["action"][index], every[index]
    rows: dict[str, Any] = {"iql actor (mode)": fit_errors(iql.act(obs), action, weights)}
    if args.awr_steps > 0:
        start = time.perf_counter()
        mlp = distill(data["observation"], data["action"], steps=args.awr_steps, weights=every)
        with torch.no_grad():
            rows["mlp, advantage-weighted regression"] = fit_errors(
                actions_of(mlp, obs), action, weights
            ) | {"fit_s": time.perf_counter() - start}
    for name, run_dir in runs.items():
        actor = AEPOActor.from_checkpoint(
            run_dir / "actor.pt", guidance_scale=0.0, latent_scale=1.0
        )
        rows[f"{name}: mean of {args.samples} samples, w = 0"] = fit_errors(
            sample_mean(actor, obs, args.samples), action, weights
        )
    result = {
        "iql_run": str(args.iql),
        "aepo_runs": {k: str(v) for k, v in runs.items()},
        "states": args.states,
        "weights": {"beta": iql.temperature, "clip": 100.0, "mean": float(weights.mean())},
        "rows": rows,
    }
    for name, row in rows.items():
        print(f"{name}: weighted MSE {row['weighted_mse']:.4f}, MSE {row['mse']:.4f}", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
