"""Is AEPO's critic stage or its policy extraction behind its gap to IQL? Swap the critics.

    python -m studies.locomotion.critic_swap AEPO_RUN --iql IQL_RUN --out NEW_RUN
    python recipes/aepo_offline.py <AEPO_RUN's overrides> run_dir=NEW_RUN   # printed by the first

Section 9 of ``docs/locomotion.md`` fitted IQL's actor (advantage-weighted regression) from
AEPO's and from IQL's critics: both critic stages use the same losses and settings, yet the
fits differed by 20 points on hopper-medium-expert over three seeds each. This study gives
AEPO IQL's critic: it writes a new run directory holding ``AEPO_RUN``'s finished behaviour
model (``diffusion``, and ``supports``/``gamma`` when present, which do not read the critic)
and a ``critic`` checkpoint whose twin Q heads (online and target) and ``V`` are
``IQL_RUN``'s (TorchRL ``IQLLoss`` parameters mapped onto
:class:`~torchrl_aepo.objectives.ExpectileLoss`'s layout; the Q and V functions are the same,
checked at write time). Continuing that directory with the recipe and ``AEPO_RUN``'s own
settings trains only the energy on IQL's critic and evaluates as the recipe does, so its
score sits beside ``AEPO_RUN``'s (AEPO's critic) and ``IQL_RUN``'s (IQL's extraction).

Refused before anything is written: a target directory that holds checkpoints, an AEPO run
whose behaviour model reads the critic (``aepo.behaviour_weighting=advantage``) or whose
critic is not the expectile one, and an IQL run on other data or with another expectile,
discount or network width. ``NEW_RUN/critic_swap.json`` records both sources.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from studies.locomotion.iql_actions import IQLRun
from studies.locomotion.runs import load_trained_run, stage_checkpoint
from torchrl_aepo.atomic import save_torch_atomic

#: Stages that do not read the critic: copied from the AEPO run as they are.
CRITIC_FREE_STAGES = ("diffusion", "supports", "gamma")


def _linear_indices(state: Mapping[str, Tensor], prefix: str) -> list[str]:
    """The layer indices ``i`` of ``{prefix}{i}.weight`` in order (``MLP``'s Linear layers)."""
    found = [
        k[len(prefix) : -len(".weight")]
        for k in state
        if k.startswith(prefix) and k.endswith(".weight")
    ]
    return sorted(found, key=int)


def iql_critic_state(iql_loss_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """TorchRL ``IQLLoss``'s critic parameters in :class:`ExpectileLoss`'s state-dict layout.

    ``IQLLoss`` keeps its twin Q heads as stacked ``nn.Linear`` parameters
    (``qvalue_network_params.module.{i}.weight`` ``[heads, out, in]``, ``.bias``
    ``[heads, out]``, same for ``target_qvalue_network_params``) and ``V`` as one ``MLP``
    (``value_network_params.module.{i}.*``). :class:`~torchrl_aepo.TwinQNetwork` holds
    ``weights.{j}`` ``[heads, in, out]`` and ``biases.{j}`` ``[heads, 1, out]``;
    :class:`~torchrl_aepo.ValueNetwork` ``mlp.{i}.*``. The returned tensors are new (the
    transposes are made contiguous); the functions they define are the same.
    """
    out: dict[str, Tensor] = {}
    for group in ("qvalue_network_params", "target_qvalue_network_params"):
        prefix = f"{group}.module."
        indices = _linear_indices(iql_loss_state, prefix)
        if not indices:
            raise KeyError(f"no '{prefix}<i>.weight' in the IQL loss state: not a TorchRL IQLLoss.")
        for j, i in enumerate(indices):
            weight, bias = (
                iql_loss_state[f"{prefix}{i}.weight"],
                iql_loss_state[f"{prefix}{i}.bias"],
            )
            out[f"{group}.weights.{j}"] = weight.transpose(-1, -2).contiguous().clone()
            out[f"{group}.biases.{j}"] = bias.unsqueeze(-2).clone()
    prefix = "value_network_params.module."
    for i in _linear_indices(iql_loss_state, prefix):
        for name in ("weight", "bias"):
            out[f"value_network_params.mlp.{i}.{name}"] = iql_loss_state[
                f"{prefix}{i}.{name}"
            ].clone()
    return out


def _check_compatible(aepo_config: Mapping[str, Any], iql_config: Mapping[str, Any]) -> list[str]:
    """The settings on which the two runs' critics must agree, as ``key: aepo vs iql`` lines."""
    problems = []
    pairs = {
        "task.name": (aepo_config["task"]["name"], iql_config["task"]["name"]),
        "aepo.expectile / iql.expectile": (aepo_config["aepo"]["expectile"], iql_config["iql"]["expectile"]),
        "aepo.discount / iql.discount": (aepo_config["aepo"]["discount"], iql_config["iql"]["discount"]),
        "model.qvalue_num_cells / iql.num_cells": (
            list(aepo_config["model"]["qvalue_num_cells"]), list(iql_config["iql"]["num_cells"])),
        "model.value_num_cells / iql.num_cells": (
            list(aepo_config["model"]["value_num_cells"]), list(iql_config["iql"]["num_cells"])),
    }  # fmt: skip
    for key in ("normalize_observations", "normalize_actions", "reward_transform"):
        pairs[f"data.{key}"] = (aepo_config["data"][key], iql_config["data"][key])
    for key, (a, b) in pairs.items():
        if a != b:
            problems.append(f"{key}: {a!r} (AEPO run) vs {b!r} (IQL run)")
    if aepo_config["aepo"].get("critic", "expectile") != "expectile":
        problems.append(
            f"aepo.critic={aepo_config['aepo']['critic']!r}: only the expectile critic is swapped"
        )
    if aepo_config["aepo"].get("behaviour_weighting", "none") != "none":
        problems.append(
            f"aepo.behaviour_weighting={aepo_config['aepo']['behaviour_weighting']!r}: the behaviour "
            "model read the AEPO critic; swap on an unweighted run"
        )
    return problems


def _overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return ["<the AEPO run's overrides>"]
    lines = path.read_text().splitlines()
    return [
        line[2:] for line in lines if line.startswith("- ") and not line[2:].startswith("run_dir=")
    ]


def swap_critic(aepo_run: Path, iql_run: Path, out: Path) -> dict[str, Any]:
    """Write ``out/checkpoints`` (see the module docstring); returns the provenance record."""
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("*.pt")):
        raise FileExistsError(
            f"{out}/checkpoints already holds checkpoints; choose an empty --out."
        )
    critic = stage_checkpoint(aepo_run, "critic")
    aepo_config = json.loads(critic["config"])
    iql_config = json.loads((iql_run / "results.json").read_text())["config"]
    problems = _check_compatible(aepo_config, iql_config)
    if problems:
        raise ValueError("the critics cannot be swapped:\n  " + "\n  ".join(problems))
    iql_state = torch.load(
        iql_run / "checkpoints" / "iql.pt", map_location="cpu", weights_only=True
    )
    swapped = iql_critic_state(iql_state["state"]["loss"])
    own = critic["state"]["loss"]
    if set(swapped) != set(own) or any(swapped[k].shape != own[k].shape for k in own):
        raise ValueError(
            f"the IQL critic's layout {sorted((k, tuple(v.shape)) for k, v in swapped.items())} "
            f"differs from the AEPO critic's {sorted((k, tuple(v.shape)) for k, v in own.items())}."
        )
    # the functions must be the same: AEPO's view of the swapped weights against IQL's own nets
    run = load_trained_run(aepo_run)
    run.losses.critic.load_state_dict(swapped)
    iql = IQLRun(iql_run, run.metadata.obs_dim, run.metadata.action_dim)
    probe = run.replay_buffer[:1024]
    obs, action = probe["observation"], probe["action"]
    with torch.no_grad():
        q_ref, v_ref = iql.qvalue(obs, action), iql.value(obs)
        q_gap = (run.losses.critic.target_qvalue_network()(obs, action) - q_ref).abs().max()
        v_gap = (run.nets.value(obs) - v_ref).abs().max()
    # float32 rounding of a batched matmul against nn.Linear: relative to the values' scale
    scale = max(1.0, float(q_ref.abs().max()), float(v_ref.abs().max()))
    if max(float(q_gap), float(v_gap)) > 1e-5 * scale:
        raise AssertionError(
            f"mapped critic differs from IQL's: max |dQ| {q_gap:.2e}, |dV| {v_gap:.2e} "
            f"(values up to {scale:.3g})"
        )
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    copied = []
    for stage in CRITIC_FREE_STAGES:
        src = aepo_run / "checkpoints" / f"{stage}.pt"
        if src.exists():
            shutil.copy2(src, out / "checkpoints" / src.name)
            copied.append(stage)
    critic["state"]["loss"] = swapped
    critic["critic_swapped_from"] = str(iql_run)
    save_torch_atomic(critic, out / "checkpoints" / "critic.pt")  # as the trainer writes them
    record = {
        "aepo_run": str(aepo_run),
        "iql_run": str(iql_run),
        "copied_stages": copied,
        "critic": f"IQL's twin Q (online and target) and V from {iql_run}/checkpoints/iql.pt",
        "max_abs_gap_on_1024_states": {"q": float(q_gap), "v": float(v_gap), "scale": scale},
        "continue_with": "python recipes/aepo_offline.py "
        + " ".join([*_overrides(aepo_run), f"run_dir={out}"]),
    }
    (out / "critic_swap.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("aepo_run", type=Path, help="a finished (at least to its critic) AEPO run")
    parser.add_argument(
        "--iql", type=Path, required=True, help="a finished recipes/iql_offline.py run"
    )
    parser.add_argument("--out", type=Path, required=True, help="the new run directory")
    args = parser.parse_args(argv)
    record = swap_critic(args.aepo_run, args.iql, args.out)
    print(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
