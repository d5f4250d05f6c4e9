"""Offline signals of a trained run's guided policies, per guidance degree (no env episodes).

    python -m studies.locomotion.guidance_signals RUN_DIR [--states 1024] [--guidance 0 0.1 0.5 1 2]
        [--no-rescale] [--candidates K] [--latent-scale TAU] [--out FILE.json]

For ``--states`` dataset states the run's faithful actor (K = 1) samples one action per state at
each guidance degree ``w``; the critic the run trained rates them. Reported per ``w``, as means
over the states:

* ``advantage``: ``min_k Q_k(s, a) - V(s)`` (what the guidance ascends; it grows with ``w`` by
  construction, so on its own it cannot pick ``w``);
* ``head_gap``: ``|Q_1(s, a) - Q_2(s, a)|``, the twin heads' disagreement, and its ratio to the
  gap at the dataset actions (``head_gap_vs_data``): how far outside the critic's data support
  the guided actions go;
* ``distance_to_data``: ``||a - a_data||`` to the state's dataset action, and the share of action
  entries at the box.

These use the training data only (the rule of :mod:`torchrl_aepo.aepo.guidance`, which the
recipe applies with ``aepo.guidance_rule=critic_lower_bound``); no evaluation episode enters them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from studies.locomotion.runs import load_trained_run, stage_checkpoint
from torchrl_aepo.aepo import build_actor, build_energy_loss, select_guidance
from torchrl_aepo.atomic import write_text_atomic


def run_guidance_signals(
    run_dir: Path,
    states: int,
    degrees: list[float],
    rescale: bool | None,
    seed: int = 0,
    candidates: int = 1,
    latent_scale: float = 1.0,
):
    """:func:`~torchrl_aepo.aepo.select_guidance` on a finished run's actor (``candidates``
    > 1: the critic's argmax of that many samples; ``latent_scale``: the sampler's initial
    latent scale, 0 for the deterministic deployed sampler of ``preset=locomotion``)."""
    run = load_trained_run(run_dir)
    aepo = run.aepo if rescale is None else dataclasses.replace(run.aepo, rescale=rescale)
    if candidates > 1:
        aepo = dataclasses.replace(aepo, num_candidates=candidates, selection="argmax_q")
    aepo = dataclasses.replace(aepo, latent_scale=latent_scale)
    energy = build_energy_loss(run.nets, run.losses, aepo, run.posterior)
    energy.load_state_dict(stage_checkpoint(run_dir, "energy")["state"]["loss"])
    actor = build_actor(run.nets, run.losses, aepo)
    qvalue = run.losses.critic.target_qvalue_network()
    choice = select_guidance(actor, qvalue, run.nets.value, run.replay_buffer[:], degrees,
                             states=states, seed=seed)  # fmt: skip
    return {"run_dir": str(run_dir), "task": run.config["task"]["name"],
            "rescale": aepo.rescale, "latent_scale": latent_scale, **choice.to_dict()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--states", type=int, default=1024)
    parser.add_argument("--guidance", type=float, nargs="+", default=[0.0, 0.1, 0.5, 1.0, 2.0])
    parser.add_argument("--no-rescale", action="store_true")
    parser.add_argument("--candidates", type=int, default=1)
    parser.add_argument("--latent-scale", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = run_guidance_signals(
        args.run_dir,
        args.states,
        args.guidance,
        False if args.no_rescale else None,
        candidates=args.candidates,
        latent_scale=args.latent_scale,
    )
    d = result["dataset_actions"]
    print(f"{result['task']} (rescale {result['rescale']}): dataset actions: "
          f"advantage {d['advantage']:.3f}, head gap {d['head_gap']:.3f}")  # fmt: skip
    print(
        f"chosen by the critic lower bound (pessimism {result['pessimism']:g}): w = {result['guidance']:g}"
    )
    print("w | advantage | head gap | gap / data's | distance to data | at box")
    for r in result["rows"]:
        print(f"{r['guidance']:g} | {r['advantage']:.3f} | {r['head_gap']:.3f} | "
              f"{r['head_gap_vs_data']:.2f} | {r['distance_to_data']:.3f} | {r['at_box']:.3f}")  # fmt: skip
    if args.out is not None:
        write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
