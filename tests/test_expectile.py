"""ExpectileLoss (Eq. 27): hand-computed losses, target critic, Polyak updates, keys."""

import copy

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.objectives import SoftUpdate

from torchrl_aepo import TwinQNetwork, ValueNetwork, qvalue_module, value_module
from torchrl_aepo.objectives import ExpectileLoss


class HeadsFromAction(nn.Module):
    """``Q_i(s, a) = w * a_i`` for i = 0, 1: two distinct heads with hand-checkable values."""

    obs_dim, action_dim = 1, 2

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, observation, action):
        return self.w * action


class ValueFromState(nn.Module):
    """``V(s) = w * s_0``."""

    obs_dim = 1

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, observation):
        return self.w * observation


def hand_batch():
    # target min over heads: [2, -1, 1.5, 0]; V(s): [1, 1, 1, 1] -> u = [1, -2, 0.5, -1]
    action = torch.tensor([[2.0, 3.0], [-1.0, 4.0], [5.0, 1.5], [0.0, 0.0]])
    observation = torch.ones(4, 1)
    return TensorDict(
        {
            "observation": observation,
            "action": action,
            "next": {
                "observation": torch.tensor([[2.0], [3.0], [-1.0], [0.5]]),
                "reward": torch.tensor([[1.0], [0.0], [2.0], [-1.0]]),
                "terminated": torch.tensor([[False], [True], [False], [True]]),
                "done": torch.tensor([[True], [True], [False], [True]]),
            },
        },
        batch_size=[4],
    )


def test_expectile_weighting_uses_target_twin_min_hand_computed():
    loss = ExpectileLoss(HeadsFromAction(), ValueFromState(), expectile=0.8, discount=0.9)
    out = loss(hand_batch())
    # u = [1, -2, 0.5, -1]; weights tau=0.8 for u>0, 0.2 for u<0:
    # [0.8*1, 0.2*4, 0.8*0.25, 0.2*1] = [0.8, 0.8, 0.2, 0.2] -> mean 0.5
    torch.testing.assert_close(out["loss_value"], torch.tensor(0.5))
    # swapped weights would give 4.25 / 4, max over heads [3, 4, 5, 0] would give other values
    torch.testing.assert_close(out["target_qvalue_mean"], torch.tensor(2.5 / 4))
    torch.testing.assert_close(out["value_mean"], torch.tensor(1.0))
    torch.testing.assert_close(out["qvalue_mean"], torch.tensor(2.5 / 4))


def test_td_target_masks_terminal_transitions_hand_computed():
    loss = ExpectileLoss(HeadsFromAction(), ValueFromState(), expectile=0.8, discount=0.9)
    batch = hand_batch()
    out = loss(batch)
    # y = r + 0.9 (1 - terminated) V(s'): [1 + 1.8, 0, 2 - 0.9, -1] = [2.8, 0, 1.1, -1]
    y = torch.tensor([2.8, 0.0, 1.1, -1.0])
    q = batch["action"]
    expected = ((q - y[:, None]) ** 2).sum(-1).mean()  # both heads summed, batch mean
    torch.testing.assert_close(out["loss_qvalue"], expected)
    torch.testing.assert_close(out["td_target_mean"], y.mean())

    # done = terminated or truncated: the first transition is cut too -> y_0 = 1
    loss.set_keys(done=("next", "done"))
    y_done = torch.tensor([1.0, 0.0, 1.1, -1.0])
    torch.testing.assert_close(
        loss(batch)["loss_qvalue"], ((q - y_done[:, None]) ** 2).sum(-1).mean()
    )


def test_reduction_none_and_split_losses_match_forward():
    loss = ExpectileLoss(HeadsFromAction(), ValueFromState(), expectile=0.8, reduction="none")
    batch = hand_batch()
    out = loss(batch)
    assert out["loss_value"].shape == (4,) and out["loss_qvalue"].shape == (4,)
    torch.testing.assert_close(out["loss_value"], torch.tensor([0.8, 0.8, 0.2, 0.2]))
    torch.testing.assert_close(loss.value_loss(batch)["loss_value"], out["loss_value"])
    torch.testing.assert_close(loss.qvalue_loss(batch)["loss_qvalue"], out["loss_qvalue"])


def make_transitions(n=256, obs_dim=5, action_dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        {
            "observation": torch.randn(n, obs_dim, generator=g),
            "action": torch.rand(n, action_dim, generator=g) * 2 - 1,
            "next": {
                "observation": torch.randn(n, obs_dim, generator=g),
                "reward": torch.randn(n, 1, generator=g),
                "terminated": torch.rand(n, 1, generator=g) < 0.1,
            },
        },
        batch_size=[n],
    )


def small_critics(obs_dim=5, action_dim=2):
    torch.manual_seed(0)
    return (
        TwinQNetwork(obs_dim, action_dim, num_cells=(32, 32)),
        ValueNetwork(obs_dim, num_cells=(32, 32)),
    )


def target_min_q(loss, batch):
    """Reference: a separate copy of the critic loaded with the target parameters."""
    reference = copy.deepcopy(loss.qvalue_network)
    reference.load_state_dict(dict(loss.target_qvalue_network_params.flatten_keys(".").items()))
    with torch.no_grad():
        return reference(batch["observation"], batch["action"]).min(-1)[0]


def test_target_params_follow_the_polyak_rule_exactly():
    qnet, vnet = small_critics()
    loss = ExpectileLoss(qnet, vnet)
    updater = SoftUpdate(loss, tau=0.1)
    optim = torch.optim.SGD(loss.parameters(), lr=0.1)
    batch = make_transitions()
    view = loss.target_qvalue_network()
    assert list(view.parameters()) == []

    out = loss(batch)
    optim.zero_grad()
    (out["loss_qvalue"] + out["loss_value"]).backward()
    old_target = loss.target_qvalue_network_params.clone()
    optim.step()
    online = loss.qvalue_network_params
    # the optimizer moved the online parameters only
    for key, value in old_target.items(True, True):
        assert not torch.equal(online[key], value), key
        assert torch.equal(loss.target_qvalue_network_params[key], value)
    updater.step()
    for key, value in old_target.items(True, True):
        new = loss.target_qvalue_network_params[key]
        torch.testing.assert_close(new, 0.9 * value + 0.1 * online[key], rtol=1e-6, atol=1e-7)
        assert not torch.equal(new, online[key])
    # the cached view used by the loss and a view made earlier both follow the update
    torch.testing.assert_close(loss(batch)["target_qvalue_mean"], target_min_q(loss, batch).mean())
    torch.testing.assert_close(
        view(batch["observation"], batch["action"]).min(-1)[0], target_min_q(loss, batch)
    )


def test_gradients_reach_only_the_trained_network_of_each_loss():
    qnet, vnet = small_critics()
    loss = ExpectileLoss(qnet, vnet)
    out = loss(make_transitions())
    out["loss_value"].backward(retain_graph=True)
    assert all(p.grad is None for p in qnet.parameters())
    assert all(p.grad is not None for p in vnet.parameters())
    vnet.zero_grad(set_to_none=True)
    out["loss_qvalue"].backward()
    assert all(p.grad is None for p in vnet.parameters())
    assert all(p.grad is not None for p in qnet.parameters())
    assert {id(p) for p in loss.parameters()} == {
        id(p) for p in [*qnet.parameters(), *vnet.parameters()]
    }


def test_moving_or_loading_keeps_the_target_view_consistent():
    qnet, vnet = small_critics()
    loss = ExpectileLoss(qnet, vnet)
    SoftUpdate(loss, tau=0.005)
    batch = make_transitions()
    loss(batch)  # builds the cached target view
    other = ExpectileLoss(*small_critics())
    with torch.no_grad():
        for value in other.target_qvalue_network_params.values(True, True):
            value.add_(0.5)
    loss.load_state_dict(other.state_dict())
    torch.testing.assert_close(loss(batch)["target_qvalue_mean"], target_min_q(loss, batch).mean())
    loss.double()  # replaces the parameter tensors: the cached view must be rebuilt
    batch64 = batch.double()
    torch.testing.assert_close(
        loss(batch64)["target_qvalue_mean"], target_min_q(loss, batch64).mean()
    )


def test_set_keys_and_tensordict_modules():
    qnet, vnet = small_critics()
    loss = ExpectileLoss(qvalue_module(qnet), value_module(vnet))
    loss.set_keys(
        observation="state",
        action=("data", "act"),
        reward="r",
        done="d",
        next_observation="next_state",
    )
    batch = make_transitions()
    renamed = TensorDict(
        {
            "state": batch["observation"],
            "data": {"act": batch["action"]},
            "r": batch["next", "reward"].squeeze(-1),  # [B] is accepted too
            "d": batch["next", "terminated"],
            "next_state": batch["next", "observation"],
        },
        batch_size=[256],
    )
    reference = ExpectileLoss(qnet, vnet)
    for key in ("loss_qvalue", "loss_value"):
        torch.testing.assert_close(loss(renamed)[key], reference(batch)[key])
    assert loss.in_keys == ["state", ("data", "act"), "r", "d", "next_state"]


def test_clear_errors():
    qnet, vnet = small_critics()
    loss = ExpectileLoss(qnet, vnet)
    batch = make_transitions()
    with pytest.raises(KeyError, match="terminated.*set_keys"):
        loss(batch.exclude(("next", "terminated")))
    with pytest.raises(ValueError, match="last dimension 2"):
        loss(batch.set("action", torch.zeros(256, 3)))
    with pytest.raises(ValueError, match="reward"):
        loss(make_transitions().set(("next", "reward"), torch.zeros(256, 2)))
    with pytest.raises(ValueError, match="expectile"):
        ExpectileLoss(qnet, vnet, expectile=1.0)
    with pytest.raises(ValueError, match="loss_function"):
        ExpectileLoss(qnet, vnet, loss_function="huber")


def test_training_loop_with_a_torchrl_replay_buffer():
    qnet, vnet = small_critics()
    loss = ExpectileLoss(qnet, vnet, expectile=0.7)
    updater = SoftUpdate(loss, tau=0.005)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-3)
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(1000), batch_size=64)
    rb.extend(make_transitions(n=1000))
    first = None
    for _ in range(30):
        out = loss(rb.sample())
        total = out["loss_qvalue"] + out["loss_value"]
        optim.zero_grad()
        total.backward()
        optim.step()
        updater.step()
        first = total.item() if first is None else first
        assert all(torch.isfinite(value) for value in out.values())
    assert total.item() < first
