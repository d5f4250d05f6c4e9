"""Load the trained stages of a finished ``recipes/aepo_offline.py`` run for a study."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchrl_aepo.aepo import AEPOConfig, ModelConfig, TrainConfig, build_losses, build_networks
from torchrl_aepo.data import get_task, make_offline_data
from torchrl_aepo.objectives import PosteriorStatistics


@dataclass
class TrainedRun:
    """A run's networks with its diffusion/critic (and, when present, Gamma) stages loaded."""

    config: dict[str, Any]
    aepo: AEPOConfig
    nets: Any
    losses: Any
    posterior: PosteriorStatistics | None
    replay_buffer: Any
    metadata: Any


def stage_checkpoint(run_dir: Path, name: str) -> dict:
    path = Path(run_dir) / "checkpoints" / f"{name}.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the run has not finished its '{name}' stage.")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_trained_run(run_dir: Path) -> TrainedRun:
    """Rebuild the networks of ``run_dir`` (its dataset loaded as the run did) and load the
    trained behaviour model (EMA weights into ``nets.behaviour``) and critic."""
    critic_ckpt = stage_checkpoint(run_dir, "critic")
    config = json.loads(critic_ckpt["config"])
    model = ModelConfig.from_dict(config["model"])
    fields = {f.name for f in AEPOConfig.__dataclass_fields__.values()}
    aepo = AEPOConfig.from_dict({k: v for k, v in config["aepo"].items() if k in fields})
    train = TrainConfig.from_dict(config["train"])
    data, task = config["data"], config["task"]
    rb, meta = make_offline_data(
        get_task(task["name"]), root=data["root"], normalize_observations=bool(data["normalize_observations"]),
        normalize_actions=bool(data["normalize_actions"]), reward_transform=data["reward_transform"],
        build_if_missing=False,
    )  # fmt: skip
    nets = build_networks(model, meta.obs_dim, meta.action_dim)
    losses = build_losses(nets, aepo, train)
    losses.diffusion.load_state_dict(stage_checkpoint(run_dir, "diffusion")["state"]["loss"])
    losses.critic.load_state_dict(critic_ckpt["state"]["loss"])
    nets.behaviour.load_state_dict(losses.diffusion.sampling_network().state_dict())
    gamma = Path(run_dir) / "checkpoints" / "gamma.pt"
    posterior = (
        PosteriorStatistics.from_state_dict(
            stage_checkpoint(run_dir, "gamma")["state"]["posterior"]
        )
        if gamma.exists()
        else None
    )
    return TrainedRun(config, aepo, nets, losses, posterior, rb, meta)
