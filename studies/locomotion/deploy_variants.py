"""Evaluate a finished run's actor under several sampling variants, on the recipe's episodes.

    python -m studies.locomotion.deploy_variants RUN_DIR \\
        --variant w=0.05,tau=0 --variant w=0.05,K=16 --variant w=0,K=16,sel=softmax_q,T=4.3

Each variant sets the guidance degree ``w``, the latent scale ``tau``
(:class:`~torchrl_aepo.AEPOActor` ``latent_scale``), the number of candidates ``K`` and their
selection ``sel`` (``argmax_q`` when ``K > 1`` unless given, or ``softmax_q`` / ``mean``;
``T`` is ``softmax_q``'s temperature) of the run's ``actor.pt``; the target critic of the run
picks among candidates (``mean`` averages them).
Every variant is scored on the recipe's evaluation episodes (env seeds 12345.., the run's
``eval.episodes``), so this is a sweep: choosing among its rows is choosing on evaluation
episodes. ``--out FILE`` writes the rows as JSON. ``recipes/aepo_offline.py run_dir=...
eval_only=true deploy.*=...`` gives the same numbers one variant at a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from studies.locomotion.runs import load_trained_run
from torchrl_aepo import AEPOActor
from torchrl_aepo.evaluation import evaluate_policy

_KEYS = {"w": float, "tau": float, "K": int, "sel": str, "T": float}


def parse_variant(text: str) -> dict[str, Any]:
    """``"w=0.05,tau=0,K=16"`` -> ``{"w": 0.05, "tau": 0.0, "K": 16}`` (unknown keys refused).

    >>> parse_variant("w=0.5,K=16")
    {'w': 0.5, 'K': 16}
    """
    out: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in _KEYS or not value:
            raise ValueError(f"variant item {item!r}: use key=value with key in {sorted(_KEYS)}")
        out[key] = _KEYS[key](value)
    return out


def build_variant(run_dir: Path, critic: torch.nn.Module, variant: dict[str, Any]) -> AEPOActor:
    """The run's ``actor.pt`` with the variant's sampling settings."""
    k = int(variant.get("K", 1))
    selection = variant.get("sel", "first" if k == 1 else "argmax_q")
    return AEPOActor.from_checkpoint(
        run_dir / "actor.pt",
        qvalue_network=critic if selection in ("argmax_q", "softmax_q") else None,
        num_candidates=k,
        selection=selection,
        selection_temperature=float(variant.get("T", 1.0)),
        guidance_scale=float(variant.get("w", 0.0)),
        latent_scale=float(variant.get("tau", 1.0)),
    )


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--variant", action="append", required=True, type=parse_variant)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from recipes import utils  # the recipe's env and protocol

    run = load_trained_run(args.run_dir)
    results = json.loads((args.run_dir / "results.json").read_text())  # the run's eval settings
    eval_cfg = OmegaConf.create(results["config"]["eval"])
    env = utils.make_env(eval_cfg, run.metadata, int(eval_cfg.num_envs), torch.device("cpu"))
    kwargs = utils.eval_kwargs(eval_cfg, run.metadata, int(eval_cfg.episodes))
    critic = run.losses.critic.target_qvalue_network()
    rows = []
    for variant in args.variant:
        result = evaluate_policy(build_variant(args.run_dir, critic, variant), env, **kwargs)
        scores = result.normalized_scores
        row = {
            **variant,
            "normalized_mean": statistics.mean(scores),
            "normalized_std": statistics.pstdev(scores),
            "mean_episode_length": statistics.mean(result.episode_lengths),
            "result": result.to_dict(),
        }
        rows.append(row)
        print(
            f"{args.run_dir.name} {json.dumps(variant)}: {row['normalized_mean']:.1f} ± "
            f"{row['normalized_std']:.1f} (episode length {row['mean_episode_length']:.0f})",
            flush=True,
        )
    env.close()
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
