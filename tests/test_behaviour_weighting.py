"""aepo.behaviour_weighting=advantage: the behaviour model trained on exp(beta A)-weighted data,
after the critic (weights exact, stage order, stage hashes, refusals)."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict

from torchrl_aepo import (
    AEPOConfig,
    ModelConfig,
    OfflineTrainer,
    TrainConfig,
    build_local_dataset,
    build_losses,
    build_networks,
    build_training_plan,
    make_offline_data,
)
from torchrl_aepo.aepo import advantage_weights, config_problems

TASK = "pendulum-medium-replay"
WEIGHTED = AEPOConfig(beta=2.0, behaviour_weighting="advantage", behaviour_weight_clip=5.0)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("minari")
    build_local_dataset(TASK, root=root, num_steps=600, ref_episodes=2)
    return root


class _Q(torch.nn.Module):  # twin heads a.sum and 2 a.sum: their minimum is known
    def forward(self, obs, action):
        s = action.sum(-1, keepdim=True)
        return torch.cat([s, 2 * s], -1)


class _V(torch.nn.Module):
    def forward(self, obs):
        return obs[..., :1]


def test_advantage_weights_are_the_clipped_exponential():
    obs = torch.randn(50, 3)
    action = torch.randn(50, 2) * 2
    data = TensorDict({"observation": obs, "action": action}, batch_size=[50])
    w = advantage_weights(_Q(), _V(), data, beta=1.5, clip=20.0, chunk=7)
    s = action.sum(-1)
    advantage = torch.minimum(s, 2 * s) - obs[:, 0]
    expected = torch.exp(1.5 * advantage).clamp(max=20.0)
    torch.testing.assert_close(w, expected)
    assert bool((w == 20.0).any()) and bool((w < 1).any())  # both sides of the clip seen
    huge = TensorDict({"observation": torch.zeros(2, 3), "action": torch.full((2, 2), 1e4)}, [2])
    assert advantage_weights(_Q(), _V(), huge, beta=3.0).tolist() == [100.0, 100.0]  # no inf
    for bad in ({"beta": 0.0}, {"beta": 1.0, "clip": -1.0}, {"beta": 1.0, "clip": math.inf}):
        with pytest.raises(ValueError, match="beta|clip"):
            advantage_weights(_Q(), _V(), data, **bad)


def test_weighted_plan_trains_the_critic_first_and_weights_each_batch(data_root, tmp_path):
    rb, meta = make_offline_data(TASK, root=data_root, normalize_actions=True, seed=0)
    train = TrainConfig.budget(steps=3, batch_size=16)
    nets = build_networks(ModelConfig.small(), meta.obs_dim, meta.action_dim)
    losses = build_losses(nets, WEIGHTED, train)
    plan = build_training_plan(nets, losses, rb[:], aepo=WEIGHTED, train=train)
    assert [s.name for s in plan.stages] == ["critic", "diffusion", "gamma", "energy"]
    seen = []
    forward = losses.diffusion.forward

    def recording(td):
        seen.append((td["index"].clone(), td["diffusion_weight"].clone()))
        return forward(td)

    losses.diffusion.forward = recording
    OfflineTrainer(plan.stages, rb, run_dir=tmp_path, progress_bar=False).train()
    expected = advantage_weights(losses.critic.target_qvalue_network(), nets.value, rb[:],
                                 beta=2.0, clip=5.0)  # fmt: skip
    torch.testing.assert_close(plan.behaviour_weights, expected)
    assert len(seen) == 3
    for index, weight in seen:
        torch.testing.assert_close(weight, expected[index])
    with pytest.raises(KeyError, match="index"):
        plan._weigh(TensorDict({"observation": torch.zeros(2, meta.obs_dim)}, [2]))
    # built without the recipe's config check, the joint plan refuses it too
    joint = TrainConfig.budget(steps=3, batch_size=16, plan="joint")
    with pytest.raises(ValueError, match="behaviour_weighting"):
        build_training_plan(nets, losses, rb[:], aepo=WEIGHTED, train=joint)


def test_weighted_stage_hashes_include_the_critic_and_unweighted_ones_do_not(data_root):
    rb, meta = make_offline_data(TASK, root=data_root, normalize_actions=True, seed=0)
    train = TrainConfig.budget(steps=1, batch_size=8)
    nets = build_networks(ModelConfig.small(), meta.obs_dim, meta.action_dim)
    config = {"aepo": {"beta": 2.0, "expectile": 0.7, "behaviour_weighting": "advantage",
                       "behaviour_weight_clip": 5.0},
              "train": {"critic": {"steps": 1}, "diffusion": {"steps": 1}}}  # fmt: skip
    for aepo, weighted in ((WEIGHTED, True), (AEPOConfig(), False)):
        plan = build_training_plan(nets, build_losses(nets, aepo, train), rb[:], aepo=aepo,
                                   train=train)  # fmt: skip
        stages = plan.stage_configs(config)
        for name in ("diffusion", "gamma"):
            assert ("critic" in stages[name]["train"]) is weighted, name
            assert ("behaviour_weighting" in stages[name].get("aepo", {})) is weighted, name
        assert "diffusion" not in stages["critic"]["train"]


def test_weighting_refused_where_the_critic_cannot_come_first():
    def problems(aepo=None, **train):
        aepo = aepo or AEPOConfig(behaviour_weighting="advantage")
        return config_problems(ModelConfig(), aepo, TrainConfig(**train))

    assert problems() == []
    isql = AEPOConfig(behaviour_weighting="advantage", critic="isql")
    assert any("aepo.critic='isql'" in p and "behaviour_weighting" in p for p in problems(isql))
    assert any("train.plan=joint" in p for p in problems(plan="joint"))
    assert any("aepo.behaviour_weighting" in p for p in problems(num_seeds=2))
    assert any("aepo.behaviour_weighting" in p for p in problems(overlap_stages=True))
    bad = AEPOConfig(behaviour_weighting="awr", behaviour_weight_clip=0.0)
    assert {p.split("=")[0] for p in bad.problems()} >= {"aepo.behaviour_weighting",
                                                         "aepo.behaviour_weight_clip"}  # fmt: skip


def test_resampled_batches_follow_the_weights_and_carry_no_weight(data_root, tmp_path):
    rb, meta = make_offline_data(TASK, root=data_root, normalize_actions=True, seed=0)
    resample = AEPOConfig(beta=2.0, behaviour_weighting="advantage",
                          behaviour_weight_sampling="resample")  # fmt: skip
    assert resample.problems() == []
    train = TrainConfig.budget(steps=3, batch_size=16)
    nets = build_networks(ModelConfig.small(), meta.obs_dim, meta.action_dim)
    losses = build_losses(nets, resample, train)
    dataset = rb[:]
    plan = build_training_plan(nets, losses, dataset, aepo=resample, train=train)
    # known weights: three transitions in proportion 1 : 2 : 5, every other one 0
    weights = torch.zeros(len(dataset))
    weights[[3, 10, 42]] = torch.tensor([1.0, 2.0, 5.0])
    plan.behaviour_weights = weights
    torch.manual_seed(0)
    drawn = []
    for _ in range(100):
        batch = plan._weigh(dataset[:80])
        assert "diffusion_weight" not in batch.keys()
        torch.testing.assert_close(batch["observation"], dataset["observation"][batch["index"]])
        drawn.append(batch["index"])
    index = torch.cat(drawn)
    assert set(index.tolist()) == {3, 10, 42}
    share = torch.stack([(index == i).float().mean() for i in (3, 10, 42)])
    # 8000 draws: each share within 4 standard errors of 1/8, 2/8, 5/8
    expected = torch.tensor([1.0, 2.0, 5.0]) / 8
    assert bool(((share - expected).abs() < 4 * (expected * (1 - expected) / 8000).sqrt()).all())
    # weights replaced after the first draws: the draws follow the new ones
    plan.behaviour_weights = torch.zeros(len(dataset)).index_fill_(0, torch.tensor([7]), 1.0)
    assert plan._weigh(dataset[:80])["index"].unique().tolist() == [7]
    # a full run: the diffusion loss sees resampled batches without a weight key
    plan = build_training_plan(nets, losses, dataset, aepo=resample, train=train)
    seen = []
    forward = losses.diffusion.forward

    def recording(td):
        seen.append("diffusion_weight" in td.keys())
        return forward(td)

    losses.diffusion.forward = recording
    OfflineTrainer(plan.stages, rb, run_dir=tmp_path, progress_bar=False).train()
    assert seen == [False, False, False]
    bad = AEPOConfig(behaviour_weighting="advantage", behaviour_weight_sampling="importance")
    assert any(p.startswith("aepo.behaviour_weight_sampling=") for p in bad.problems())
