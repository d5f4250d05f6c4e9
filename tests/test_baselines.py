"""TorchRL IQL baseline (torchrl_aepo.baselines, recipes/iql_offline.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_aepo.baselines import build_iql

ROOT = Path(__file__).resolve().parents[1]


def _batch(n=64, s=3, d=2):
    g = torch.Generator().manual_seed(0)
    return TensorDict(
        {
            "observation": torch.randn(n, s, generator=g),
            "action": torch.rand(n, d, generator=g) * 2 - 1,
            "next": {
                "observation": torch.randn(n, s, generator=g),
                "reward": torch.randn(n, 1, generator=g),
                "done": torch.zeros(n, 1, dtype=torch.bool),
                "terminated": torch.zeros(n, 1, dtype=torch.bool),
            },
        },
        [n],
    )


@pytest.mark.parametrize("actor", ["tanh_normal", "tanh_mean_normal"])
def test_iql_learns_the_best_dataset_action_and_acts_in_the_box(actor):
    # one state, reward = -(a - 0.5)^2: the advantage-weighted actor moves towards 0.5
    torch.manual_seed(0)
    from torchrl.objectives import SoftUpdate

    loss, policy = build_iql(3, 1, actor=actor, num_cells=(32, 32), temperature=10.0)
    target = SoftUpdate(loss, tau=0.05)  # IQL's actor weights use the target critic
    optim = torch.optim.Adam(loss.parameters(), lr=3e-3)
    n = 256
    data = TensorDict(
        {
            "observation": torch.zeros(n, 3),
            "action": torch.linspace(-0.99, 0.99, n).unsqueeze(-1),
            "next": {
                "observation": torch.zeros(n, 3),
                "reward": -((torch.linspace(-0.99, 0.99, n).unsqueeze(-1) - 0.5) ** 2),
                "done": torch.ones(n, 1, dtype=torch.bool),
                "terminated": torch.ones(n, 1, dtype=torch.bool),
            },
        },
        [n],
    )
    for _ in range(400):
        out = loss(data)
        (out["loss_actor"] + out["loss_qvalue"] + out["loss_value"]).backward()
        optim.step()
        optim.zero_grad()
        target.step()
    with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
        action = policy(TensorDict({"observation": torch.zeros(4, 3)}, [4]))["action"]
    assert action.abs().max() <= 1.0
    assert abs(float(action.mean()) - 0.5) < 0.2, float(action.mean())


def test_unknown_actor_is_refused():
    with pytest.raises(ValueError, match="tanh_mean_normal"):
        build_iql(3, 2, actor="gaussian")


def test_iql_recipe_end_to_end(tmp_path):
    from torchrl_aepo.data import build_local_dataset

    build_local_dataset("pendulum-medium", root=tmp_path / "data", num_steps=800, ref_episodes=2)
    spec = importlib.util.spec_from_file_location(
        "iql_offline", ROOT / "recipes" / "iql_offline.py"
    )
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    overrides = [
        "task=pendulum-medium",
        f"data.root={tmp_path / 'data'}",
        f"run_dir={tmp_path / 'run'}",
        "device=cpu",
        "progress_bar=false",
        "logger=none",
        "iql.steps=20",
        "iql.batch_size=32",
        "iql.num_cells=[16,16]",
        "eval.episodes=2",
        "eval.num_envs=2",
        "eval.max_steps=20",
    ]
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose(config_name="iql", overrides=overrides)
    results = recipe.run(cfg)
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["method"] == "iql-tanh_normal" and on_disk["task"] == "pendulum-medium"
    assert len(on_disk["final"]["returns"]) == 2
    assert results["train"]["stages"]["iql"]["steps"] == 20
    # the CPU is recorded: float results can differ between kernel levels (AVX2, AVX512, ...)
    assert on_disk["versions"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
