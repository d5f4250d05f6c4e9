"""ISQLLoss and CQLCriticLoss (the critic ablations): hand-computed targets, keys, the loop."""

import math

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.objectives import SoftUpdate

from torchrl_aepo import TwinQNetwork, ValueNetwork
from torchrl_aepo.objectives import CQLCriticLoss, ExpectileLoss, ISQLLoss


class TwoHeads(nn.Module):
    """``Q(s, a) = w * (a, 2a)``: twin heads whose minimum is ``a`` for ``a >= 0``, ``2a`` below."""

    obs_dim, action_dim = 1, 1

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, observation, action):
        return self.w * torch.cat([action, 2 * action], -1)


class ConstantHeads(nn.Module):
    obs_dim, action_dim = 1, 1

    def __init__(self):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(0.7))

    def forward(self, observation, action):
        return self.c * torch.ones(*action.shape[:-1], 2)


class StateValue(nn.Module):
    obs_dim = 1

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, observation):
        return self.w * observation


def hand_batch():
    return TensorDict(
        {
            "observation": torch.tensor([[1.0], [2.0]]),
            "action": torch.tensor([[0.5], [1.0]]),
            "support": {"action": torch.tensor([[[0.0], [1.0]], [[-1.0], [0.5]]])},
            "next": {
                "observation": torch.tensor([[3.0], [4.0]]),
                "reward": torch.tensor([[1.0], [-1.0]]),
                "terminated": torch.tensor([[False], [True]]),
                # the supports at s' give target minima [0, 1] and [-2, 0.5]
                "support": {"action": torch.tensor([[[0.0], [1.0]], [[-1.0], [0.5]]])},
            },
        },
        batch_size=[2],
    )


def _with_online_weight(loss, w):
    """Set the online critic's weight to ``w``; the target copy keeps ``w = 1``."""
    with torch.no_grad():
        loss.qvalue_network_params["w"].fill_(w)
    return loss


def test_isql_target_is_the_softmax_weighted_target_min_hand_computed():
    loss = _with_online_weight(ISQLLoss(TwoHeads(), beta_q=2.0, discount=0.5), 3.0)
    out = loss(hand_batch())
    # transition 0: target minima at s' = [0, 1], softmax(2 * [0, 1]) = [1, e^2] / (1 + e^2)
    v0 = math.exp(2) / (1 + math.exp(2))
    y = torch.tensor([1.0 + 0.5 * v0, -1.0])  # transition 1 is terminal: y = r
    q = torch.tensor([[1.5, 3.0], [3.0, 6.0]])  # online heads (w = 3) at the dataset actions
    expected = ((q - y[:, None]) ** 2).sum(-1).mean()
    torch.testing.assert_close(out["loss_qvalue"], expected)
    torch.testing.assert_close(out["td_target_mean"], y.mean())
    # the alternatives this would catch
    wrong = {
        "beta_q=1": 1.0 + 0.5 * (math.e / (1 + math.e)),
        "softmin": 1.0 + 0.5 * (1 / (1 + math.exp(2))),
        "max over heads": 1.0 + 0.5 * (2 * math.exp(4) / (1 + math.exp(4))),
        "online critic": 1.0 + 0.5 * (3 * math.exp(6) / (1 + math.exp(6))),
    }
    for name, y0 in wrong.items():
        bad = ((q - torch.tensor([y0, -1.0])[:, None]) ** 2).sum(-1).mean()
        assert not torch.allclose(bad, expected), name
    unmasked = (
        1.0 + 0.5 * v0,
        -1.0 + 0.5 * (0.5 * math.exp(1) - 2 * math.exp(-4)) / (math.exp(1) + math.exp(-4)),
    )
    bad = ((q - torch.tensor(unmasked)[:, None]) ** 2).sum(-1).mean()
    assert not torch.allclose(bad, expected)
    # ESS of the weights: transition 0 as above, transition 1 computed likewise
    w1 = torch.softmax(torch.tensor([2 * -2.0, 2 * 0.5]), 0)
    w0 = torch.tensor([1 - v0, v0])
    ess = (1 / w0.pow(2).sum() + 1 / w1.pow(2).sum()) / 2
    torch.testing.assert_close(out["next_weight_ess"], ess)


def test_isql_beta_limits_are_mean_and_max_backups():
    batch = hand_batch()
    batch["next", "terminated"][:] = False
    mean = ISQLLoss(TwoHeads(), beta_q=0.0, discount=1.0)(batch)
    torch.testing.assert_close(mean["next_value_mean"], torch.tensor((0.5 + -0.75) / 2))
    greedy = ISQLLoss(TwoHeads(), beta_q=1e4, discount=1.0)(batch)
    torch.testing.assert_close(greedy["next_value_mean"], torch.tensor((1.0 + 0.5) / 2))


def test_value_baseline_regresses_the_target_min_at_the_dataset_action():
    loss = _with_online_weight(ISQLLoss(TwoHeads(), StateValue(), discount=0.5), 3.0)
    out = loss(hand_batch())
    # target (w = 1) min at a = [0.5, 1] -> [0.5, 1]; V(s) = s = [1, 2]
    torch.testing.assert_close(out["loss_value"], torch.tensor((0.25 + 1.0) / 2))
    assert ISQLLoss(TwoHeads())(hand_batch())["loss_value"] == 0


def test_cql_backup_and_penalty_hand_computed():
    loss = CQLCriticLoss(TwoHeads(), alpha=2.0, num_random=0, temperature=0.5, discount=0.5)
    out = _with_online_weight(loss, 3.0)(hand_batch())
    y = torch.tensor([1.0 + 0.5 * 1.0, -1.0])  # max backup over target minima [0, 1]; terminal
    q = torch.tensor([[1.5, 3.0], [3.0, 6.0]])
    torch.testing.assert_close(out["loss_qvalue"], ((q - y[:, None]) ** 2).sum(-1).mean())
    # penalty per head: T log sum_k exp(Q(s, a_k) / T) - Q(s, a) with the online critic (w = 3)
    lse = lambda *v: 0.5 * math.log(sum(math.exp(x / 0.5) for x in v))  # noqa: E731
    p0 = lse(0.0, 3.0) - 1.5 + lse(0.0, 6.0) - 3.0
    p1 = lse(-3.0, 1.5) - 3.0 + lse(-6.0, 3.0) - 6.0
    torch.testing.assert_close(out["cql_penalty"], torch.tensor((p0 + p1) / 2))
    torch.testing.assert_close(out["loss_cql"], torch.tensor(2.0 * (p0 + p1) / 2))
    # a wrong sign (Q(s, a) - logsumexp) would be negative; the soft max is >= the data's Q here
    assert out["cql_penalty"] > 0


def test_cql_penalty_counts_uniform_and_behaviour_actions():
    loss = CQLCriticLoss(ConstantHeads(), alpha=1.0, num_random=10, temperature=0.5)
    out = loss(hand_batch())
    # constant Q: per head T log(N + K) with N = 10 uniform + K = 2 supports; two heads
    torch.testing.assert_close(out["cql_penalty"], torch.tensor(2 * 0.5 * math.log(12)))


def test_cql_uniform_actions_lie_in_the_box():
    class Recorder(TwoHeads):
        seen = []

        def forward(self, observation, action):
            Recorder.seen.append(action.detach().clone())
            return super().forward(observation, action)

    loss = CQLCriticLoss(Recorder(), num_random=50, action_low=2.0, action_high=3.0)
    loss(hand_batch())
    sampled = [a for a in Recorder.seen if a.shape[-2:] == (52, 1)][0]
    assert ((sampled[:, :50] >= 2) & (sampled[:, :50] <= 3)).all()
    torch.testing.assert_close(sampled[:, 50:], hand_batch()["support", "action"])


def test_clear_errors():
    batch = hand_batch()
    del batch["next", "support"]
    with pytest.raises(KeyError, match="ISQLLoss expected the key.*support.*set_keys"):
        ISQLLoss(TwoHeads())(batch)
    batch = hand_batch()
    batch["next", "support", "action"] = torch.zeros(2, 1)
    with pytest.raises(ValueError, match="must have shape"):
        ISQLLoss(TwoHeads())(batch)
    batch = hand_batch()
    del batch["support"]
    with pytest.raises(KeyError, match="CQLCriticLoss expected the key"):
        CQLCriticLoss(TwoHeads())(batch)
    with pytest.raises(ValueError, match="beta_q"):
        ISQLLoss(TwoHeads(), beta_q=-1)
    with pytest.raises(ValueError, match="alpha"):
        CQLCriticLoss(TwoHeads(), alpha=-1)
    with pytest.raises(ValueError, match="num_random"):
        CQLCriticLoss(TwoHeads(), num_random=-1)
    with pytest.raises(ValueError, match="discount"):
        ISQLLoss(TwoHeads(), discount=2)


def test_set_keys_reads_other_support_keys():
    batch = hand_batch()
    batch["next_supports"] = batch.get(("next", "support", "action"))
    del batch["next", "support"]
    loss = ISQLLoss(TwoHeads(), beta_q=2.0, discount=0.5)
    loss.set_keys(next_support_action="next_supports")
    reference = ISQLLoss(TwoHeads(), beta_q=2.0, discount=0.5)(hand_batch())
    torch.testing.assert_close(loss(batch)["loss_qvalue"], reference["loss_qvalue"])


@pytest.mark.parametrize("name", ["expectile", "isql", "cql"])
def test_drops_into_the_expectile_training_loop(name):
    # The loop of test_expectile.py: replay buffer -> loss -> sum of loss_* -> Adam -> SoftUpdate.
    torch.manual_seed(0)
    n, k, s, d = 64, 4, 3, 2
    data = TensorDict(
        {
            "observation": torch.randn(n, s),
            "action": torch.rand(n, d) * 2 - 1,
            "support": {"action": torch.rand(n, k, d) * 2 - 1},
            "next": {
                "observation": torch.randn(n, s),
                "reward": torch.randn(n, 1),
                "terminated": torch.rand(n, 1) < 0.1,
                "support": {"action": torch.rand(n, k, d) * 2 - 1},
            },
        },
        batch_size=[n],
    )
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(n), batch_size=16)
    rb.extend(data)
    qnet, vnet = TwinQNetwork(s, d, num_cells=(16,)), ValueNetwork(s, num_cells=(16,))
    loss = {
        "expectile": lambda: ExpectileLoss(qnet, vnet),
        "isql": lambda: ISQLLoss(qnet, vnet),
        "cql": lambda: CQLCriticLoss(qnet, vnet),
    }[name]()
    updater = SoftUpdate(loss, tau=0.1)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-2)
    target0 = loss.target_qvalue_network_params.clone()
    online0 = loss.qvalue_network_params.clone()
    for _ in range(5):
        out = loss(rb.sample())
        total = sum(v for key, v in out.items() if key.startswith("loss_"))
        optim.zero_grad()
        total.backward()
        optim.step()
        updater.step()
    assert torch.isfinite(total)
    assert not (loss.qvalue_network_params == online0).all()
    assert not (loss.target_qvalue_network_params == target0).all()
    assert "loss_qvalue" in out and "loss_value" in out
