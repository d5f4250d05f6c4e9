"""studies.locomotion.iql_actions: the IQL run's critic and actor, and the comparison rows."""

import json

import torch

from studies.locomotion.iql_actions import IQLRun, compare
from torchrl_aepo.baselines import build_iql

OBS, ACT = 3, 2


def _iql_run(tmp_path):
    torch.manual_seed(0)
    config = {"actor": "tanh_mean_normal", "num_cells": [8], "expectile": 0.7,
              "temperature": 3.0, "discount": 0.99}  # fmt: skip
    loss, _ = build_iql(OBS, ACT, **{k: v for k, v in config.items() if k != "num_cells"},
                        num_cells=(8,))  # fmt: skip
    (tmp_path / "checkpoints").mkdir()
    torch.save({"state": {"loss": loss.state_dict()}}, tmp_path / "checkpoints" / "iql.pt")
    (tmp_path / "results.json").write_text(json.dumps({"config": {"iql": config}}))
    return loss


def test_iql_run_restores_the_actor_mode_and_the_twin_critic(tmp_path):
    loss = _iql_run(tmp_path)
    run = IQLRun(tmp_path, OBS, ACT)
    obs, action = torch.randn(5, OBS), torch.rand(5, ACT) * 2 - 1
    # the mode of the tanh-mean Normal actor is tanh of its mean network
    net = run.actor.module[0].module
    torch.testing.assert_close(run.act(obs), torch.tanh(net.mean(obs)))
    # advantage = min over the two target Q heads minus V, by hand from the saved parameters
    params = loss.target_qvalue_network_params
    heads = []
    for i in range(2):
        w = [params["module", str(j), name][i] for j in (0, 2) for name in ("weight", "bias")]
        x = torch.cat([obs, action], -1)
        heads.append(torch.relu(x @ w[0].T + w[1]) @ w[2].T + w[3])
    v = loss.value_network_params
    value = torch.relu(obs @ v["module", "0", "weight"].T + v["module", "0", "bias"])
    value = value @ v["module", "2", "weight"].T + v["module", "2", "bias"]
    expected = (torch.minimum(heads[0], heads[1]) - value).squeeze(-1)
    torch.testing.assert_close(run.advantage(obs, action), expected)


def test_compare_rows_and_the_step_change_within_episodes():
    obs = torch.zeros(4, OBS)
    iql = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [5.0, 6.0]])
    other = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    critics = {"a": lambda o, a: a.sum(-1)}
    rows = compare(obs, {"iql": iql, "other": other}, critics, torch.tensor([0, 0, 1, 1]))
    assert rows["iql"]["distance_to_iql"] == 0.0
    assert rows["iql"]["advantage_a"] == iql.sum(-1).mean().item()
    # steps 0->1 and 2->3 only (1 -> 2 crosses an episode boundary)
    assert rows["iql"]["step_change"] == 1.0 and rows["other"]["step_change"] == 0.0
    assert rows["other"]["saturated"] == 0.75
    assert "step_change" not in compare(obs, {"iql": iql}, critics)["iql"]


class _ZeroPolicy:
    def act(self, obs):
        return torch.zeros(obs.shape[0], 3)


def test_continuation_returns_restart_the_simulator_at_each_state():
    import gymnasium as gym
    import numpy as np

    from studies.locomotion.iql_actions import closed_loop_returns, continuation_returns

    env = gym.make("Hopper-v5")
    obs, _ = env.reset(seed=3)
    states = []
    for _ in range(3):
        states.append(obs)
        obs, *_ = env.step(env.action_space.sample() * 0.1)
    obs_t = torch.as_tensor(np.array(states), dtype=torch.float32)
    zeros, push = torch.zeros(3, 3), torch.full((3, 3), 0.5)
    rows = continuation_returns(
        _ZeroPolicy(), "Hopper-v5", obs_t, {"iql": zeros, "same": zeros, "push": push}, horizon=4
    )
    assert rows["same"]["minus_iql"] == 0.0 and rows["same"]["minus_iql_se"] == 0.0
    assert rows["push"]["minus_iql"] != 0.0
    # by hand, from the second state: the pushed action, then three zero actions
    sim = env.unwrapped
    env.reset(seed=0)
    s = obs_t[1].double().numpy()
    sim.set_state(np.concatenate([[0.0], s[:5]]), s[5:])
    total = 0.0
    for i, a in enumerate([push[1].numpy()] + [np.zeros(3)] * 3):
        _, reward, terminated, *_ = env.step(a)
        total += 0.99**i * reward
        if terminated:
            break
    hand = continuation_returns(_ZeroPolicy(), "Hopper-v5", obs_t[1:2], {"iql": push[1:2]}, 4)
    assert abs(hand["iql"]["return"] - total) < 1e-9
    # a policy followed by itself is its own continuation
    own = closed_loop_returns("Hopper-v5", obs_t, {"iql": _ZeroPolicy().act}, horizon=4)
    assert own["iql"]["return"] == rows["iql"]["return"]
    env.close()
