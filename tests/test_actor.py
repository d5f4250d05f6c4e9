"""Tests of AEPOActor and guided_noise: exact oracles first, then TorchRL integration."""

import gymnasium as gym
import pytest
import torch
from actor_oracles import ExactQuadraticEnergy, QuadraticQ, quadratic_tilted_policy
from oracles import ExactLinearEnergy, GaussianNoiseOracle, LinearQ
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import DoubleToFloat, GymEnv, GymWrapper, SerialEnv, TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type

import torchrl_aepo.actor as actor_module
from torchrl_aepo import EnergyNetwork, MLPNoisePredictor, TwinQNetwork, VPSchedule
from torchrl_aepo.actor import AEPOActor
from torchrl_aepo.diffusion.guidance import guided_noise
from torchrl_aepo.diffusion.solver import DPMSolver

# Oracle of aepo-math §5.5: behaviour N(C, V I), linear critic Q = q . a, tilt N(C + BETA V q, V I).
C = torch.tensor([0.2, -0.1, 0.3])
V = 0.5
Q_DIR = torch.tensor([1.0, -0.5, 0.8])
BETA = 1.2
OBS_DIM = 2
N_ORACLE = 20_000
# 100 evaluations of the order-2 solver on the logSNR grid: variance bias < 0.002 (§10).
ORACLE_SOLVER = {"steps": 100, "skip_type": "logSNR"}
MEAN_TOL = 0.025  # 5 standard errors of a mean (sqrt(V / N) = 0.005)
VAR_TOL = 0.03  # 6 standard errors of a variance (V sqrt(2 / N) = 0.005) + discretisation

HOPPER_OBS, HOPPER_ACT = 11, 3


def gaussian_actor(w=1.0, rescale=False, energy=True, **kwargs):
    kwargs.setdefault("solver", DPMSolver(**ORACLE_SOLVER))
    kwargs.setdefault("clip_actions", False)
    return AEPOActor(
        GaussianNoiseOracle(C, V, obs_dim=OBS_DIM),
        ExactLinearEnergy(C, V, Q_DIR, BETA, obs_dim=OBS_DIM) if energy else None,
        guidance_scale=w,
        rescale=rescale,
        **kwargs,
    )


def oracle_samples(actor, n=N_ORACLE, seed=0):
    return actor.sample(torch.zeros(n, OBS_DIM), generator=torch.Generator().manual_seed(seed))


def moment_errors(samples, mean, var):
    """Largest absolute error of the per-dimension mean and variance."""
    return (
        (samples.mean(0) - mean).abs().max().item(),
        (samples.var(0) - var).abs().max().item(),
    )


def tiny_actor(obs_dim=HOPPER_OBS, action_dim=HOPPER_ACT, seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault("solver", DPMSolver(steps=4))
    return AEPOActor(
        MLPNoisePredictor(action_dim, obs_dim, num_cells=(16,)),
        EnergyNetwork(action_dim, obs_dim, num_cells=(16,)),
        **kwargs,
    )


# ----------------------------------------------------------------------------- guided noise
def test_guided_noise_formula_and_per_sample_rescale():
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(64, 3, generator=g) * torch.logspace(-2, 1, 64).unsqueeze(-1)
    grad_f = torch.randn(64, 3, generator=g) * 5
    sigma = torch.rand(64, 1, generator=g) + 0.01
    plain = guided_noise(eps, grad_f, sigma, 2.0, rescale=False)
    torch.testing.assert_close(plain, eps - 2.0 * sigma * grad_f)
    rescaled = guided_noise(eps, grad_f, sigma, 2.0, rescale=True)
    # the norm of each sample is restored to ||eps_theta||, the direction is that of eps_w
    torch.testing.assert_close(rescaled.norm(dim=-1), eps.norm(dim=-1))
    cosine = torch.nn.functional.cosine_similarity(rescaled, plain, dim=-1)
    torch.testing.assert_close(cosine, torch.ones(64))
    torch.testing.assert_close(guided_noise(eps, grad_f, sigma, 0.0), eps)


def test_guided_noise_rescale_has_a_floor():
    eps = torch.tensor([[1.0, 0.0]])
    out = guided_noise(eps, eps, torch.ones(1, 1), 1.0, rescale=True)  # eps_w == 0
    assert torch.isfinite(out).all() and out.abs().max() == 0


# ----------------------------------------------------------------------------- exact oracles
def test_oracle_guided_samples_match_tilted_policy():
    samples = oracle_samples(gaussian_actor(w=1.0, rescale=False))
    mean_err, var_err = moment_errors(samples, C + BETA * V * Q_DIR, V)
    assert mean_err < MEAN_TOL and var_err < VAR_TOL, (mean_err, var_err)


@pytest.mark.parametrize("tau", [0.5, 0.0])
def test_latent_scale_narrows_the_tilted_policy_around_its_mean(tau):
    """For the Gaussian tilt N(m, V I) the flow maps a_T = tau z to m + sqrt(V) tau z (up to the
    alpha_T m offset of a_T's marginal), so the samples are N(m, tau^2 V I): tau = 0 is the mean."""
    samples = oracle_samples(gaussian_actor(w=1.0, rescale=False, latent_scale=tau))
    mean_err, var_err = moment_errors(samples, C + BETA * V * Q_DIR, tau**2 * V)
    assert mean_err < MEAN_TOL and var_err < tau**2 * VAR_TOL + 1e-6, (mean_err, var_err)


def test_latent_scale_one_is_bitwise_the_plain_sampler_and_is_settable():
    plain, scaled = gaussian_actor(w=1.0), gaussian_actor(w=1.0, latent_scale=1.0)
    torch.testing.assert_close(
        oracle_samples(scaled, n=64), oracle_samples(plain, n=64), rtol=0, atol=0
    )
    scaled.latent_scale = 0.0
    assert oracle_samples(scaled, n=64).var(0).max() < 1e-8
    with pytest.raises(ValueError, match="latent_scale must be finite and >= 0"):
        scaled.latent_scale = -0.5


@pytest.mark.parametrize(
    "mutant",
    [
        pytest.param(lambda e, g, s, w, r: guided_noise(e, g, s, -w, r), id="flipped_sign"),
        pytest.param(
            lambda e, g, s, w, r: guided_noise(e, g, torch.ones_like(s), w, r), id="no_sigma"
        ),
        pytest.param(lambda e, g, s, w, r: guided_noise(e, g, s * s, w, r), id="sigma_squared"),
        pytest.param(lambda e, g, s, w, r: guided_noise(e, g, s, w, True), id="rescale_ignored"),
    ],
)
def test_oracle_check_rejects_wrong_guidance(monkeypatch, mutant):
    """The tilted-policy check above fails for a wrong sign, sigma_t factor or rescale switch."""
    monkeypatch.setattr(actor_module, "guided_noise", mutant)
    samples = oracle_samples(gaussian_actor(w=1.0, rescale=False), n=4000)
    mean_err, var_err = moment_errors(samples, C + BETA * V * Q_DIR, V)
    assert mean_err > 4 * MEAN_TOL or var_err > 4 * VAR_TOL, (mean_err, var_err)


def test_negative_guidance_shifts_the_mean_the_other_way():
    samples = oracle_samples(gaussian_actor(w=-1.0, rescale=False), n=4000)
    mean_err, _ = moment_errors(samples, C - BETA * V * Q_DIR, V)
    assert mean_err < 2 * MEAN_TOL


class ExplodingEnergy(torch.nn.Module):
    obs_dim, action_dim = OBS_DIM, 3

    def forward(self, noisy_action, time, observation):
        raise AssertionError("the energy network must not be evaluated when w = 0")


def test_oracle_zero_guidance_is_behaviour_policy_and_skips_energy():
    actor = AEPOActor(
        GaussianNoiseOracle(C, V, obs_dim=OBS_DIM),
        ExplodingEnergy(),
        guidance_scale=0.0,
        solver=DPMSolver(**ORACLE_SOLVER),
        clip_actions=False,
    )
    samples = oracle_samples(actor)
    mean_err, var_err = moment_errors(samples, C, V)
    assert mean_err < MEAN_TOL and var_err < VAR_TOL, (mean_err, var_err)
    unguided = oracle_samples(gaussian_actor(energy=False))
    torch.testing.assert_close(samples, unguided)


class RecordingSolver(DPMSolver):
    """Records every ``noise_fn`` call ``(x, t, output)``."""

    def sample(self, noise_fn, x_T):
        self.calls = []

        def recorded(x, t):
            out = noise_fn(x, t)
            self.calls.append((x.clone(), t.clone(), out.clone()))
            return out

        return super().sample(recorded, x_T)


@pytest.mark.parametrize("rescale", [False, True])
def test_guidance_is_applied_at_every_solver_evaluation(rescale):
    """eps_w = eps - w sigma_t grad f at all NFE (intermediate points too), rescaled if asked."""
    solver = RecordingSolver(steps=9, order=3)
    w = 2.5
    float64 = Unbounded(shape=(3,), dtype=torch.float64)  # exact comparison below
    actor = gaussian_actor(w=w, rescale=rescale, solver=solver, action_spec=float64)
    actor.sample(torch.zeros(256, OBS_DIM), generator=torch.Generator().manual_seed(1))
    assert len(solver.calls) == solver.nfe == 9
    times = [t[0, 0].item() for _, t, _ in solver.calls]
    assert len(set(times)) == 9  # distinct points, including the intermediate ones
    schedule, eps_net = VPSchedule(), actor.noise_network
    for x, t, out in solver.calls:
        alpha, sigma = schedule.alpha_sigma(t)
        assert x.dtype == t.dtype == out.dtype == torch.float64
        eps = eps_net(x, t, torch.zeros(256, OBS_DIM, dtype=torch.float64))
        # ExactLinearEnergy: grad_{a_t} E_t = beta alpha_t v q / (alpha_t^2 v + sigma_t^2)
        grad_f = BETA * alpha * V * Q_DIR / (alpha**2 * V + sigma**2)
        expected = eps - w * sigma * grad_f
        if rescale:
            expected = (
                expected * eps.norm(dim=-1, keepdim=True) / expected.norm(dim=-1, keepdim=True)
            )
            torch.testing.assert_close(out.norm(dim=-1), eps.norm(dim=-1))
        torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-10)


def test_guidance_increases_q_for_a_concave_critic():
    """Exact energy of Q = -||a - a*||^2: guided samples are the tilted Gaussian, Q goes up."""
    c, v, beta = torch.tensor([0.0, 0.1]), 0.5, 1.0
    a_star = torch.tensor([0.8, -0.6])
    critic = QuadraticQ(a_star, obs_dim=OBS_DIM)

    def run(w, rescale):
        actor = AEPOActor(
            GaussianNoiseOracle(c, v, obs_dim=OBS_DIM),
            ExactQuadraticEnergy(c, v, a_star, beta, obs_dim=OBS_DIM),
            guidance_scale=w,
            rescale=rescale,
            solver=DPMSolver(steps=100),
            clip_actions=False,
        )
        return actor.sample(torch.zeros(8000, OBS_DIM), generator=torch.Generator().manual_seed(2))

    def mean_q(actions):
        return critic(torch.zeros(len(actions), OBS_DIM), actions)[:, 0].mean().item()

    behaviour, guided, rescaled = run(0.0, False), run(1.0, False), run(1.0, True)
    mean, var = quadratic_tilted_policy(c, v, a_star, beta)
    mean_err, var_err = moment_errors(guided, mean, var)
    assert mean_err < 0.03 and var_err < 0.03, (mean_err, var_err)
    # exact values: E[Q] = -(||m - a*||^2 + d var): behaviour -1.85, tilted -0.71
    assert mean_q(guided) > mean_q(behaviour) + 1.0
    assert mean_q(rescaled) > mean_q(behaviour) + 0.3


# ----------------------------------------------------------------------------- candidates
def test_argmax_q_returns_the_best_candidate():
    k, n = 8, 32
    critic = LinearQ(Q_DIR, obs_dim=OBS_DIM)
    solver = DPMSolver(steps=10)
    kwargs = {"solver": solver, "rescale": True, "w": 1.0}
    picker = gaussian_actor(num_candidates=k, selection="argmax_q", qvalue_network=critic, **kwargs)
    single = gaussian_actor(**kwargs)
    obs = torch.randn(n, OBS_DIM)
    chosen = picker.sample(obs, generator=torch.Generator().manual_seed(3))
    # candidates of observation i are rows i*K .. i*K+K-1 of one [N*K] batch
    candidates = single.sample(
        obs.repeat_interleave(k, 0), generator=torch.Generator().manual_seed(3)
    ).view(n, k, 3)
    best = candidates[torch.arange(n), (candidates @ Q_DIR).argmax(-1)]
    torch.testing.assert_close(chosen, best)
    assert ((chosen @ Q_DIR) >= (candidates @ Q_DIR).amax(-1) - 1e-6).all()


def test_softmax_q_picks_candidates_and_is_seeded():
    critic = LinearQ(Q_DIR, obs_dim=OBS_DIM)
    kwargs = {"solver": DPMSolver(steps=6), "num_candidates": 4, "qvalue_network": critic}
    cold = gaussian_actor(selection="softmax_q", selection_temperature=1e-4, **kwargs)
    argmax = gaussian_actor(selection="argmax_q", **kwargs)
    obs = torch.zeros(64, OBS_DIM)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        torch.testing.assert_close(cold(TensorDict(observation=obs))["action"], argmax.sample(obs))
        warm = gaussian_actor(selection="softmax_q", selection_temperature=10.0, **kwargs)
        torch.testing.assert_close(warm.sample(obs), warm.sample(obs))


def test_mean_selection_averages_the_candidates_without_a_critic():
    """``selection="mean"``: the average of the same K candidates, no critic; on the tilted
    Gaussian oracle ``N(m, V I)`` it is ``N(m, V / K I)`` (an unbiased estimate of the mean)."""
    k, n = 8, 16
    kwargs = {"solver": DPMSolver(steps=10), "w": 1.0}
    averaged = gaussian_actor(num_candidates=k, selection="mean", **kwargs)
    single = gaussian_actor(**kwargs)
    obs = torch.randn(n, OBS_DIM)
    candidates = single.sample(
        obs.repeat_interleave(k, 0), generator=torch.Generator().manual_seed(5)
    ).view(n, k, 3)
    torch.testing.assert_close(
        averaged.sample(obs, generator=torch.Generator().manual_seed(5)), candidates.mean(1)
    )
    samples = oracle_samples(gaussian_actor(w=1.0, num_candidates=k, selection="mean"), n=4000)
    mean_err, var_err = moment_errors(samples, C + BETA * V * Q_DIR, V / k)
    # 4000 means of 8: mean SE sqrt(V / 32000) = 0.004, variance SE (V / 8) sqrt(2 / 4000) = 0.0014
    assert mean_err < MEAN_TOL and var_err < 0.01, (mean_err, var_err)


# ----------------------------------------------------------------------------- TorchRL policy
def make_hopper():
    return TransformedEnv(GymEnv("Hopper-v5"), DoubleToFloat())


def test_rollout_with_gymnasium_mujoco_env():
    env = make_hopper()
    actor = tiny_actor(action_spec=env.action_spec, guidance_scale=2.0)
    env.set_seed(0)
    td = env.rollout(6, policy=actor, break_when_any_done=False)
    assert td["action"].shape == (6, HOPPER_ACT)
    assert (td["action"].abs() <= 1).all()
    assert td["next", "reward"].shape == (6, 1)
    env.close()


def test_collector_and_batched_envs():
    env = make_hopper()
    actor = tiny_actor(action_spec=env.action_spec)
    collector = Collector(
        env, actor, frames_per_batch=5, total_frames=10, auto_register_policy_transforms=False
    )
    batches = [batch for batch in collector]
    collector.shutdown()
    assert len(batches) == 2 and all(b["action"].shape == (5, HOPPER_ACT) for b in batches)

    serial = SerialEnv(2, make_hopper)
    td = serial.rollout(3, policy=actor, break_when_any_done=False)
    assert td["action"].shape == (2, 3, HOPPER_ACT)
    serial.close()

    vector = gym.vector.SyncVectorEnv(
        [lambda: gym.make("Hopper-v5")] * 2, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    wrapped = TransformedEnv(GymWrapper(vector), DoubleToFloat())
    td = wrapped.rollout(3, policy=actor, break_when_any_done=False)
    assert td["action"].shape == (2, 3, HOPPER_ACT)
    wrapped.close()


@pytest.mark.parametrize("batch_shape", [(), (5,), (2, 3)])
def test_batch_shapes(batch_shape):
    actor = tiny_actor()
    obs = torch.randn(*batch_shape, HOPPER_OBS)
    td = actor(TensorDict(observation=obs, batch_size=batch_shape))
    assert td["action"].shape == (*batch_shape, HOPPER_ACT)
    # any batch rank is the flattened batch: row i of the flat batch uses the i-th noise draw
    flat = actor.sample(obs.reshape(-1, HOPPER_OBS), generator=torch.Generator().manual_seed(4))
    shaped = actor.sample(obs, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(shaped, flat.reshape(*batch_shape, HOPPER_ACT))


def test_exploration_semantics():
    actor = tiny_actor(deterministic_seed=7)
    td = TensorDict(observation=torch.randn(1, HOPPER_OBS).expand(16, HOPPER_OBS), batch_size=[16])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        rng_state = torch.get_rng_state()
        first = actor(td.clone())["action"]
        second = actor(td.clone())["action"]
        assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG is untouched
    torch.testing.assert_close(first, second)
    # a policy sample, not the image of one fixed latent: identical states get different actions
    assert first.std(0).min() > 1e-3
    with set_exploration_type(ExplorationType.MODE):
        torch.testing.assert_close(actor(td.clone())["action"], first)
    with set_exploration_type(ExplorationType.RANDOM):
        assert not torch.allclose(actor(td.clone())["action"], actor(td.clone())["action"])
    other_seed = tiny_actor(deterministic_seed=8)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        assert not torch.allclose(other_seed(td.clone())["action"], first)


def test_no_parameter_gradients_and_inference_mode():
    actor = tiny_actor(guidance_scale=3.0)
    obs = torch.randn(8, HOPPER_OBS)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        reference = actor.sample(obs)
        with torch.inference_mode():
            inside = actor.sample(obs.clone())
    torch.testing.assert_close(inside, reference)  # guidance still works under inference_mode
    assert all(p.grad is None for p in actor.parameters())
    assert not reference.requires_grad


def test_wrong_observation_size_is_a_clear_error():
    actor = tiny_actor()
    with pytest.raises(
        ValueError, match=r"expects an observation of shape \[\*B, 11\], got shape \(4, 17\)"
    ):
        actor(TensorDict(observation=torch.randn(4, 17), batch_size=[4]))


def test_float64_observations_are_cast_to_the_action_dtype():
    actor = tiny_actor()
    action = actor.sample(torch.randn(3, HOPPER_OBS, dtype=torch.float64))
    assert action.dtype == torch.float32


def test_actions_are_clipped_to_the_spec():
    far = torch.tensor([3.0, -3.0, 0.0])

    def make(**kwargs):
        return AEPOActor(
            GaussianNoiseOracle(far, 0.1, obs_dim=OBS_DIM),
            action_spec=(-1.0, torch.tensor([1.0, 1.0, 0.5])),
            solver=DPMSolver(steps=10),
            **kwargs,
        )

    obs = torch.zeros(500, OBS_DIM)
    clipped = make().sample(obs)
    assert clipped[:, 0].max() == 1.0 and clipped[:, 1].min() == -1.0 and clipped[:, 2].max() <= 0.5
    assert make(clip_actions=False).sample(obs)[:, 0].mean() > 2.5
    assert make().spec["action"] == Bounded(-1.0, torch.tensor([1.0, 1.0, 0.5]), shape=(3,))


def test_clip_denoised_projects_the_data_prediction_onto_the_box():
    box = (-1.0, 1.0)
    inside = GaussianNoiseOracle(C, 0.01, obs_dim=OBS_DIM)  # data well inside [-1, 1]
    solver = DPMSolver(steps=15, method="multistep", skip_type="logSNR")

    def sample(net, **kwargs):
        actor = AEPOActor(net, action_spec=box, solver=solver, clip_actions=False, **kwargs)
        obs = torch.zeros(2000, OBS_DIM)
        return actor, actor.sample(obs, generator=torch.Generator().manual_seed(0))

    # exact predictor inside the box: x0_hat only leaves it by sampling noise at large t
    _, plain = sample(inside)
    _, clipped = sample(inside, clip_denoised=True)
    torch.testing.assert_close(clipped.mean(0), plain.mean(0), atol=5e-3, rtol=0)
    torch.testing.assert_close(clipped.var(0), plain.var(0), atol=2e-3, rtol=0)
    # a predictor whose data lies outside the box: every x0_hat is clamped, so without the final
    # clip_actions the ODE ends at the projection of the data (1, -1, 0.3), up to the noise
    # level sigma(t_end) ~ 0.02 left at the solver's last time
    outside = GaussianNoiseOracle(torch.tensor([3.0, -3.0, 0.3]), 0.01, obs_dim=OBS_DIM)
    _, unclipped = sample(outside)
    actor, projected = sample(outside, clip_denoised=True)
    assert unclipped[:, 0].mean() > 2.9 and unclipped[:, 1].mean() < -2.9
    assert projected.abs().max() <= 1.1
    torch.testing.assert_close(
        projected[:, :2].mean(0), torch.tensor([1.0, -1.0]), atol=1e-2, rtol=0
    )
    assert actor.clip_denoised and actor.config()["clip_denoised"] is True
    actor.clip_denoised = False  # settable
    assert torch.equal(
        actor.sample(torch.zeros(3, OBS_DIM), generator=torch.Generator().manual_seed(1)),
        sample(outside)[0].sample(
            torch.zeros(3, OBS_DIM), generator=torch.Generator().manual_seed(1)
        ),
    )
    with pytest.raises(ValueError, match="Bounded"):
        AEPOActor(inside, action_spec=Unbounded(shape=(3,)), clip_denoised=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"selection": "best"}, "Unknown selection rule 'best'"),
        ({"selection": "argmax_q", "num_candidates": 4}, "needs a qvalue_network"),
        ({"num_candidates": 4}, "selection='first' keeps one sample"),
        ({"num_candidates": 0}, "num_candidates must be >= 1"),
        (
            {
                "selection_temperature": 0.0,
                "selection": "softmax_q",
                "qvalue_network": LinearQ(Q_DIR, 2),
            },
            "selection_temperature must be > 0",
        ),
        ({"action_spec": Unbounded(shape=(5,))}, r"action_spec must have shape \[3\]"),
        ({"action_spec": Composite(obs=Unbounded(shape=(3,)))}, "no entry for the output key"),
        ({"schedule": VPSchedule(beta_1=10.0), "solver": DPMSolver()}, "differs from the solver"),
        ({"in_keys": ["observation", "pixels"]}, "one observation key"),
        ({"guidance_scale": float("nan")}, "guidance_scale must be finite"),
        ({"latent_scale": -1.0}, "latent_scale must be finite and >= 0"),
        ({"latent_scale": float("inf")}, "latent_scale must be finite and >= 0"),
        ({"latent_scale": True}, "latent_scale must be a number"),
    ],
)
def test_configuration_errors(kwargs, match):
    kwargs.setdefault("qvalue_network", None)
    with pytest.raises(ValueError, match=match):
        AEPOActor(GaussianNoiseOracle(C, V, obs_dim=OBS_DIM), **kwargs)


def test_network_dimension_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"energy_network.obs_dim = 5 does not match"):
        AEPOActor(GaussianNoiseOracle(C, V, obs_dim=OBS_DIM), EnergyNetwork(3, 5))


def test_save_and_from_checkpoint_round_trip(tmp_path):
    critic = TwinQNetwork(HOPPER_OBS, HOPPER_ACT, num_cells=(16,))
    actor = tiny_actor(
        guidance_scale=2.0,
        latent_scale=0.5,
        num_candidates=3,
        selection="argmax_q",
        qvalue_network=critic,
        deterministic_seed=5,
        solver=DPMSolver(steps=6, order=3, skip_type="logSNR"),
    )
    path = tmp_path / "actor.pt"
    actor.save(path)
    loaded = AEPOActor.from_checkpoint(path)
    obs = TensorDict(observation=torch.randn(4, 2, HOPPER_OBS), batch_size=[4, 2])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        torch.testing.assert_close(loaded(obs.clone())["action"], actor(obs.clone())["action"])
        assert loaded.config() == actor.config()
        # overrides replace stored arguments
        unguided = AEPOActor.from_checkpoint(path, guidance_scale=0.0)
        assert unguided.guidance_scale == 0.0 and unguided.solver.steps == 6
        # the standard state_dict path: same architecture, fresh weights, then load
        fresh = tiny_actor(
            seed=1,
            guidance_scale=2.0,
            latent_scale=0.5,
            num_candidates=3,
            selection="argmax_q",
            qvalue_network=TwinQNetwork(HOPPER_OBS, HOPPER_ACT, num_cells=(16,)),
            deterministic_seed=5,
            solver=DPMSolver(steps=6, order=3, skip_type="logSNR"),
        )
        fresh.load_state_dict(actor.state_dict())
        torch.testing.assert_close(fresh(obs.clone())["action"], actor(obs.clone())["action"])


def test_from_checkpoint_rejects_other_files(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"noise": 1}, path)
    with pytest.raises(ValueError, match="not an AEPOActor checkpoint"):
        AEPOActor.from_checkpoint(path)


def test_num_threads_is_used_while_sampling_and_restored(monkeypatch):
    from torchrl_aepo import EnergyNetwork, UMLPNoisePredictor

    seen = []
    actor = AEPOActor(
        UMLPNoisePredictor(3, 5, widths=(16, 8, 8)),
        EnergyNetwork(3, 5, num_cells=(8,)),
        num_threads=1,
        solver=DPMSolver(steps=2),
    )
    before = torch.get_num_threads()
    original = actor.module._sample_flat
    monkeypatch.setattr(
        actor.module,
        "_sample_flat",
        lambda *a: seen.append(torch.get_num_threads()) or original(*a),
    )
    actor.sample(torch.randn(2, 5))
    assert seen == [1] and torch.get_num_threads() == before
    assert actor.config()["num_threads"] == 1
    with pytest.raises(ValueError, match="num_threads"):
        AEPOActor(UMLPNoisePredictor(3, 5), num_threads=0)


def test_compiled_sampler_matches_eager_and_reuses_the_graph_across_guidance():
    """``compile=True``: same actions as eager; a new guidance degree does not recompile."""
    import torch._dynamo

    torch._dynamo.reset()
    eager = tiny_actor(guidance_scale=2.0)
    compiled = tiny_actor(guidance_scale=2.0, compile=True)
    compiled.load_state_dict(eager.state_dict())
    obs = torch.randn(5, HOPPER_OBS)

    def sample(actor):
        return actor.sample(obs, generator=torch.Generator().manual_seed(3))

    torch.testing.assert_close(sample(compiled), sample(eager), rtol=1e-4, atol=1e-5)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for w in (0.5, 3.0):
        eager.guidance_scale = compiled.guidance_scale = w
        torch.testing.assert_close(sample(compiled), sample(eager), rtol=1e-4, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames
    eager.clip_denoised = compiled.clip_denoised = True  # the clamp compiles too
    torch.testing.assert_close(sample(compiled), sample(eager), rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="compile"):
        tiny_actor(compile="yes")


# --------------------------------------------------------- dtype moves and files (issue 17)


@pytest.mark.parametrize(
    "move, dtype, rtol",
    [
        (lambda a: a.double(), torch.float64, 1e-6),
        (lambda a: a.to(torch.float64), torch.float64, 1e-6),
        (lambda a: a.half(), torch.float16, 5e-3),
        (lambda a: a.to(torch.bfloat16), torch.bfloat16, 5e-2),
    ],
)
@pytest.mark.parametrize("candidates", [1, 3])
def test_actor_follows_dtype_moves(move, dtype, rtol, candidates):
    from torchrl_aepo import UMLPNoisePredictor

    torch.manual_seed(0)
    kwargs = {}
    if candidates > 1:
        kwargs = dict(
            num_candidates=candidates,
            selection="argmax_q",
            qvalue_network=TwinQNetwork(HOPPER_OBS, HOPPER_ACT, num_cells=(16,)),
        )
    actor = AEPOActor(
        UMLPNoisePredictor(HOPPER_ACT, HOPPER_OBS, widths=(16, 16, 16)),
        EnergyNetwork(HOPPER_ACT, HOPPER_OBS, num_cells=(16, 16)),
        guidance_scale=2.0,
        solver=DPMSolver(steps=4),
        clip_actions=False,
        **kwargs,
    )
    obs = torch.randn(6, HOPPER_OBS)
    x_T = torch.randn(6, HOPPER_ACT)
    with torch.no_grad():
        reference = actor.module.denoise(obs, x_T, 2.0)
    moved = move(actor)
    assert moved is actor and actor.module.sample_dtype == dtype
    assert actor.action_spec.dtype == dtype
    # the same latent gives the same actions up to the precision of the dtype
    with torch.no_grad():
        out = actor.module.denoise(obs.to(dtype), x_T.to(dtype), 2.0)
    scale = reference.abs().max()
    assert (out.double() - reference.double()).abs().max() <= rtol * scale
    # the public API (float32 observations from an env) runs and returns the new dtype
    td = actor(TensorDict(observation=obs, batch_size=[6]))
    assert td["action"].dtype == dtype and td["action"].shape == (6, HOPPER_ACT)
    assert actor.sample(obs, generator=torch.Generator().manual_seed(0)).dtype == dtype
    actor.float()
    assert actor.action_spec.dtype == torch.float32
    assert actor.sample(obs).dtype == torch.float32


def test_networks_of_another_dtype_than_the_spec_give_a_clear_error():
    actor = tiny_actor(guidance_scale=1.0)
    actor.module.noise_network.double()  # moved alone, not through the actor
    with pytest.raises(
        ValueError,
        match=r"noise_network: torch.float64, energy_network: torch.float32.*actor.to\(dtype\)",
    ):
        actor.sample(torch.randn(2, HOPPER_OBS))


def test_saved_actor_holds_no_pickled_code_and_round_trips_bitwise(tmp_path):
    critic = TwinQNetwork(HOPPER_OBS, HOPPER_ACT, num_cells=(16,))
    actor = tiny_actor(
        guidance_scale=2.0, num_candidates=2, selection="softmax_q", qvalue_network=critic
    ).double()
    path = tmp_path / "actor.pt"
    actor.save(path)
    payload = torch.load(path, weights_only=True)  # plain data only
    assert payload["networks"]["noise_network"]["config"]["class"] == "MLPNoisePredictor"
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left no temporary file
    loaded = AEPOActor.from_checkpoint(path)
    assert loaded.action_spec.dtype == torch.float64 == loaded.module.sample_dtype
    for a, b in zip(actor.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
    obs = torch.randn(3, HOPPER_OBS)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        assert torch.equal(loaded.sample(obs), actor.sample(obs))


def test_frozen_view_networks_are_saved(tmp_path):
    from torchrl_aepo import ValueNetwork
    from torchrl_aepo.objectives import ExpectileLoss, frozen_view

    loss = ExpectileLoss(
        TwinQNetwork(HOPPER_OBS, HOPPER_ACT, num_cells=(16,)),
        ValueNetwork(HOPPER_OBS, num_cells=(16,)),
    )
    behaviour = frozen_view(MLPNoisePredictor(HOPPER_ACT, HOPPER_OBS, num_cells=(16,)))
    actor = AEPOActor(
        behaviour,
        EnergyNetwork(HOPPER_ACT, HOPPER_OBS, num_cells=(16,)),
        num_candidates=2,
        selection="argmax_q",
        qvalue_network=loss.target_qvalue_network(),
        solver=DPMSolver(steps=4),
    )
    actor.save(tmp_path / "a.pt")
    loaded = AEPOActor.from_checkpoint(tmp_path / "a.pt")
    obs = torch.randn(3, HOPPER_OBS)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        assert torch.equal(loaded.sample(obs), actor.sample(obs))


def test_networks_outside_torchrl_aepo_nets_are_passed_back_in(tmp_path):
    oracle = GaussianNoiseOracle(C, V, obs_dim=OBS_DIM)
    actor = AEPOActor(oracle, None, action_spec=Unbounded(shape=(3,)), solver=DPMSolver(steps=4))
    actor.save(tmp_path / "a.pt")
    with pytest.raises(
        ValueError, match=r"noise_network is a oracles.GaussianNoiseOracle.*Pass noise_network="
    ):
        AEPOActor.from_checkpoint(tmp_path / "a.pt")
    loaded = AEPOActor.from_checkpoint(
        tmp_path / "a.pt", noise_network=GaussianNoiseOracle([0.0, 0.0, 0.0], V, obs_dim=OBS_DIM)
    )
    assert torch.equal(loaded.noise_network.c, oracle.c)  # the stored tensors were loaded
    with pytest.raises(ValueError, match="does not fit"):
        AEPOActor.from_checkpoint(tmp_path / "a.pt", noise_network=EnergyNetwork(3, OBS_DIM))


def _valid_actor_file(tmp_path):
    path = tmp_path / "good.pt"
    tiny_actor().save(path)
    return path.read_bytes()


@pytest.mark.parametrize(
    "content, match",
    [
        (lambda good: b"", "empty, truncated or not a torch file"),
        (lambda good: good[: len(good) // 2], "empty, truncated or not a torch file"),
        (lambda good: b"garbage" * 100, "not a torch file .UnpicklingError: Unsupported operand"),
        # an old (pickled modules) checkpoint
        (None, "holds pickled Python objects .UnpicklingError: it needs the class torch.nn"),
    ],
)
def test_corrupt_actor_files_name_the_file_and_what_to_do(tmp_path, content, match):
    from torchrl_aepo.actor import ActorCheckpointError

    path = tmp_path / "actor.pt"
    if content is None:
        torch.save(
            {"format": "torchrl_aepo.AEPOActor/1", "noise_network": torch.nn.Linear(1, 1)}, path
        )
    else:
        path.write_bytes(content(_valid_actor_file(tmp_path)))
    with pytest.raises(ActorCheckpointError, match=match) as err:
        AEPOActor.from_checkpoint(path)
    assert isinstance(err.value, ValueError)
    assert str(path) in str(err.value) and "re-run the recipe with the same run_dir" in str(
        err.value
    )
