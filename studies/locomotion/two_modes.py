"""Which mode does a medium-expert run's policy take, and which does its critic prefer?

    python -m studies.locomotion.two_modes RUN_DIR [--guidance 0 0.5 2] [--out FILE.json]

A ``<env>-medium-expert-local`` dataset is the medium checkpoint's steps, then as many of the
expert checkpoint's (:mod:`torchrl_aepo.data.locomotion`), so both checkpoints' deterministic
actions are known at every state. Two views, no evaluation episode:

* ``dataset``: 512 states from each half of the data. The run's critic rates the dataset's
  action, the medium and the expert checkpoint's actions (advantage ``min_k Q_k - V``, and
  the share of states where the expert's is rated higher); the run's actor, from the zero
  latent at each guidance degree, is located by its distance to both checkpoints' actions.
* ``trajectories``: the first 30 states of each checkpoint's own episodes (5 env seeds), early
  (steps 0-9) and later (10-29). There: the critic's expert-minus-medium gap, the share of 16
  behaviour samples (``w = 0``, latent scale 1) nearer the expert's action than the medium's,
  and the same share for the sample the critic picks among them.

So it separates a critic that cannot tell the modes apart from a sampler that cannot reach
the preferred one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict

from studies.locomotion.runs import load_trained_run
from torchrl_aepo import AEPOActor
from torchrl_aepo.data.locomotion import CHECKPOINT_DIR, load_ladder, parse_locomotion_task
from torchrl_aepo.data.policies import load_policy


def _actions(actor: AEPOActor, obs: torch.Tensor) -> torch.Tensor:
    return actor(TensorDict({"observation": obs}, batch_size=obs.shape[:1]))["action"]


@torch.no_grad()
def dataset_view(run, run_dir: Path, medium, expert, ladder: list[float]) -> dict[str, Any]:
    """The critic's ratings and the zero-latent actor's position on both halves of the data."""
    data = run.replay_buffer[:]
    half = len(data) // 2
    g = torch.Generator().manual_seed(0)
    halves = {
        "medium half": torch.randint(0, half, (512,), generator=g),
        "expert half": torch.randint(half, len(data), (512,), generator=g),
    }
    critic, value = run.losses.critic.target_qvalue_network(), run.nets.value
    actors = {
        w: AEPOActor.from_checkpoint(run_dir / "actor.pt", guidance_scale=w, latent_scale=0.0)
        for w in ladder
    }
    out = {}
    for name, index in halves.items():
        obs, act = data["observation"][index], data["action"][index]
        a_m, a_e = medium.act(obs), expert.act(obs)
        v = value(obs).squeeze(-1)
        q_m, q_e = critic(obs, a_m).min(-1).values, critic(obs, a_e).min(-1).values
        row = {
            "advantage_data": float((critic(obs, act).min(-1).values - v).mean()),
            "advantage_medium": float((q_m - v).mean()),
            "advantage_expert": float((q_e - v).mean()),
            "expert_rated_higher": float((q_e > q_m).float().mean()),
            "distance_medium_expert": float((a_m - a_e).norm(dim=-1).mean()),
            "actor": [],
        }
        for w, actor in actors.items():
            a = _actions(actor, obs)
            row["actor"].append(
                {
                    "guidance": w,
                    "advantage": float((critic(obs, a).min(-1).values - v).mean()),
                    "distance_to_medium": float((a - a_m).norm(dim=-1).mean()),
                    "distance_to_expert": float((a - a_e).norm(dim=-1).mean()),
                }
            )
        out[name] = row
    return out


@torch.no_grad()
def trajectory_view(run, run_dir: Path, env_id: str, medium, expert) -> dict[str, Any]:
    """Along each checkpoint's own first 30 steps: critic gap and where behaviour samples lie."""
    import gymnasium as gym

    env = gym.make(env_id)
    critic = run.losses.critic.target_qvalue_network()
    behaviour = AEPOActor.from_checkpoint(run_dir / "actor.pt", guidance_scale=0.0)
    torch.manual_seed(0)
    out = {}
    for name, policy in (("expert trajectory", expert), ("medium trajectory", medium)):
        states = []
        for seed in range(5):
            obs, _ = env.reset(seed=100 + seed)
            for _ in range(30):
                states.append(obs)
                action = policy.act(torch.as_tensor(obs, dtype=torch.float32)[None])[0]
                obs, *_ = env.step(action.numpy())
        obs = torch.as_tensor(np.array(states), dtype=torch.float32)
        a_m, a_e = medium.act(obs), expert.act(obs)
        gap = critic(obs, a_e).min(-1).values - critic(obs, a_m).min(-1).values
        k = 16
        samples = _actions(behaviour, obs.repeat_interleave(k, 0)).view(len(obs), k, -1)
        nearer_expert = (samples - a_e[:, None]).norm(dim=-1) < (samples - a_m[:, None]).norm(
            dim=-1
        )
        q = critic(obs.repeat_interleave(k, 0), samples.reshape(len(obs) * k, -1))
        pick = q.min(-1).values.view(len(obs), k).argmax(1)
        picked_expert = nearer_expert.gather(1, pick[:, None]).squeeze(1)
        step = torch.arange(len(obs)) % 30
        for label, mask in (("steps 0-9", step < 10), ("steps 10-29", step >= 10)):
            out[f"{name}, {label}"] = {
                "critic_expert_minus_medium": float(gap[mask].mean()),
                "expert_rated_higher": float((gap[mask] > 0).float().mean()),
                "samples_nearer_expert": float(nearer_expert[mask].float().mean()),
                "critic_pick_nearer_expert": float(picked_expert[mask].float().mean()),
            }
    env.close()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--guidance", type=float, nargs="+", default=[0.0, 0.5, 2.0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    run = load_trained_run(args.run_dir)
    family, quality = parse_locomotion_task(run.config["task"]["name"])
    if quality != "medium-expert":
        raise SystemExit(f"{run.config['task']['name']}: needs a <env>-medium-expert-local run.")
    ladder = load_ladder(family)
    medium, _ = load_policy(CHECKPOINT_DIR / family / ladder["medium"])
    expert, _ = load_policy(CHECKPOINT_DIR / family / ladder["expert"])
    result = {
        "run": str(args.run_dir),
        "task": run.config["task"]["name"],
        "dataset": dataset_view(run, args.run_dir, medium, expert, args.guidance),
        "trajectories": trajectory_view(run, args.run_dir, ladder["env_id"], medium, expert),
    }
    print(json.dumps(result, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
