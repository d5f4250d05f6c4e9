"""PosteriorStatistics (aepo-math §5.2-5.3) against the exact Gaussian oracle of §5.5."""

import pytest
import torch
from oracles import GaussianNoiseOracle, exact_gamma, exact_posterior_variance
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

from torchrl_aepo import VPSchedule
from torchrl_aepo.objectives import PosteriorStatistics

C, V, OBS_DIM = (0.2, -0.1, 0.3), 0.5, 2
SCHEDULE = VPSchedule()
# grid points and off-grid times across [t_min, 1]
TIMES = torch.cat(
    [torch.tensor([1e-3, 2e-3, 5e-3, 0.01, 0.023, 0.05]), torch.linspace(0.1, 1.0, 19)]
).unsqueeze(-1)


def gaussian_dataset(n=50_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    actions = torch.tensor(C) + V**0.5 * torch.randn(n, 3, generator=g)
    return torch.randn(n, OBS_DIM, generator=g), actions


@pytest.fixture(scope="module")
def oracle_stats():
    observations, actions = gaussian_dataset()
    return PosteriorStatistics.estimate(
        GaussianNoiseOracle(C, V, OBS_DIM),
        observations,
        actions,
        num_times=201,
        samples_per_time=32768,
        generator=torch.Generator().manual_seed(1),
    )


def test_posterior1_control_variate_matches_exact_variance(oracle_stats):
    exact = exact_posterior_variance(SCHEDULE, TIMES, V)
    estimate = oracle_stats.variance(TIMES, posterior=1)
    # Monte-Carlo relative std ~ sqrt(2/d)/sqrt(M) = 0.5%; a wrong factor/sign is O(1) off
    torch.testing.assert_close(estimate, exact, rtol=0.03, atol=0.0)
    torch.testing.assert_close(
        oracle_stats.gamma(TIMES), exact_gamma(SCHEDULE, TIMES, V), rtol=0.03, atol=0.02
    )


def test_posterior2_matches_exact_variance(oracle_stats):
    exact = exact_posterior_variance(SCHEDULE, TIMES, V)
    estimate = oracle_stats.variance(TIMES, posterior=2)
    # Eq. 24's cross term has std ~ 2 sqrt(v) sigma_t / sqrt(M d): loose at small t only
    torch.testing.assert_close(estimate, exact, rtol=0.05, atol=2e-3)
    large_t = TIMES >= 0.3
    torch.testing.assert_close(estimate[large_t], exact[large_t], rtol=0.01, atol=0.0)


def test_literal_estimator_is_accurate_where_the_amplification_is_small(oracle_stats):
    stats = PosteriorStatistics.from_state_dict(oracle_stats.state_dict())
    stats.estimator = "literal"
    small_t = TIMES <= 0.2
    exact = exact_posterior_variance(SCHEDULE, TIMES, V)
    torch.testing.assert_close(stats.variance(TIMES)[small_t], exact[small_t], rtol=0.03, atol=0.0)
    torch.testing.assert_close(
        stats.gamma(TIMES), 1.0 - stats._interpolate(stats.one_minus_gamma_literal, TIMES)
    )


class ZeroNoisePredictor(torch.nn.Module):
    """A (bad) network predicting eps_theta = 0: every table is known in closed form."""

    def forward(self, noisy_action, time, observation):
        return torch.zeros_like(noisy_action)


def test_tables_of_an_imperfect_network_hand_computed():
    # eps_theta = 0 => mu = a_t / alpha = a_0 + (sigma/alpha) eps. With a constant dataset
    # action (a_0 = b): literal 1 - Gamma = 1, control variate E||eps||^2/d = 1 and Eq. 24
    # gives 0 - (sigma^2/alpha^2) E||eps||^2/d = -sigma^2/alpha^2 (which Bao's E||a_0 - mu||^2
    # form would give with a plus sign): clamped to 0.
    actions = torch.tensor(C).expand(100, 3)
    stats = PosteriorStatistics.estimate(
        ZeroNoisePredictor(),
        torch.zeros(100, OBS_DIM),
        actions,
        num_times=11,
        samples_per_time=8192,
        v_max=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    factor = SCHEDULE.posterior_variance_factor(stats.times())
    torch.testing.assert_close(stats.one_minus_gamma_literal, torch.ones(11, dtype=torch.float64))
    torch.testing.assert_close(
        stats.one_minus_gamma_control_variate,
        torch.ones(11, dtype=torch.float64),
        rtol=0,
        atol=0.03,
    )
    torch.testing.assert_close(stats.posterior2_variance, -factor, rtol=0.03, atol=1e-6)
    assert torch.all(stats.variance(TIMES, posterior=2) == 0)
    torch.testing.assert_close(
        stats.variance(TIMES, posterior=1, clamp=False),
        SCHEDULE.posterior_variance_factor(TIMES) * stats.one_minus_gamma(TIMES),
    )


def test_interpolation_clamping_and_vmax():
    schedule = VPSchedule()
    k = 11
    grid = torch.linspace(schedule.t_min, schedule.t_max, k, dtype=torch.float64)
    table = torch.linspace(0.0, 1.0, k, dtype=torch.float64)  # linear in t: exact interpolation
    p2 = torch.linspace(-0.2, 0.8, k, dtype=torch.float64)
    stats = PosteriorStatistics(table, table, p2, v_max=0.5, schedule=schedule)
    t = torch.tensor([[schedule.t_min], [0.37], [0.905], [1.0], [0.0], [2.0]])
    fraction = ((t - schedule.t_min) / (schedule.t_max - schedule.t_min)).clamp(0, 1)
    torch.testing.assert_close(stats.one_minus_gamma(t), fraction)
    raw1 = schedule.posterior_variance_factor(t) * fraction
    torch.testing.assert_close(stats.variance(t, 1, clamp=False), raw1)
    torch.testing.assert_close(stats.variance(t, 1), raw1.clamp(0.0, 0.5))
    raw2 = -0.2 + fraction
    torch.testing.assert_close(stats.variance(t, 2, clamp=False), raw2)
    torch.testing.assert_close(stats.variance(t, 2), raw2.clamp(0.0, 0.5))
    assert stats.times().tolist() == pytest.approx(grid.tolist())


def test_state_dict_round_trip_and_grid_resize():
    observations, actions = gaussian_dataset(2000)
    oracle = GaussianNoiseOracle(C, V, OBS_DIM)
    small = PosteriorStatistics.estimate(
        oracle, observations, actions, num_times=5, samples_per_time=64
    )
    large = PosteriorStatistics.estimate(
        oracle, observations, actions, num_times=9, samples_per_time=64, estimator="literal"
    )
    # default v_max: mean per-dimension variance of the dataset actions
    expected_vmax = (actions.double() - actions.double().mean(0)).pow(2).mean()
    torch.testing.assert_close(small.v_max, expected_vmax, rtol=1e-6, atol=0)
    small.load_state_dict(large.state_dict())  # another grid size is accepted
    assert small.num_times == 9 and small.estimator == "literal"
    torch.testing.assert_close(small.variance(TIMES), large.variance(TIMES))
    rebuilt = PosteriorStatistics.from_state_dict(large.state_dict())
    torch.testing.assert_close(rebuilt.variance(TIMES, 2), large.variance(TIMES, 2))
    result = small.load_state_dict({}, strict=False)
    assert "v_max" in result.missing_keys


def test_from_replay_buffer_equals_estimate_on_tensors():
    observations, actions = gaussian_dataset(500)
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(1000))
    rb.extend(TensorDict({"observation": observations, "action": actions}, batch_size=[500]))
    oracle = GaussianNoiseOracle(C, V, OBS_DIM)
    kwargs = dict(num_times=4, samples_per_time=50, batch_size=64)
    from_rb = PosteriorStatistics.from_replay_buffer(
        oracle, rb, generator=torch.Generator().manual_seed(3), **kwargs
    )
    direct = PosteriorStatistics.estimate(
        oracle, observations, actions, generator=torch.Generator().manual_seed(3), **kwargs
    )
    torch.testing.assert_close(from_rb.posterior2_variance, direct.posterior2_variance)


def test_errors():
    observations, actions = gaussian_dataset(100)
    oracle = GaussianNoiseOracle(C, V, OBS_DIM)
    with pytest.raises(ValueError, match="same non-zero number of rows"):
        PosteriorStatistics.estimate(oracle, observations[:50], actions)
    with pytest.raises(ValueError, match="num_times"):
        PosteriorStatistics.estimate(oracle, observations, actions, num_times=1)
    stats = PosteriorStatistics.estimate(
        oracle, observations, actions, num_times=3, samples_per_time=8
    )
    with pytest.raises(ValueError, match="posterior must be 1 or 2"):
        stats.variance(TIMES, posterior=3)
    with pytest.raises(ValueError, match="estimator"):
        stats.estimator = "exact"
    with pytest.raises(ValueError, match="common length"):
        PosteriorStatistics(torch.zeros(3), torch.zeros(4), torch.zeros(3), v_max=1.0)
