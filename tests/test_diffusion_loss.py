import pytest
import torch
from tensordict import TensorDict
from torchrl.objectives import SoftUpdate

from torchrl_aepo import DiffusionLoss, MLPNoisePredictor, VPSchedule, noise_prediction_module


def make_batch(n=64, obs_dim=4, action_dim=2, obs_key="observation", action_key="action"):
    return TensorDict(
        {obs_key: torch.randn(n, obs_dim), action_key: torch.rand(n, action_dim) * 2 - 1},
        batch_size=[n],
    )


def small_net(action_dim=2, obs_dim=4):
    return MLPNoisePredictor(action_dim, obs_dim, num_cells=(32, 32))


def test_output_keys_and_scalar_loss():
    loss = DiffusionLoss(small_net())
    out = loss(make_batch())
    assert list(out.keys()) == ["loss_diffusion"] == loss.out_keys
    assert out["loss_diffusion"].shape == ()
    assert loss.in_keys == ["observation", "action"]


class RecordingNet(torch.nn.Module):
    """Returns a fixed guess and records the inputs it was called with."""

    obs_dim, action_dim = 4, 2

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(2))
        self.calls = []

    def forward(self, noisy_action, time, observation):
        self.calls.append((noisy_action, time, observation))
        return torch.zeros_like(noisy_action) + self.bias


def test_loss_is_eq7_sum_over_dims_mean_over_batch():
    # With eps_theta == 0 the per-sample loss is ||eps||^2 and a_t = alpha a_0 + sigma eps,
    # so eps can be recovered from the recorded inputs and the loss checked exactly.
    net = RecordingNet()
    schedule = VPSchedule()
    loss = DiffusionLoss(net, schedule=schedule, reduction="none")
    batch = make_batch(n=512)
    torch.manual_seed(0)
    per_sample = loss(batch)["loss_diffusion"]
    noisy, time, obs = net.calls[-1]
    assert per_sample.shape == (512,) and time.shape == (512, 1)
    assert schedule.t_min <= time.min() and time.max() <= 1.0
    alpha, sigma = schedule.alpha_sigma(time)
    eps = (noisy - alpha * batch["action"]) / sigma
    torch.testing.assert_close(per_sample, eps.pow(2).sum(-1), rtol=1e-4, atol=1e-4)
    # the noise is standard normal: E||eps||^2 = d = 2
    assert abs(per_sample.mean().item() - 2.0) < 0.25
    torch.testing.assert_close(obs, batch["observation"])


def test_gradient_reaches_only_the_noise_network():
    net = small_net()
    other = torch.nn.Linear(3, 3)
    loss = DiffusionLoss(net)
    loss(make_batch())["loss_diffusion"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert all(p.grad is None for p in other.parameters())
    assert {id(p) for p in loss.parameters()} == {id(p) for p in net.parameters()}


def test_set_keys_reads_other_keys():
    loss = DiffusionLoss(noise_prediction_module(small_net()))  # a TensorDictModule is accepted
    loss.set_keys(observation="state", action=("data", "act"))
    batch = TensorDict(
        {"state": torch.randn(8, 4), "data": {"act": torch.rand(8, 2)}}, batch_size=[8]
    )
    assert torch.isfinite(loss(batch)["loss_diffusion"])
    assert loss.in_keys == ["state", ("data", "act")]


def test_missing_key_names_the_key():
    loss = DiffusionLoss(small_net())
    with pytest.raises(KeyError, match="'action'.*set_keys"):
        loss(make_batch(action_key="act"))


def test_wrong_action_dim_is_a_clear_error():
    loss = DiffusionLoss(small_net(action_dim=2))
    with pytest.raises(ValueError, match="'action' must have last dimension 2"):
        loss(make_batch(action_dim=3))


def test_mismatched_batch_shapes_are_a_clear_error():
    loss = DiffusionLoss(small_net())
    batch = TensorDict(
        {"observation": torch.randn(8, 4), "action": torch.rand(8, 2)}, batch_size=[]
    )
    batch["action"] = torch.rand(7, 2)
    with pytest.raises(ValueError, match="different batch shapes"):
        loss(batch)


def test_ema_weights_follow_soft_update_and_are_exported():
    net = small_net()
    loss = DiffusionLoss(net, ema=True)
    updater = SoftUpdate(loss, tau=0.1)
    optim = torch.optim.SGD(loss.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in loss.target_noise_network_params.items(True, True)}
    loss(make_batch())["loss_diffusion"].backward()
    optim.step()
    updater.step()
    for key, old in before.items():
        online = loss.noise_network_params.get(key).data
        expected = 0.9 * old + 0.1 * online
        torch.testing.assert_close(loss.target_noise_network_params.get(key), expected)
    ema_net = loss.sampling_network()
    assert not any(p.requires_grad for p in ema_net.parameters())
    torch.testing.assert_close(
        ema_net.mlp[0].weight, loss.target_noise_network_params["mlp", "0", "weight"]
    )
    # the export owns its storage: a further update of the loss does not change it
    snapshot = ema_net.mlp[0].weight.clone()
    updater.step()
    torch.testing.assert_close(ema_net.mlp[0].weight, snapshot)


def test_sampling_network_without_ema():
    loss = DiffusionLoss(small_net())
    copy = loss.sampling_network()
    torch.testing.assert_close(copy.mlp[0].weight, loss.noise_network.mlp[0].weight)
    with pytest.raises(ValueError, match="ema=True"):
        loss.sampling_network(ema=True)


def test_bad_reduction():
    with pytest.raises(ValueError, match="reduction"):
        DiffusionLoss(small_net(), reduction="avg")


# ------------------------------------------------------------------------ per-sample weights
def _given_time_and_noise(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch["diffusion_time"] = torch.rand(batch.shape[0], 1, generator=g) * 0.9 + 0.05
    batch["diffusion_noise"] = torch.randn(batch["action"].shape, generator=g)
    return batch


def test_weight_multiplies_each_sample_loss():
    loss = DiffusionLoss(small_net(), reduction="none")
    batch = _given_time_and_noise(make_batch())
    plain = loss(batch)["loss_diffusion"]
    weight = torch.rand(64) * 3
    for w in (weight, weight.unsqueeze(-1)):  # [B] or [B, 1]
        out = loss(batch.clone().set("diffusion_weight", w))["loss_diffusion"]
        torch.testing.assert_close(out, plain * weight)
    mean = DiffusionLoss(small_net(), reduction="mean")
    mean.load_state_dict(loss.state_dict())
    torch.testing.assert_close(
        mean(batch.clone().set("diffusion_weight", weight))["loss_diffusion"],
        (plain * weight).mean(),
    )
    loss.set_keys(weight="w")  # the key is configurable
    torch.testing.assert_close(loss(batch.clone().set("w", weight))["loss_diffusion"],
                               plain * weight)  # fmt: skip


@pytest.mark.parametrize(
    "weight, match",
    [(torch.ones(64, 1, 1), "shape"), (torch.ones(64, 2), "shape"),
     (-torch.ones(64), "negative or non-finite"), (torch.full((64,), float("nan")), "non-finite")],
)  # fmt: skip
def test_bad_weights_are_refused_naming_the_key(weight, match):
    loss = DiffusionLoss(small_net())
    with pytest.raises(ValueError, match=match) as err:
        loss(make_batch().set("diffusion_weight", weight))
    assert "diffusion_weight" in str(err.value)


def test_weighted_minimiser_is_the_tilted_gaussian():
    """Data N(0, v), weights exp(k a): the weighted loss is stationary at the exact noise
    predictor of the tilted data N(k v, v) (AEPO's target for a linear Q), and not at the
    untilted one's; with the weight inverted, stationary at neither."""
    v, k, n = 0.25, 1.0, 400_000
    g = torch.Generator().manual_seed(0)
    a0 = v**0.5 * torch.randn(n, 1, generator=g)
    t = torch.rand(n, 1, generator=g) * 0.9 + 0.05
    eps = torch.randn(n, 1, generator=g)
    sched = VPSchedule()
    alpha, sigma = sched.alpha_sigma(t)
    x = alpha * a0 + sigma * eps

    def gaussian_eps(mean):  # exact noise predictor of data N(mean, v)
        return sigma * (x - alpha * mean) / (alpha**2 * v + sigma**2)

    def gradient(prediction, weight):
        # d/dc and d/dd of mean(weight * (prediction + c + d x - eps)^2) at c = d = 0
        r = 2 * weight * (prediction - eps).squeeze(-1)
        return torch.stack([r.mean(), (r * x.squeeze(-1)).mean()]).abs()

    weight = torch.exp(k * a0.squeeze(-1))
    tilted, untilted = gaussian_eps(k * v), gaussian_eps(0.0)
    assert gradient(tilted, weight).max() < 0.01
    assert gradient(untilted, weight).max() > 0.1
    assert gradient(untilted, torch.ones(n)).max() < 0.01  # the unweighted loss: untilted
    assert gradient(tilted, 1 / weight).max() > 0.1
