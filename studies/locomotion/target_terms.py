"""How large is each term of AEPO's energy target (Eq. 25) on a trained run, per diffusion time?

    python -m studies.locomotion.target_terms RUN_DIR [--samples 4096] [--out FILE.json]

Reads the ``diffusion``, ``critic`` and ``gamma`` stage checkpoints of a run of
``recipes/aepo_offline.py`` (the dataset is loaded as that run did), rebuilds the networks with
:mod:`torchrl_aepo.aepo` and, on ``--samples`` dataset transitions, reports at several ``t``
the spread (std over the batch) of

* ``beta Q(s, a_0)``, split into the state-only part ``beta V(s)`` and ``beta (Q - V)``;
* ``beta g^T (mu_{0|t} - a_0)`` and ``(beta^2 / 2) sigma^2_{0|t} ||g||^2``;

and the share of the target's variance that the action cannot explain (``Var(beta V(s))``
over ``Var(y)``). An energy network regressed on ``y`` spends its capacity on whatever
dominates ``Var(y)``; only the action-dependent part carries the guidance.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from studies.locomotion.runs import load_trained_run
from torchrl_aepo.aepo import AEPOConfig, build_energy_loss

TIMES = (0.01, 0.05, 0.2, 0.5, 0.8, 1.0)


def target_terms(run_dir: Path, samples: int, seed: int = 0) -> dict:
    run = load_trained_run(run_dir)
    nets, losses, aepo, posterior, rb = (
        run.nets,
        run.losses,
        run.aepo,
        run.posterior,
        run.replay_buffer,
    )
    task = run.config["task"]
    g = torch.Generator().manual_seed(seed)
    batch = rb[:][torch.randint(len(rb), (samples,), generator=g)]
    obs, act = batch["observation"], batch["action"]
    value = nets.value(obs).detach()
    rows = []
    for baseline in ("none", "value"):
        loss = build_energy_loss(nets, losses, AEPOConfig(**{**aepo.__dict__, "energy_baseline": baseline}),
                                 posterior)  # fmt: skip
        for t in TIMES:
            time = torch.full((samples, 1), t)
            noise = torch.randn(act.shape, generator=g)
            out = loss.energy_target(obs, act, time, noise)
            beta = loss.beta
            linear = beta * (out["grad"] * (out["mu"] - act)).sum(-1)
            variance = 0.5 * beta**2 * out["variance"].squeeze(-1) * out["grad"].pow(2).sum(-1)
            y = out["y"].squeeze(-1)
            state_only = beta * value.squeeze(-1) if baseline == "none" else torch.zeros_like(y)
            rows.append({
                "energy_baseline": baseline, "t": t,
                "std_y": float(y.std()), "mean_y": float(y.mean()),
                "std_beta_q_term": float((beta * out["q"]).std()),
                "std_state_only": float(state_only.std()),
                "std_linear_term": float(linear.std()),
                "std_variance_term": float(variance.std()),
                "mean_variance_term": float(variance.mean()),
                "state_only_share_of_var_y": float(state_only.var() / y.var().clamp_min(1e-12)),
                "grad_q_norm_mean": float(out["grad"].norm(dim=-1).mean()),
            })  # fmt: skip
    return {"run_dir": str(run_dir), "task": task["name"], "beta": aepo.beta, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = target_terms(args.run_dir, args.samples)
    cols = ("energy_baseline", "t", "std_y", "std_state_only", "std_beta_q_term",
            "std_linear_term", "std_variance_term", "state_only_share_of_var_y")  # fmt: skip
    print(" | ".join(cols))
    for r in result["rows"]:
        print(" | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    if args.out is not None:
        from torchrl_aepo.atomic import write_text_atomic

        write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
