"""AnalyticEnergyLoss (Eqs. 15-26) against the exact Gaussian oracle of aepo-math §5.5."""

import pytest
import torch
from oracles import (
    ExactLinearEnergy,
    GaussianNoiseOracle,
    LinearQ,
    exact_gamma,
    exact_posterior_mean,
    exact_posterior_variance,
)
from tensordict import TensorDict
from torch import nn
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.objectives import SoftUpdate
from torchrl.objectives.utils import _reduce

from torchrl_aepo import (
    DiffusionLoss,
    EnergyNetwork,
    MLPNoisePredictor,
    TwinQNetwork,
    ValueNetwork,
    VPSchedule,
    energy_module,
)
from torchrl_aepo.objectives import (
    AnalyticEnergyLoss,
    EnergyLossBase,
    ExpectileLoss,
    PosteriorStatistics,
)

C, V, Q, BETA, OBS_DIM = (0.2, -0.1, 0.3), 0.5, (1.0, -0.5, 0.8), 2.0, 2
SCHEDULE = VPSchedule()
TIMES = torch.cat([torch.tensor([1e-3, 3e-3, 0.01, 0.03]), torch.linspace(0.06, 1.0, 16)])


def exact_statistics(num_times=2001):
    grid = torch.linspace(SCHEDULE.t_min, SCHEDULE.t_max, num_times, dtype=torch.float64)
    one_minus_gamma = 1.0 - exact_gamma(SCHEDULE, grid, V)
    variance = exact_posterior_variance(SCHEDULE, grid, V)
    return PosteriorStatistics(one_minus_gamma, one_minus_gamma, variance, v_max=V)


@pytest.fixture(scope="module")
def estimated_statistics():
    g = torch.Generator().manual_seed(0)
    actions = torch.tensor(C) + V**0.5 * torch.randn(50_000, 3, generator=g)
    return PosteriorStatistics.estimate(
        GaussianNoiseOracle(C, V, OBS_DIM),
        torch.randn(50_000, OBS_DIM, generator=g),
        actions,
        num_times=201,
        samples_per_time=16384,
        generator=g,
    )


def oracle_loss(statistics, critic=None, **kwargs):
    kwargs.setdefault("clip_posterior_mean", None)
    return AnalyticEnergyLoss(
        EnergyNetwork(3, OBS_DIM, num_cells=(64, 64)),
        GaussianNoiseOracle(C, V, OBS_DIM),
        critic if critic is not None else LinearQ(Q, OBS_DIM),
        statistics,
        beta=BETA,
        **kwargs,
    )


def posterior_draws(t, n, generator):
    """For one (a_t, t): n draws a_0 ~ exact posterior and the noise that maps a_0 to a_t."""
    t = torch.full((n, 1), float(t))
    alpha, sigma = SCHEDULE.alpha_sigma(t[:1])
    c = torch.tensor(C)
    a_t = alpha * c + (alpha**2 * V + sigma**2).sqrt() * torch.randn(1, 3, generator=generator)
    mean = exact_posterior_mean(SCHEDULE, t[:1], a_t, c, V)
    std = exact_posterior_variance(SCHEDULE, t[:1], V).sqrt()
    a0 = mean + std * torch.randn(n, 3, generator=generator)
    noise = (a_t - alpha * a0) / sigma
    return torch.randn(n, OBS_DIM, generator=generator), a0, t, noise, a_t.expand(n, 3)


@pytest.mark.parametrize("posterior", [1, 2])
@pytest.mark.parametrize("statistics", ["exact", "estimated"])
def test_target_conditional_mean_is_the_exact_energy(posterior, statistics, estimated_statistics):
    stats = exact_statistics() if statistics == "exact" else estimated_statistics
    loss = oracle_loss(stats, posterior=posterior)
    energy = ExactLinearEnergy(C, V, Q, BETA, OBS_DIM)
    g = torch.Generator().manual_seed(1)
    # exact tables: float32 round-off only; estimated ones: their Monte-Carlo error
    # (beta^2/2 ||q||^2 = 3.8 times the variance error of test_posterior's tolerances)
    rtol, atol = (1e-4, 1e-4) if statistics == "exact" else (0.02, 0.015)
    for t in TIMES.tolist():
        observation, a0, time, noise, a_t = posterior_draws(t, 512, g)
        target = loss.energy_target(observation, a0, time, noise)
        torch.testing.assert_close(target["noisy_action"], a_t, rtol=1e-4, atol=1e-5)
        exact = energy(a_t, time, observation)
        # E[y | s, a_t, t] = beta q.mu + beta^2/2 sigma^2 ||q||^2 ...
        torch.testing.assert_close(target["y"].mean(0), exact[0], rtol=rtol, atol=atol)
        # ... and for linear Q the control variate beta g.(mu - a_0) makes y constant in a_0
        # (a sign error in that term leaves the mean unchanged but not the spread)
        torch.testing.assert_close(target["y"], exact, rtol=rtol, atol=atol)


def test_target_uses_the_minimum_head_and_its_action_gradient():
    class TwoLinearHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Parameter(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))

        def forward(self, observation, action):
            return action @ self.q.T

    loss = oracle_loss(exact_statistics(11), critic=TwoLinearHeads(), posterior=2)
    a0 = torch.tensor([[1.0, 0.1, 0.0], [0.1, 1.0, 0.0]])  # head 1 is min, then head 0
    time, noise = torch.full((2, 1), 0.5), torch.randn(2, 3)
    target = loss.energy_target(torch.zeros(2, OBS_DIM), a0, time, noise)
    torch.testing.assert_close(target["q"], torch.tensor([[0.2], [0.1]]))
    torch.testing.assert_close(target["grad"], torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]]))
    g, mu, var = target["grad"], target["mu"], target["variance"]
    expected = (
        BETA * target["q"]
        + BETA * (g * (mu - a0)).sum(-1, keepdim=True)
        + 0.5 * BETA**2 * var * g.pow(2).sum(-1, keepdim=True)
    )
    torch.testing.assert_close(target["y"], expected)


def test_trained_energy_network_approaches_the_exact_energy():
    torch.manual_seed(0)
    loss = oracle_loss(exact_statistics())
    steps = 1000
    optim = torch.optim.Adam(loss.parameters(), lr=3e-3)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optim, steps)
    g = torch.Generator().manual_seed(2)

    def batch(n):
        action = torch.tensor(C) + V**0.5 * torch.randn(n, 3, generator=g)
        return TensorDict(
            {"observation": torch.randn(n, OBS_DIM, generator=g), "action": action}, [n]
        )

    for _ in range(steps):
        out = loss(batch(256))
        optim.zero_grad()
        out["loss_energy"].backward()
        optim.step()
        decay.step()

    data = batch(8192)
    time = SCHEDULE.sample_time((8192, 1), generator=g)
    a_t = SCHEDULE.add_noise(data["action"], time, torch.randn(8192, 3, generator=g))
    a_t.requires_grad_(True)
    learned = loss.energy_network(a_t, time, data["observation"])
    exact = ExactLinearEnergy(C, V, Q, BETA, OBS_DIM)(a_t, time, data["observation"])
    (grad_learned,) = torch.autograd.grad(learned.sum(), a_t)
    (grad_exact,) = torch.autograd.grad(exact.sum(), a_t)
    energy_error = ((learned - exact).norm() / exact.norm()).item()
    guided = time.squeeze(-1) < 0.6  # at larger t the exact gradient beta q alpha_t v / D -> 0
    grad_error = ((grad_learned - grad_exact)[guided].norm() / grad_exact[guided].norm()).item()
    assert energy_error < 0.06, energy_error  # measured ~0.025 (1000 steps, 64x64 SiLU)
    assert grad_error < 0.2, grad_error  # measured ~0.08


def small_real_networks(obs_dim=4, action_dim=2):
    torch.manual_seed(0)
    return (
        EnergyNetwork(action_dim, obs_dim, num_cells=(32, 32)),
        MLPNoisePredictor(action_dim, obs_dim, num_cells=(32, 32)),
        TwinQNetwork(obs_dim, action_dim, num_cells=(32, 32)),
    )


def transitions(n=256, obs_dim=4, action_dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        {
            "observation": torch.randn(n, obs_dim, generator=g),
            "action": torch.rand(n, action_dim, generator=g) * 2 - 1,
            "next": {
                "observation": torch.randn(n, obs_dim, generator=g),
                "reward": torch.randn(n, 1, generator=g),
                "terminated": torch.rand(n, 1, generator=g) < 0.05,
            },
        },
        batch_size=[n],
    )


def quick_statistics(noise_network, data):
    return PosteriorStatistics.estimate(
        noise_network, data["observation"], data["action"], num_times=5, samples_per_time=32
    )


def test_no_gradient_leaks_into_the_frozen_networks():
    energy, noise, critic = small_real_networks()
    data = transitions()
    loss = AnalyticEnergyLoss(energy, noise, critic, quick_statistics(noise, data))
    loss(data)["loss_energy"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in energy.parameters())
    assert all(p.grad is None for p in [*noise.parameters(), *critic.parameters()])
    assert {id(p) for p in loss.parameters()} == {id(p) for p in energy.parameters()}
    assert {key.split(".")[0] for key in loss.state_dict()} == {
        "energy_network_params",
        "posterior_statistics",
    }


def test_frozen_networks_follow_in_place_updates_of_their_sources():
    energy, noise, critic = small_real_networks()
    data = transitions()
    critic_loss = ExpectileLoss(critic, ValueNetwork(4, num_cells=(32, 32)))
    updater = SoftUpdate(critic_loss, tau=0.5)
    loss = AnalyticEnergyLoss(
        energy, noise, critic_loss.target_qvalue_network(), quick_statistics(noise, data)
    )
    # one optimizer step on the noise network, one Polyak step on the target critic
    diffusion = DiffusionLoss(noise)
    optim = torch.optim.SGD([*noise.parameters(), *critic.parameters()], lr=0.5)
    (diffusion(data)["loss_diffusion"] + critic_loss(data)["loss_qvalue"]).backward()
    optim.step()
    updater.step()

    obs, a0 = data["observation"], data["action"]
    time, eps = torch.rand(256, 1) * 0.5 + 0.01, torch.randn(256, 2)
    target = loss.energy_target(obs, a0, time, eps)
    alpha, sigma = SCHEDULE.alpha_sigma(time)
    a_t = alpha * a0 + sigma * eps
    with torch.no_grad():
        mu = ((a_t - sigma * noise(a_t, time, obs)) / alpha).clamp(-1, 1)
        q_target = critic_loss.target_qvalue_network()(obs, a0).min(-1, keepdim=True)[0]
        q_online = critic(obs, a0).min(-1, keepdim=True)[0]
    torch.testing.assert_close(target["mu"], mu)
    torch.testing.assert_close(target["q"], q_target)
    assert not torch.allclose(target["q"], q_online)


def test_clip_and_clamp_diagnostics():
    stats = exact_statistics(101)
    data = TensorDict(
        {"observation": torch.randn(4096, OBS_DIM), "action": torch.randn(4096, 3)}, [4096]
    )
    stats.v_max.fill_(0.1)  # binds for t above ~0.33
    loss = oracle_loss(stats, clip_posterior_mean=(-0.3, 0.3))
    torch.manual_seed(5)
    out = loss(data)
    torch.manual_seed(5)
    time = SCHEDULE.sample_time((4096, 1))
    noise = torch.randn(4096, 3)
    reference = oracle_loss(exact_statistics(101)).energy_target(
        data["observation"], data["action"], time, noise
    )
    clipped = (reference["mu"].abs() > 0.3).float().mean()
    clamped = (reference["variance"] > 0.1).float().mean()
    assert 0.05 < clipped < 0.95 and 0.05 < clamped < 0.95
    torch.testing.assert_close(out["mean_clip_fraction"], clipped)
    torch.testing.assert_close(out["variance_clamp_fraction"], clamped)
    torch.testing.assert_close(
        out["posterior_variance_mean"], reference["variance"].clamp(max=0.1).mean()
    )


def test_reduction_keys_and_errors():
    energy, noise, critic = small_real_networks()
    data = transitions()
    stats = quick_statistics(noise, data)
    loss = AnalyticEnergyLoss(energy_module(energy), noise, critic, stats, reduction="none")
    out = loss(data)
    assert out["loss_energy"].shape == (256,)
    assert set(out.keys()) == set(loss.out_keys)
    assert loss.in_keys == ["observation", "action"]
    loss.set_keys(observation="state", action=("data", "act"))
    renamed = TensorDict(
        {"state": data["observation"], "data": {"act": data["action"]}}, batch_size=[256]
    )
    assert loss(renamed)["loss_energy"].shape == (256,)
    with pytest.raises(KeyError, match="act.*set_keys"):
        loss(data)
    with pytest.raises(ValueError, match="last dimension 2"):
        loss(renamed.set(("data", "act"), torch.zeros(256, 3)))
    with pytest.raises(ValueError, match="posterior must be 1 or 2"):
        AnalyticEnergyLoss(energy, noise, critic, stats, posterior=3)
    with pytest.raises(ValueError, match="estimated with"):
        AnalyticEnergyLoss(energy, noise, critic, stats, schedule=VPSchedule(beta_1=10.0))
    with pytest.raises(TypeError, match="PosteriorStatistics"):
        AnalyticEnergyLoss(energy, noise, critic, {"gamma": None})


class RegressionEnergyLoss(EnergyLossBase):
    """Swap-in check of the shared interface: the 'MSE' energy target beta Q(s, a_0)."""

    def __init__(self, energy_network, noise_network, qvalue_network, *, beta=3.0):
        super().__init__(energy_network, noise_network, qvalue_network)
        self.beta = beta

    def forward(self, tensordict):
        observation, action = self._read_batch(tensordict)
        time, noise = self._sample_time_and_noise(action)
        noisy_action = self.schedule.add_noise(action, time, noise)
        qvalue, _ = self._critic_value_and_grad(observation, action)
        per_sample, _ = self._regress(observation, noisy_action, time, self.beta * qvalue)
        return TensorDict({"loss_energy": _reduce(per_sample, self.reduction)}, [])


@pytest.mark.parametrize("energy_loss_type", ["analytic", "regression"])
def test_joint_training_loop_with_a_torchrl_replay_buffer(energy_loss_type):
    energy, noise, critic = small_real_networks()
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(2000), batch_size=128)
    rb.extend(transitions(n=2000))
    diffusion = DiffusionLoss(noise)
    critic_loss = ExpectileLoss(critic, ValueNetwork(4, num_cells=(32, 32)))
    updater = SoftUpdate(critic_loss, tau=0.005)
    stats = PosteriorStatistics.from_replay_buffer(noise, rb, num_times=5, samples_per_time=64)
    if energy_loss_type == "analytic":
        energy_loss = AnalyticEnergyLoss(
            energy, noise, critic_loss.target_qvalue_network(), stats, beta=3.0
        )
    else:
        energy_loss = RegressionEnergyLoss(energy, noise, critic_loss.target_qvalue_network())
    optims = [
        torch.optim.Adam(module.parameters(), lr=1e-3)
        for module in (diffusion, critic_loss, energy_loss)
    ]
    for step in range(6):
        batch = rb.sample()
        losses = [
            diffusion(batch)["loss_diffusion"],
            sum(critic_loss(batch).select("loss_qvalue", "loss_value").values()),
            energy_loss(batch)["loss_energy"],
        ]
        for optim, value in zip(optims, losses, strict=True):
            optim.zero_grad()
            value.backward()
            optim.step()
            assert torch.isfinite(value)
        updater.step()
        if step == 2 and energy_loss_type == "analytic":
            refreshed = PosteriorStatistics.from_replay_buffer(
                noise, rb, num_times=7, samples_per_time=64
            )
            energy_loss.update_posterior_statistics(refreshed)
            assert energy_loss.posterior_statistics.num_times == 7
    if energy_loss_type == "analytic":
        restored = AnalyticEnergyLoss(*small_real_networks(), stats)
        restored.load_state_dict(energy_loss.state_dict())
        assert restored.posterior_statistics.num_times == 7
        for key, value in energy_loss.energy_network_params.items(True, True):
            torch.testing.assert_close(restored.energy_network_params[key], value)


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_variance_weight_scales_only_the_second_order_term(weight):
    """Exact linear-Q oracle: y = beta q.mu + lambda (beta^2/2) sigma^2 ||q||^2 for every a_0."""
    loss = oracle_loss(exact_statistics(), posterior=1, variance_weight=weight)
    g = torch.Generator().manual_seed(3)
    q = torch.tensor(Q)
    for t in (0.01, 0.3, 0.9):
        observation, a0, time, noise, a_t = posterior_draws(t, 256, g)
        target = loss.energy_target(observation, a0, time, noise)
        mu = exact_posterior_mean(SCHEDULE, time, a_t, torch.tensor(C), V)
        variance = exact_posterior_variance(SCHEDULE, time, V)
        expected = BETA * mu @ q[:, None] + weight * 0.5 * BETA**2 * variance * q.pow(2).sum()
        torch.testing.assert_close(target["y"], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("weight", [-0.1, 1.5, "1"])
def test_variance_weight_outside_unit_interval_is_refused(weight):
    with pytest.raises(ValueError, match="variance_weight must be in"):
        oracle_loss(exact_statistics(11), variance_weight=weight)
