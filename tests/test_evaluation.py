"""Batched evaluation: episodes, seeds, normalization, guidance sweep, report helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensordict.nn import TensorDictModule
from torch import nn

from torchrl_aepo.evaluation import (
    EvalResult,
    evaluate_policy,
    guidance_sweep,
    make_eval_env,
    sweep_table,
)
from torchrl_aepo.plots import plot_eval_over_training, plot_guidance_sweep, plot_training_losses


class _RandomTorque(nn.Module):
    """A policy whose actions depend on the global RNG (like AEPOActor in RANDOM mode)."""

    guidance_scale = 0.0

    def forward(self, observation):
        return torch.rand(*observation.shape[:-1], 1) * 4 - 2


def _policy():
    return TensorDictModule(_RandomTorque(), in_keys=["observation"], out_keys=["action"])


@pytest.fixture(scope="module")
def env():
    return make_eval_env("Pendulum-v1", 3, max_episode_steps=30)


def test_episodes_seeds_and_reproducibility(env):
    policy = _policy()
    first = evaluate_policy(policy, env, episodes=4, max_steps=30, seed=7)
    assert first.seeds == [7, 8, 9, 10]  # round 0: envs 0-2, round 1: env 0
    assert first.episode_lengths == [30, 30, 30, 30]
    assert first.env_steps == 2 * 3 * 30
    assert len(set(first.returns)) == 4
    again = evaluate_policy(policy, env, episodes=4, max_steps=30, seed=7)
    assert again.returns == first.returns
    other = evaluate_policy(policy, env, episodes=4, max_steps=30, seed=8)
    assert other.returns != first.returns
    # the training RNG is not disturbed by an evaluation
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    evaluate_policy(policy, env, episodes=1, max_steps=5, seed=1)
    torch.testing.assert_close(torch.rand(3), expected)


class _Feedback(nn.Module):
    """Actions that depend on the observation and on the global RNG."""

    def forward(self, observation):
        noise = torch.rand(*observation.shape[:-1], 1) - 0.5
        return (2 * torch.tanh(-observation[..., 2:3] - observation[..., :1]) + noise).clamp(-2, 2)


def test_async_backend_gives_the_same_episodes_as_sync(env):
    policy = TensorDictModule(_Feedback(), in_keys=["observation"], out_keys=["action"])
    sync = evaluate_policy(policy, env, episodes=4, max_steps=30, seed=3)
    async_env = make_eval_env("Pendulum-v1", 3, max_episode_steps=30, backend="async")
    try:
        assert type(async_env.base_env._env).__name__ == "AsyncVectorEnv"
        result = evaluate_policy(policy, async_env, episodes=4, max_steps=30, seed=3)
    finally:
        async_env.close()
    assert result.seeds == sync.seeds == [3, 4, 5, 6]
    assert len(set(sync.returns)) == 4
    np.testing.assert_allclose(result.returns, sync.returns, rtol=1e-6)
    assert result.episode_lengths == sync.episode_lengths
    with pytest.raises(ValueError, match="backend"):
        make_eval_env("Pendulum-v1", 2, backend="threads")


def test_normalization_and_summary(env):
    result = evaluate_policy(
        _policy(), env, episodes=3, max_steps=30, seed=0, normalize=lambda r: np.asarray(r) / 10
    )
    np.testing.assert_allclose(result.normalized_scores, np.asarray(result.returns) / 10)
    assert result.normalized_mean == pytest.approx(np.mean(result.returns) / 10)
    assert result.normalized_std == pytest.approx(np.std(result.returns) / 10)
    assert set(result.to_dict()) >= {"returns", "normalized_scores", "seeds", "steps_per_s"}
    assert "normalized score" in str(result)


def test_guidance_sweep_sets_and_restores_w(env):
    policy = _policy()
    seen = []
    module = policy.module

    class Recorder(nn.Module):
        def forward(self, observation):
            seen.append(recorder_owner.guidance_scale)
            return module(observation)

    recorder_owner = TensorDictModule(Recorder(), in_keys=["observation"], out_keys=["action"])
    recorder_owner.guidance_scale = 5.0
    results = guidance_sweep(recorder_owner, env, [0.0, 2.0], episodes=1, max_steps=3, seed=0)
    assert [r.guidance for r in results] == [0.0, 2.0]
    assert sorted(set(seen)) == [0.0, 2.0]
    assert recorder_owner.guidance_scale == 5.0
    table = sweep_table(results, chosen=2.0)
    assert "2*" in table


def test_bad_arguments(env):
    with pytest.raises(ValueError, match="episodes"):
        evaluate_policy(_policy(), env, episodes=0, max_steps=3)
    with pytest.raises(ValueError, match="exploration"):
        evaluate_policy(_policy(), env, episodes=1, max_steps=3, exploration="greedy")
    with pytest.raises(RuntimeError, match="NoSuchEnv-v0"):
        make_eval_env("NoSuchEnv-v0", 2)


def test_plots(tmp_path):
    history = {"diffusion/loss_diffusion": [[1, 1.0], [2, 0.5]], "critic/loss_value": [[1, 2.0]]}
    assert plot_training_losses(history, tmp_path / "a.png").exists()
    assert plot_eval_over_training([[1, 10.0], [2, 20.0]], tmp_path / "b.png", final=20.0).exists()
    sweep = [
        EvalResult(w, [1.0, 2.0], [10.0, 20.0], [5, 5], [0, 1], 1.0, 10).to_dict()
        for w in (0.0, 1.0)
    ]
    assert plot_guidance_sweep(sweep, tmp_path / "c.png", chosen=1.0).exists()
    assert plot_training_losses({}, tmp_path / "d.png") is None
