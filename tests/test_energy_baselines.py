"""MSE / DPS / CEP / log-mean-exp energy losses: targets, keys, shapes, frozen networks, support sampling."""

from __future__ import annotations

import math

import pytest
import torch
from oracles import GaussianNoiseOracle, LinearQ, exact_posterior_mean
from tensordict import TensorDict
from torch import nn

from torchrl_aepo.diffusion.schedule import VPSchedule
from torchrl_aepo.diffusion.solver import DPMSolver
from torchrl_aepo.nets import EnergyNetwork, MLPNoisePredictor, TwinQNetwork, energy_module
from torchrl_aepo.objectives.energy_baselines import (
    CEPEnergyLoss,
    DPSEnergyLoss,
    LogMeanExpEnergyLoss,
    MSEEnergyLoss,
    SupportPosteriorEnergyLoss,
    sample_support_actions,
)

OBS, ACT, K = 3, 2, 5
LOSSES = (
    MSEEnergyLoss,
    DPSEnergyLoss,
    CEPEnergyLoss,
    LogMeanExpEnergyLoss,
    SupportPosteriorEnergyLoss,
)


def _networks(seed: int = 0) -> tuple[nn.Module, nn.Module, nn.Module]:
    torch.manual_seed(seed)
    return (
        EnergyNetwork(ACT, OBS, num_cells=(16, 16)),
        MLPNoisePredictor(ACT, OBS, num_cells=(16, 16)),
        TwinQNetwork(OBS, ACT, num_cells=(16, 16)),
    )


def _batch(batch_shape: tuple[int, ...] = (6,), seed: int = 1) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        {
            "observation": torch.randn(*batch_shape, OBS, generator=g),
            "action": torch.rand(*batch_shape, ACT, generator=g) * 2 - 1,
            ("support", "action"): torch.rand(*batch_shape, K, ACT, generator=g) * 2 - 1,
        },
        batch_size=batch_shape,
    )


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_outputs_shapes_and_reduction(loss_cls):
    energy, noise, critic = _networks()
    loss = loss_cls(energy, noise, critic, beta=2.0)
    out = loss(_batch((4, 3)))
    assert set(loss.out_keys) == set(out.keys())
    assert out["loss_energy"].shape == ()
    assert torch.isfinite(out["loss_energy"])
    assert loss.beta == 2.0
    per_sample = loss_cls(energy, noise, critic, reduction="none")(_batch((4, 3)))
    assert per_sample["loss_energy"].shape == (4, 3)


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_only_the_energy_network_is_trained(loss_cls):
    energy, noise, critic = _networks()
    loss = loss_cls(energy, noise, critic)
    assert sum(p.numel() for p in loss.parameters()) == sum(p.numel() for p in energy.parameters())
    loss(_batch())["loss_energy"].backward()
    assert all(p.grad is None for p in (*noise.parameters(), *critic.parameters()))
    grads = [p.grad for p in loss.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_accepts_tensordict_module_and_custom_keys(loss_cls):
    energy, noise, critic = _networks()
    loss = loss_cls(energy_module(energy), noise, critic)
    batch = _batch()
    renamed = TensorDict(
        {
            "obs": batch["observation"],
            ("data", "a0"): batch["action"],
            "supports": batch["support", "action"],
        },
        batch_size=batch.batch_size,
    )
    keys = {"observation": "obs", "action": ("data", "a0")}
    if loss_cls is CEPEnergyLoss:
        keys = {"observation": "obs", "support_action": "supports"}
    if loss_cls is SupportPosteriorEnergyLoss:
        keys["support_action"] = "supports"
    loss.set_keys(**keys)
    assert torch.isfinite(loss(renamed)["loss_energy"])
    with pytest.raises(KeyError, match="set_keys"):
        loss(TensorDict({}, batch_size=[6]))


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_rejects_non_positive_beta(loss_cls):
    with pytest.raises(ValueError, match="beta"):
        loss_cls(*_networks(), beta=0.0)


def test_mse_target_is_beta_q_of_the_clean_action():
    energy, noise, critic = _networks()
    loss = MSEEnergyLoss(energy, noise, critic, beta=3.0)
    batch = _batch()
    obs, a0 = batch["observation"], batch["action"]
    t, eps = torch.full((6, 1), 0.4), torch.randn(6, ACT)
    target = loss.energy_target(obs, a0, t, eps)
    torch.testing.assert_close(target["y"], 3.0 * critic(obs, a0).min(-1, keepdim=True)[0])
    torch.testing.assert_close(target["noisy_action"], VPSchedule().add_noise(a0, t, eps))


def test_mse_loss_is_the_squared_error_to_its_target():
    class Zero(nn.Module):
        """An energy network that outputs 0 (one parameter, so that it can be optimised)."""

        action_dim, obs_dim = ACT, OBS

        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(()))

        def forward(self, noisy_action, time, observation):
            return self.bias * noisy_action[..., :1]

    _, noise, critic = _networks()
    loss = MSEEnergyLoss(Zero(), noise, critic, beta=1.5, reduction="none")
    batch = _batch()
    expected = (1.5 * critic(batch["observation"], batch["action"]).min(-1)[0]).pow(2)
    torch.testing.assert_close(loss(batch)["loss_energy"], expected)


class _Constant(nn.Module):
    """An energy network with one output ``c`` for every input (an optimisable parameter)."""

    action_dim, obs_dim = ACT, OBS

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(value), dtype=torch.float64))

    def forward(self, noisy_action, time, observation):
        return self.value.expand(*noisy_action.shape[:-1], 1)


def _log_mean_exp_gradient(value: float, batch: TensorDict, critic: nn.Module) -> float:
    """d/dc of the mean log-mean-exp loss of the constant energy ``c = value``."""
    noise = MLPNoisePredictor(ACT, OBS, num_cells=(8,)).double()
    loss = LogMeanExpEnergyLoss(_Constant(value), noise, critic, beta=2.0)
    loss(batch)["loss_energy"].backward()
    (param,) = list(loss.parameters())
    return float(param.grad)


def test_log_mean_exp_minimiser_is_the_log_mean_exp_of_the_target():
    """Oracle: over a constant ``f``, the mean loss is stationary exactly at
    ``f = log mean exp(beta Q)`` (Eq. 12's energy of that batch), decreasing below it and
    increasing above it; the MSE energy's minimiser ``mean(beta Q)`` lies strictly below."""
    g = torch.Generator().manual_seed(3)
    batch = TensorDict(
        {
            "observation": torch.randn(512, OBS, generator=g, dtype=torch.float64),
            "action": torch.rand(512, ACT, generator=g, dtype=torch.float64) * 2 - 1,
        },
        batch_size=[512],
    )
    critic = LinearQ([1.5, -0.5], OBS).double()
    y = 2.0 * critic(batch["observation"], batch["action"])[..., 0].detach()
    exact = float(torch.logsumexp(y, 0) - math.log(y.numel()))
    assert abs(_log_mean_exp_gradient(exact, batch, critic)) < 1e-12
    assert _log_mean_exp_gradient(exact - 0.3, batch, critic) < -0.1
    assert _log_mean_exp_gradient(exact + 0.3, batch, critic) > 0.1
    assert float(y.mean()) < exact - 0.1  # Jensen: the MSE minimiser is below it
    assert _log_mean_exp_gradient(float(y.mean()), batch, critic) < -0.1


def test_log_mean_exp_loss_is_the_exp_bregman_divergence_and_caps_the_target():
    _, noise, critic = _networks()
    batch = _batch((64,))
    q = critic(batch["observation"], batch["action"]).min(-1)[0].detach()
    cap = float(q.median())
    loss = LogMeanExpEnergyLoss(_Constant(0.25).float(), noise, critic, beta=1.0,
                                max_target=cap, reduction="none")  # fmt: skip
    out = loss(batch)
    y = q.clamp(max=cap)
    torch.testing.assert_close(out["loss_energy"], torch.exp(y - 0.25) - (y - 0.25) - 1)
    assert bool((out["loss_energy"] >= 0).all())
    torch.testing.assert_close(out["target_capped_fraction"], (q > cap).float().mean())
    target = loss.energy_target(batch["observation"], batch["action"],
                                torch.full((64, 1), 0.3), torch.randn(64, ACT))  # fmt: skip
    assert float(target["y"].max()) == pytest.approx(cap)
    with pytest.raises(ValueError, match="max_target"):
        LogMeanExpEnergyLoss(*_networks(), max_target=float("inf"))


def test_support_posterior_target_is_the_exact_energy_of_a_gaussian_behaviour():
    """Oracle (aepo-math §5.5): for behaviour ``N(c, v I)`` and linear ``Q = q . a`` the exact
    energy is ``beta q . mu_{0|t} + (beta^2/2) sigma_{0|t}^2 ||q||^2``; 40k supports drawn from
    that behaviour reproduce it at every ``t`` (a sign error in the kernel or the value moves it
    by far more than the tolerance)."""
    c, v, q, beta = torch.tensor([0.3, -0.2]), 0.2, torch.tensor([1.0, -0.5]), 2.0
    schedule = VPSchedule()
    loss = SupportPosteriorEnergyLoss(
        EnergyNetwork(ACT, OBS, num_cells=(8,)).double(),
        MLPNoisePredictor(ACT, OBS, num_cells=(8,)).double(),
        LinearQ(q, OBS).double(),
        beta=beta,
    )
    g = torch.Generator().manual_seed(0)
    supports = c + math.sqrt(v) * torch.randn(40_000, ACT, generator=g, dtype=torch.float64)
    for t_value in (0.1, 0.3, 0.6, 0.9):
        time = torch.full((4, 1), t_value, dtype=torch.float64)
        action = torch.tensor([[0.5, 0.1], [-0.4, 0.6], [0.0, 0.0], [0.9, -0.9]]).double()
        noise = torch.randn(4, ACT, generator=g, dtype=torch.float64)
        target = loss.energy_target(
            torch.zeros(4, OBS, dtype=torch.float64), action,
            supports.expand(4, -1, -1), time, noise,
        )  # fmt: skip
        alpha, sigma = schedule.alpha_sigma(time)
        mean = exact_posterior_mean(schedule, time, target["noisy_action"], c.double(), v)
        variance = v * sigma**2 / (alpha**2 * v + sigma**2)
        exact = beta * mean @ q.double().unsqueeze(-1) + beta**2 / 2 * variance * q.pow(2).sum()
        torch.testing.assert_close(target["y"], exact, atol=0.03, rtol=0)
        torch.testing.assert_close(target["weights"].sum(-1), torch.ones(4, dtype=torch.float64))


def test_support_posterior_target_limits_and_brute_force():
    """``y`` is ``log sum_k p_k e^{beta Q_k}`` with Gaussian-kernel ``p_k`` over the supports and
    the dataset action (brute force in float64); at small ``t`` with ``eps = 0`` it is the
    dataset action's ``beta Q``, at large ``t`` the log-mean-exp over all members."""
    _, noise, critic = (n.double() for n in _networks())
    loss = SupportPosteriorEnergyLoss(EnergyNetwork(ACT, OBS, num_cells=(8,)).double(), noise,
                                      critic, beta=1.5)  # fmt: skip
    batch = _batch((6,)).double()
    obs, a0, supports = batch["observation"], batch["action"], batch["support", "action"]
    members = torch.cat([supports, a0.unsqueeze(1)], 1)
    q = 1.5 * critic(obs.unsqueeze(1).expand(-1, K + 1, -1), members).min(-1)[0].detach()
    t, eps = torch.full((6, 1), 0.35, dtype=torch.float64), torch.randn(6, ACT).double()
    target = loss.energy_target(obs, a0, supports, t, eps)
    alpha, sigma = VPSchedule().alpha_sigma(t)
    density = torch.exp(-(target["noisy_action"].unsqueeze(1) - alpha.unsqueeze(1) * members)
                        .pow(2).sum(-1) / (2 * sigma**2))  # fmt: skip
    brute = torch.log((density * q.exp()).sum(-1) / density.sum(-1)).unsqueeze(-1)
    torch.testing.assert_close(target["y"], brute)
    small = loss.energy_target(obs, a0, supports, torch.full_like(t, 1e-3), torch.zeros_like(eps))
    torch.testing.assert_close(small["y"], q[:, -1:], atol=1e-3, rtol=0)
    large = loss.energy_target(obs, a0, supports, torch.ones_like(t), eps)
    log_mean_exp = torch.logsumexp(q, -1, keepdim=True) - math.log(K + 1)
    torch.testing.assert_close(large["y"], log_mean_exp, atol=0.05, rtol=0)
    cached = TensorDict({"observation": obs, "action": a0, ("support", "action"): supports,
                         ("support", "value"): loss.support_values(obs, supports),
                         "energy_time": t, "energy_noise": eps}, batch_size=[6])  # fmt: skip
    fresh = cached.exclude(("support", "value"))
    torch.testing.assert_close(loss(cached)["loss_energy"], loss(fresh)["loss_energy"])
    with pytest.raises(ValueError, match="one critic value per support"):
        loss(cached.set(("support", "value"), torch.zeros(6, K + 1, dtype=torch.float64)))
    with pytest.raises(ValueError, match=r"\[\*B, K, d\]"):
        loss(TensorDict({"observation": obs, "action": a0, ("support", "action"): supports[:3]},
                        batch_size=[]))  # fmt: skip


def test_dps_target_uses_the_tweedie_mean_of_the_noise_network():
    """With the exact Gaussian noise predictor, mu_{0|t} is the exact posterior mean (§5.5)."""
    c, v, q = torch.tensor([0.3, -0.2]), 0.2, torch.tensor([1.0, -0.5])
    schedule = VPSchedule()
    noise = GaussianNoiseOracle(c, v, OBS, schedule).double()
    energy = EnergyNetwork(ACT, OBS, num_cells=(8,)).double()
    loss = DPSEnergyLoss(
        energy, noise, LinearQ(q, OBS).double(), beta=2.0, clip_posterior_mean=None
    )
    g = torch.Generator().manual_seed(0)
    a0 = c + math.sqrt(v) * torch.randn(64, ACT, generator=g, dtype=torch.float64)
    t = torch.rand(64, 1, generator=g, dtype=torch.float64) * 0.9 + 0.05
    eps = torch.randn(64, ACT, generator=g, dtype=torch.float64)
    obs = torch.zeros(64, OBS, dtype=torch.float64)
    target = loss.energy_target(obs, a0, t, eps)
    mean = exact_posterior_mean(schedule, t, target["noisy_action"], c.double(), v)
    torch.testing.assert_close(target["mu"], mean)
    torch.testing.assert_close(target["y"], 2.0 * (mean @ q.double()).unsqueeze(-1))
    assert not target["mu_clipped"].any()
    clipped = DPSEnergyLoss(
        energy, noise, LinearQ(q, OBS).double(), clip_posterior_mean=(-0.1, 0.1)
    )
    target = clipped.energy_target(obs, a0, t, eps)
    assert target["mu"].abs().max() <= 0.1 and target["mu_clipped"].any()
    with pytest.raises(ValueError, match="clip_posterior_mean"):
        DPSEnergyLoss(energy, noise, LinearQ(q, OBS), clip_posterior_mean=(1.0, -1.0))


def test_cep_loss_is_the_cross_entropy_over_the_supports():
    energy, noise, critic = _networks()
    loss = CEPEnergyLoss(energy, noise, critic, beta=2.5, reduction="none")
    batch = _batch((4,))
    torch.manual_seed(7)
    out = loss(batch)
    # Replay the loss's random draws: one t per state, then one eps per support.
    torch.manual_seed(7)
    supports = batch["support", "action"]
    t = loss.schedule.sample_time((4, 1, 1)).expand(4, K, 1)
    a_t = loss.schedule.add_noise(supports, t, torch.randn_like(supports))
    states = batch["observation"].unsqueeze(-2).expand(4, K, OBS)
    with torch.no_grad():
        p = torch.softmax(2.5 * critic(states, supports).min(-1)[0], dim=-1)
        logits = energy(a_t, t, states).squeeze(-1)
    expected = -(p * torch.log_softmax(logits, dim=-1)).sum(-1)
    torch.testing.assert_close(out["loss_energy"].detach(), expected)
    entropy = -(p * p.log()).sum(-1).mean()
    torch.testing.assert_close(out["target_entropy"], entropy)
    assert (out["loss_energy"].mean() >= out["target_entropy"]).item()  # Gibbs' inequality
    assert 1.0 <= out["target_ess"].item() <= K


def test_cep_constant_energy_gives_log_k():
    class Constant(nn.Module):
        action_dim, obs_dim = ACT, OBS

        def __init__(self) -> None:
            super().__init__()
            self.value = nn.Parameter(torch.tensor(0.7))

        def forward(self, noisy_action, time, observation):
            return self.value.expand(*noisy_action.shape[:-1], 1)

    _, noise, critic = _networks()
    out = CEPEnergyLoss(Constant(), noise, critic)(_batch())
    torch.testing.assert_close(out["loss_energy"].detach(), torch.tensor(math.log(K)))


def test_cep_support_errors_and_on_the_fly_supports():
    energy, noise, critic = _networks()
    batch = _batch((3,)).exclude(("support", "action"))
    with pytest.raises(KeyError, match="support"):
        CEPEnergyLoss(energy, noise, critic)(batch)
    fly = CEPEnergyLoss(energy, noise, critic, num_support=4, solver=DPMSolver(steps=2))
    assert torch.isfinite(fly(batch)["loss_energy"])
    with pytest.raises(ValueError, match="num_support"):
        CEPEnergyLoss(energy, noise, critic, num_support=1)
    bad = _batch((3,))
    bad["support", "action"] = torch.zeros(3, 1, ACT)
    with pytest.raises(ValueError, match="K >= 2"):
        CEPEnergyLoss(energy, noise, critic)(bad)


def test_sample_support_actions_follow_the_behaviour_model():
    """With the exact noise predictor of N(c, v I) the supports are N(c, v I) samples."""
    c, v = torch.tensor([0.3, -0.4]), 0.05
    noise = GaussianNoiseOracle(c, v, OBS)
    solver = DPMSolver(steps=40, skip_type="logSNR")
    g = torch.Generator().manual_seed(0)
    supports = sample_support_actions(
        noise, torch.zeros(2, 2, OBS), 1000, solver=solver, generator=g
    )
    assert supports.shape == (2, 2, 1000, ACT)
    flat = supports.reshape(-1, ACT)
    torch.testing.assert_close(flat.mean(0), c, atol=0.01, rtol=0)
    torch.testing.assert_close(flat.var(0), torch.full((ACT,), v), atol=0.006, rtol=0)
    clipped = sample_support_actions(noise, torch.zeros(4, OBS), 8, clip=(-0.1, 0.1))
    assert clipped.abs().max() <= 0.1
    with pytest.raises(ValueError, match="action_dim"):
        sample_support_actions(nn.Linear(2, 2), torch.zeros(4, OBS), 8)
