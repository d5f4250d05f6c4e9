"""studies.locomotion.critic_swap: IQL's critic under AEPO's energy and sampler."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from recipe_overrides import tiny_recipe_overrides

from studies.locomotion.critic_swap import _check_compatible, iql_critic_state, swap_critic
from studies.locomotion.iql_actions import IQLRun
from torchrl_aepo import TwinQNetwork, ValueNetwork
from torchrl_aepo.baselines import build_iql
from torchrl_aepo.objectives import ExpectileLoss

ROOT = Path(__file__).resolve().parents[1]
TASK = "pendulum-medium-expert"


def test_mapped_iql_critic_is_the_same_function(tmp_path):
    torch.manual_seed(0)
    obs_dim, action_dim, cells = 3, 2, (16, 8)
    iql, _ = build_iql(obs_dim, action_dim, num_cells=cells)
    with torch.no_grad():  # online and target differ, so a swapped pair would show
        for params in (iql.qvalue_network_params, iql.target_qvalue_network_params):
            for value in params.values(True, True):
                value.normal_()
        for value in iql.value_network_params.values(True, True):
            value.normal_()
    (tmp_path / "checkpoints").mkdir()
    torch.save({"state": {"loss": iql.state_dict()}}, tmp_path / "checkpoints" / "iql.pt")
    config = {"actor": "tanh_normal", "num_cells": list(cells), "expectile": 0.7,
              "temperature": 3.0, "discount": 0.99}  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps({"config": {"iql": config}}))
    reference = IQLRun(tmp_path, obs_dim, action_dim)

    loss = ExpectileLoss(
        TwinQNetwork(obs_dim, action_dim, num_cells=cells), ValueNetwork(obs_dim, num_cells=cells)
    )
    loss.load_state_dict(iql_critic_state(iql.state_dict()))
    obs, action = torch.randn(64, obs_dim), torch.rand(64, action_dim) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(
            loss.target_qvalue_network()(obs, action), reference.qvalue(obs, action)
        )
        torch.testing.assert_close(loss.value_network(obs), reference.value(obs))
        # the online heads map to the online heads (IQL's own online parameters, by hand)
        online = iql.qvalue_network_params
        x = torch.cat([obs, action], -1)
        for head in range(2):
            h = x
            for i, layer in enumerate(("0", "2", "4")):
                h = (
                    h @ online["module", layer, "weight"][head].T
                    + online["module", layer, "bias"][head]
                )
                h = torch.relu(h) if i < 2 else h
            torch.testing.assert_close(loss.qvalue_network(obs, action)[:, head : head + 1], h)


def test_incompatible_runs_are_listed():
    aepo = {
        "task": {"name": "hopper-medium-local"},
        "aepo": {"expectile": 0.7, "discount": 0.99, "critic": "expectile",
                 "behaviour_weighting": "advantage"},
        "model": {"qvalue_num_cells": [256, 256], "value_num_cells": [256, 256]},
        "data": {"normalize_observations": False, "normalize_actions": True, "reward_transform": None},
    }  # fmt: skip
    iql = {
        "task": {"name": "hopper-medium-local"},
        "iql": {"expectile": 0.9, "discount": 0.99, "num_cells": [256, 256]},
        "data": {"normalize_observations": False, "normalize_actions": True, "reward_transform": "iql"},
    }  # fmt: skip
    problems = _check_compatible(aepo, iql)
    assert len(problems) == 3
    assert any("expectile" in p and "0.9" in p for p in problems)
    assert any("data.reward_transform" in p for p in problems)
    assert any("behaviour_weighting" in p for p in problems)


def test_swapped_run_trains_only_the_energy_on_the_iql_critic(recipe, data_root, tmp_path):
    tiny = [f"task={TASK}", f"data.root={data_root}",
            *tiny_recipe_overrides(steps=20, guidance_sweep="[0.0]")]  # fmt: skip
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        aepo_cfg = compose(config_name="config", overrides=[*tiny, f"run_dir={tmp_path / 'aepo'}"])
        swapped_cfg = compose(
            config_name="config", overrides=[*tiny, f"run_dir={tmp_path / 'swap'}"]
        )
        iql_cfg = compose(config_name="iql", overrides=[
            f"task={TASK}", f"data.root={data_root}", f"run_dir={tmp_path / 'iql'}", "device=cpu",
            "progress_bar=false", "logger=none", "iql.steps=20", "iql.batch_size=32",
            "iql.num_cells=[32,32]", "eval.episodes=2", "eval.num_envs=2", "eval.max_steps=20",
        ])  # fmt: skip
    recipe.run(aepo_cfg)
    spec = importlib.util.spec_from_file_location(
        "iql_offline", ROOT / "recipes" / "iql_offline.py"
    )
    iql_recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(iql_recipe)
    iql_recipe.run(iql_cfg)

    record = swap_critic(tmp_path / "aepo", tmp_path / "iql", tmp_path / "swap")
    assert record["copied_stages"] == ["diffusion", "gamma"]
    gap = record["max_abs_gap_on_1024_states"]
    assert max(gap["q"], gap["v"]) <= 1e-5 * gap["scale"]
    results = recipe.run(swapped_cfg)
    stages = results["train"]["stages"]
    assert [k for k, v in stages.items() if v["skipped"]] == ["diffusion", "critic", "gamma"]
    assert stages["energy"]["steps_this_run"] == 20
    critic = torch.load(tmp_path / "swap" / "checkpoints" / "critic.pt", weights_only=True)
    iql_state = torch.load(tmp_path / "iql" / "checkpoints" / "iql.pt", weights_only=True)
    expected = iql_critic_state(iql_state["state"]["loss"])
    assert all(torch.equal(critic["state"]["loss"][k], v) for k, v in expected.items())
    # a second swap into the same directory is refused before anything is written
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        swap_critic(tmp_path / "aepo", tmp_path / "iql", tmp_path / "swap")
