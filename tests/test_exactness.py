"""Exactness study: toy problems, importance-weighted energies against oracles, Jensen gap,
exact-vs-inexact guidance, distances, and a tiny end-to-end run of the study + report."""

from __future__ import annotations

import json
import math

import pytest
import torch
from oracles import ExactLinearEnergy, GaussianNoiseOracle, exact_posterior_variance

from studies.exactness import (
    CRITICS,
    DATASETS,
    ENERGY_KINDS,
    EmpiricalNoisePredictor,
    ImportanceWeightedPosterior,
    ReferenceEnergy,
    StudyConfig,
    make_critic,
    mmd,
    noise_floor,
    run_definitions,
    run_study,
    sample_dataset,
    sample_target,
    sliced_wasserstein,
)
from studies.exactness.report import write_report
from studies.exactness.study import (
    DEFINITIONS,
    DIAGNOSTICS,
    LEARNED_METHODS,
    guided_samples,
)
from studies.exactness.toy import LinearCritic, constant_observation
from torchrl_aepo.diffusion.schedule import VPSchedule
from torchrl_aepo.diffusion.solver import DPMSolver


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ toy problems
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_datasets_are_2d_bounded_and_seeded(name):
    data = sample_dataset(name, 4000, generator=_gen())
    assert data.shape == (4000, 2) and data.dtype == torch.float32
    assert data.abs().max() < 1.1
    assert data.std(0).min() > 0.1  # spread over the box, not collapsed
    torch.testing.assert_close(data, sample_dataset(name, 4000, generator=_gen()))
    with pytest.raises(ValueError, match="expected one of"):
        sample_dataset("spiral", 10)


@pytest.mark.parametrize("name", sorted(CRITICS))
def test_critics_have_the_critic_signature(name):
    critic = make_critic(name)
    a = torch.rand(7, 2) * 2 - 1
    assert critic(constant_observation((7,)), a).shape == (7, 1)
    torch.testing.assert_close(critic(torch.zeros(7, 1), a).squeeze(-1), critic.value(a))
    assert list(critic.parameters()) == []
    with pytest.raises(ValueError, match="observation"):
        critic(torch.zeros(7, 3), a)


def test_target_samples_match_importance_resampling():
    """Rejection samples of pi ∝ mu exp(beta Q) have the self-normalised weighted moments."""
    critic = make_critic("bump")
    data = sample_dataset("8gaussians", 200_000, generator=_gen(1))
    w = torch.softmax(3.0 * critic.value(data), dim=0)
    target = sample_target("8gaussians", critic, 3.0, 20_000, generator=_gen(2))
    torch.testing.assert_close(target.mean(0), w @ data, atol=0.02, rtol=0)
    torch.testing.assert_close(target.pow(2).mean(0), w @ data.pow(2), atol=0.02, rtol=0)
    with pytest.raises(ValueError, match="beta"):
        sample_target("moons", critic, 0.0, 10)


# ----------------------------------------------------------------- exact energy vs oracles
def test_importance_weighted_posterior_matches_the_gaussian_oracle():
    """For Gaussian data and linear Q every quantity has a closed form (aepo-math §5.5)."""
    c, v, beta = torch.tensor([0.2, -0.1]), 0.1, 2.0
    schedule = VPSchedule()
    data = c + math.sqrt(v) * torch.randn(8000, 2, generator=_gen(3))
    critic = LinearCritic((0.8, 0.6))
    posterior = ImportanceWeightedPosterior(
        data, critic, beta, variance_samples=256, generator=_gen(4)
    )
    oracle_energy = ExactLinearEnergy(c, v, critic.direction, beta, obs_dim=1)
    oracle_noise = GaussianNoiseOracle(c, v, obs_dim=1)
    for t in (0.1, 0.3, 0.6):
        time = torch.full((400, 1), t)
        a0 = c + math.sqrt(v) * torch.randn(400, 2, generator=_gen(5))
        a_t = schedule.add_noise(a0, time, torch.randn(400, 2, generator=_gen(6)))
        a_in = a_t.clone().requires_grad_(True)
        (oracle_grad,) = torch.autograd.grad(
            oracle_energy(a_in, time, torch.zeros(400, 1)).sum(), a_in
        )
        scale = oracle_grad.norm(dim=-1).mean()
        for kind in ENERGY_KINDS:  # all four coincide for linear Q and Gaussian data
            grad = posterior.energy_gradient(kind, a_t, time)
            assert (grad - oracle_grad).norm(dim=-1).mean() < 0.05 * scale, (kind, t)
        noise = oracle_noise(a_t, time, torch.zeros(400, 1))
        assert (posterior.noise(a_t, time) - noise).norm(dim=-1).mean() < 0.03
        torch.testing.assert_close(
            posterior.variance(time[:1]),
            exact_posterior_variance(schedule, time[:1], v),
            rtol=0.03,
            atol=0,
        )


def test_energy_modules_and_input_checks():
    posterior = ImportanceWeightedPosterior(
        sample_dataset("moons", 500, generator=_gen()), make_critic("bump"), 3.0
    )
    x, t, s = torch.randn(9, 2), torch.full((9, 1), 0.5), torch.zeros(9, 1)
    assert ReferenceEnergy(posterior, "dps")(x, t, s).shape == (9, 1)
    assert EmpiricalNoisePredictor(posterior)(x, t, s).shape == (9, 2)
    with pytest.raises(ValueError, match="energy kind"):
        ReferenceEnergy(posterior, "cep")
    with pytest.raises(ValueError, match="time"):
        posterior.energy("exact", x, torch.full((9,), 0.5))


def test_closed_form_gradient_of_the_exact_energy_matches_autograd():
    posterior = ImportanceWeightedPosterior(
        sample_dataset("swissroll", 1000, generator=_gen()), make_critic("twobumps"), 3.0
    )
    x = torch.randn(64, 2, generator=_gen(1)) * 0.7
    for t in (0.02, 0.3, 0.9):
        time = torch.full((64, 1), t)
        x_in = x.clone().requires_grad_(True)
        log_p = posterior.log_weights(x_in, time)
        (autograd,) = torch.autograd.grad(
            torch.logsumexp(log_p + posterior.beta_q, dim=-1).sum(), x_in
        )
        closed = posterior.energy_gradient("exact", x, time)
        torch.testing.assert_close(closed, autograd, atol=1e-4 * autograd.abs().max(), rtol=1e-3)
        x_in = x.clone().requires_grad_(True)  # the same gradient through energy() + autograd
        (through,) = torch.autograd.grad(posterior.energy("exact", x_in, time).sum(), x_in)
        torch.testing.assert_close(through, closed)
        value = torch.logsumexp(log_p + posterior.beta_q, dim=-1, keepdim=True).detach()
        torch.testing.assert_close(posterior.energy("exact", x, time), value)


@pytest.mark.parametrize("dataset", ["8gaussians", "checkerboard"])
@pytest.mark.parametrize("critic_name", ["bump", "twobumps"])
def test_jensen_gap_of_the_mse_energy(dataset, critic_name):
    """``log E[e^{beta Q}|a_t] >= E[beta Q|a_t]`` pointwise, and for a non-linear Q the gap
    varies with ``a_t``: its gradient, i.e. the MSE energy's guidance error, is non-zero.

    (In RL sign convention the exact energy is *above* the regression energy; in the
    minimised-energy convention E = -Q of aepo-math §2 the regression energy is above.)
    """
    posterior = ImportanceWeightedPosterior(
        sample_dataset(dataset, 3000, generator=_gen(7)), make_critic(critic_name), 3.0
    )
    schedule = VPSchedule()
    for t in (0.05, 0.2, 0.5):
        time = torch.full((500, 1), t)
        a0 = sample_dataset(dataset, 500, generator=_gen(8))
        a_t = schedule.add_noise(a0, time, torch.randn(500, 2, generator=_gen(9)))
        gap = posterior.energy("exact", a_t, time) - posterior.energy("mse", a_t, time)
        assert gap.min() > -1e-4
        assert gap.max() > 1e-2
        if t >= 0.2:  # wide posteriors: the gap changes with a_t by a visible fraction
            exact = posterior.energy_gradient("exact", a_t, time)
            gap_gradient = exact - posterior.energy_gradient("mse", a_t, time)
            assert gap_gradient.norm(dim=-1).mean() > 0.05 * exact.norm(dim=-1).mean()


def test_aepo_limit_flips_the_curvature_correction_for_a_quadratic_critic():
    """For Q = -||a - c||^2 (Hessian -2I) the minimiser of AEPO's regression (expansion point
    a_0, Eq. 25) is beta [Q(m) + tr Cov] + beta^2/2 v(t) E||g||^2 (m, Cov: posterior mean and
    covariance), whereas a second-order expansion of Eq. 12 about m has beta [Q(m) - tr Cov]:
    expanding about a_0 instead of m flips the sign of the curvature term."""
    critic = make_critic("bump")
    posterior = ImportanceWeightedPosterior(
        sample_dataset("8gaussians", 2000, generator=_gen(3)), critic, 3.0, generator=_gen(4)
    )
    x, time = torch.randn(200, 2, generator=_gen(5)) * 0.6, torch.full((200, 1), 0.3)
    p = posterior.log_weights(x, time).exp()
    mean = p @ posterior.actions
    trace = p @ posterior.actions.pow(2).sum(-1) - mean.pow(2).sum(-1)
    grad_sq = p @ posterior.grad_q_sq
    expected = 3.0 * (critic.value(mean) + trace) + 4.5 * posterior.variance(time[:1]) * grad_sq
    torch.testing.assert_close(posterior.energy("aepo", x, time).squeeze(-1), expected.squeeze(0))


def test_jensen_gap_is_constant_for_linear_q_on_gaussian_data():
    """The gap is (beta^2/2) sigma^2_{0|t} ||q||^2, constant in a_t: MSE guidance is exact."""
    c, v = torch.tensor([0.1, 0.2]), 0.05
    data = c + math.sqrt(v) * torch.randn(8000, 2, generator=_gen(10))
    posterior = ImportanceWeightedPosterior(data, LinearCritic(), 3.0, variance_grid=2)
    time = torch.full((300, 1), 0.3)
    a_t = VPSchedule().add_noise(c + math.sqrt(v) * torch.randn(300, 2), time, torch.randn(300, 2))
    gap = posterior.energy("exact", a_t, time) - posterior.energy("mse", a_t, time)
    expected = 0.5 * 9.0 * exact_posterior_variance(VPSchedule(), time, v)  # ||q|| = 1
    torch.testing.assert_close(gap, expected, atol=0.02, rtol=0)


def test_exact_energy_reproduces_the_target_better_than_mse_and_dps():
    """Everything exact but the energy (exact score of the sample), w = 1, no rescaling: only
    the exact energy samples pi (up to the solver and the finite sample); the inexact ones are
    measurably off (Eq. 13 holds at every t only with Eq. 12's energy)."""
    critic = make_critic("bump")
    posterior = ImportanceWeightedPosterior(
        sample_dataset("8gaussians", 3000, generator=_gen(11)), critic, 3.0, generator=_gen(12)
    )
    target = sample_target("8gaussians", critic, 3.0, 1500, generator=_gen(13))
    noise = EmpiricalNoisePredictor(posterior)
    solver = DPMSolver(steps=15, skip_type="logSNR")
    distance = {}
    for kind in ("exact", "mse", "dps"):
        guided = guided_samples(
            noise, ReferenceEnergy(posterior, kind), 1.0, False, solver, 1500, 0
        )
        distance[kind] = sliced_wasserstein(guided, target, generator=_gen(14)).item()
    floor_generator = _gen(15)
    floor = noise_floor(
        lambda n: sample_target("8gaussians", critic, 3.0, n, generator=floor_generator),
        lambda x, y: sliced_wasserstein(x, y, generator=_gen(14)),
        1500,
        repeats=1,
    )
    # The exact energy is left with the solver's and the finite sample's error (about the
    # noise floor here); both inexact energies are several times farther.
    assert distance["exact"] < 2 * floor + 0.02
    assert distance["exact"] < 0.5 * distance["mse"]
    assert distance["exact"] < 0.5 * distance["dps"]


# ----------------------------------------------------------------------------- distances
def test_sliced_wasserstein_of_a_translation():
    """Projections of a translated cloud are translated: SW_2 = ||v|| / sqrt(d) (in expectation
    over directions; exact up to the Monte-Carlo error of the directions)."""
    x = torch.randn(500, 2, generator=_gen())
    shift = torch.tensor([0.3, -0.4])
    assert sliced_wasserstein(x, x).item() == 0.0
    value = sliced_wasserstein(x, x + shift, num_projections=20_000, generator=_gen(1)).item()
    assert value == pytest.approx(0.5 / math.sqrt(2), rel=0.02)
    with pytest.raises(ValueError, match="equal sample sizes"):
        sliced_wasserstein(x, x[:10])


def test_mmd_is_zero_for_identical_samples_and_grows_with_a_shift():
    x = torch.randn(400, 2, generator=_gen())
    assert mmd(x, x).item() == pytest.approx(0.0, abs=1e-3)
    assert mmd(x, x + 0.5).item() > mmd(x, x + 0.1).item() > 0.05


# --------------------------------------------------------------------- tiny study + report
def test_tiny_study_runs_end_to_end_and_writes_the_report(tmp_path):
    cfg = StudyConfig(
        datasets=("moons",),
        reference_critics=("bump",),
        num_data=512,
        num_reference=512,
        behaviour_cells=(32, 32),
        behaviour_steps=10,
        energy_cells=(16, 16),
        energy_steps=5,
        energy_batch=64,
        cep_support=4,
        cep_states=8,
        cep_pool=64,
        posterior_times=4,
        posterior_samples=32,
        num_eval_samples=64,
        guidance_scales=(0.0, 1.0),
        error_times=(0.1, 0.6),
        error_points=32,
        solver_steps=4,
        floor_repeats=1,
    )
    results = run_study(cfg, workers=2)  # spawned worker processes
    learned = results["learned"]["moons"]
    for errors in learned["gradient_error"].values():
        expected = {*LEARNED_METHODS, *DIAGNOSTICS, *(f"definition:{k}" for k in DEFINITIONS[1:])}
        assert set(errors) == expected
        assert all(len(v) == 2 for v in errors.values())
    assert len(learned["posterior_mean_error"]) == 2
    for metric in ("sw", "mmd"):
        for method in LEARNED_METHODS:
            by_mode = learned["distance"][metric][method]
            assert set(by_mode) == {"no_rescale", "rescale"}
            assert all(math.isfinite(x) for m in by_mode.values() for x in m.values())
    definitions = results["definitions"]["moons"]["bump"]
    assert set(definitions["distance"]["sw"]) == set(DEFINITIONS)
    # every unit seeds itself: the same numbers in this process as in a worker
    assert run_definitions("moons", "bump", cfg)["distance"] == definitions["distance"]
    paths = write_report(results, tmp_path, command="python recipes/toy_exactness.py")
    assert all(p.exists() and p.stat().st_size > 0 for p in paths.values())
    stored = json.loads(paths["json"].read_text())
    assert "samples" not in stored["learned"]["moons"]
    text = paths["markdown"].read_text()
    assert "python recipes/toy_exactness.py" in text and "AEPO Posterior 1" in text


def test_recipe_config_matches_the_study_config():
    """Every ``study.*`` key of configs/toy_exactness.yaml is a StudyConfig field and the
    committed defaults agree (the recipe's command with no overrides is the committed run)."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    config_dir = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name="toy_exactness")
    study = OmegaConf.to_container(cfg.study, resolve=True)
    assert StudyConfig(**study).to_dict() == StudyConfig().to_dict()
    assert cfg.out_dir == "docs/exactness"
