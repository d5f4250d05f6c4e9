"""torchrl_aepo.aepo: typed configs (validation), builders, the training plan, the README example."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from torchrl_aepo import (
    AEPOConfig,
    ModelConfig,
    OfflineTrainer,
    TrainConfig,
    build_actor,
    build_local_dataset,
    build_losses,
    build_networks,
    build_training_plan,
    make_offline_data,
)
from torchrl_aepo.aepo import config_problems
from torchrl_aepo.evaluation import evaluate_policy, make_eval_env

TASK = "pendulum-medium-replay"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("minari")
    build_local_dataset(TASK, root=root, num_steps=1000, ref_episodes=2)
    return root


def test_readme_example_without_hydra(data_root, tmp_path):
    # The README's "AEPO in 15 lines" example, with a tiny budget.
    rb, meta = make_offline_data(TASK, root=data_root, normalize_actions=True, seed=0)
    model, aepo = ModelConfig.small(), AEPOConfig(beta=0.3, energy_baseline="value")
    train = TrainConfig.budget(steps=20, batch_size=64)
    nets = build_networks(model, meta.obs_dim, meta.action_dim)
    losses = build_losses(nets, aepo, train)
    plan = build_training_plan(nets, losses, rb[:], aepo=aepo, train=train)
    OfflineTrainer(plan.stages, rb, run_dir=tmp_path, progress_bar=False).train()
    low, high = meta.policy_action_box
    actor = build_actor(nets, losses, aepo, action_low=low, action_high=high)
    env = make_eval_env(meta.eval_env_id, 2, transforms=[meta.action_scaling_transform()])
    result = evaluate_policy(actor, env, episodes=2, max_steps=20, seed=0)

    assert meta.actions_normalized and meta.action_high == [2.0] and high == [1.0]
    assert rb[:]["action"].abs().max() <= 1.0  # stored in [-1, 1]
    assert len(result.returns) == 2 and np.isfinite(result.returns).all()
    # the behaviour network received the EMA weights of the trained noise network
    ema = losses.diffusion.sampling_network()
    for a, b in zip(ema.parameters(), nets.behaviour.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert plan.energy_loss is not None and plan.posterior is not None
    # the critic is attached only for the Q-based selection rules
    pick = dataclasses.replace(aepo, num_candidates=4, selection="argmax_q")
    mean = dataclasses.replace(aepo, num_candidates=4, selection="mean")
    assert build_actor(nets, losses, pick).module.qvalue_network is not None
    mean_actor = build_actor(nets, losses, mean, action_low=low, action_high=high)
    assert mean_actor.module.qvalue_network is None
    assert mean_actor.sample(rb[:8]["observation"]).shape == (8, meta.action_dim)


def test_from_dict_reads_nested_groups_and_refuses_unknown_keys():
    train = TrainConfig.from_dict({"plan": "joint", "critic": {"batch_size": 32}})
    assert train.plan == "joint" and train.critic.batch_size == 32 and train.critic.lr == 3e-4
    aepo = AEPOConfig.from_dict({"clip_posterior_mean": [-1.0, 1.0], "solver": {"steps": 5}})
    assert aepo.clip_posterior_mean == (-1.0, 1.0) and aepo.solver.steps == 5
    assert AEPOConfig.from_dict(aepo.to_dict()) == aepo
    with pytest.raises(KeyError, match=r"train\.critic\.batchsize"):
        TrainConfig.from_dict({"critic": {"batchsize": 32}})
    with pytest.raises(KeyError, match=r"aepo\.gamma|'gamma'"):
        AEPOConfig.from_dict({"gamma": 0.9})  # renamed: aepo.discount


def test_config_problems_lists_every_bad_value_at_once():
    train = TrainConfig.from_dict(
        {"critic": {"batch_size": 0}, "diffusion": {"steps": -3}, "energy": {"lr": 0.0}}
    )
    aepo = AEPOConfig.from_dict({"expectile": 1.5, "beta": -1.0, "solver": {"steps": 0}})
    model = ModelConfig.from_dict({"noise_network": "transformer"})
    problems = config_problems(model, aepo, train)
    for key in (
        "train.critic.batch_size=0",
        "train.diffusion.steps=-3",
        "train.energy.lr=0.0",
        "aepo.expectile=1.5",
        "aepo.beta=-1.0",
        "aepo.solver.steps=0",
        "model.noise_network='transformer'",
    ):
        assert any(p.startswith(key) for p in problems), (key, problems)
    assert config_problems(ModelConfig(), AEPOConfig(), TrainConfig()) == []
    # the joint plan checks the joint loop's budget, not the staged ones
    joint = TrainConfig.from_dict({"plan": "joint", "critic": {"steps": 0}, "joint": {"steps": 0}})
    assert [p.split("=")[0] for p in joint.problems()] == ["train.joint.steps"]


def test_energy_baseline_value_regresses_the_advantage(data_root):
    rb, meta = make_offline_data(TASK, root=data_root, normalize_actions=True, seed=0)
    train = TrainConfig.budget(steps=1, batch_size=8)
    nets = build_networks(ModelConfig.small(), meta.obs_dim, meta.action_dim)
    for baseline in ("none", "value"):
        aepo = AEPOConfig(energy_baseline=baseline)
        losses = build_losses(nets, aepo, train)
        plan = build_training_plan(nets, losses, rb[:], aepo=aepo, train=train)
        plan._estimate_gamma()
        plan._build_energy()
        batch = rb[:16]
        target = plan.energy_loss.energy_target(
            batch["observation"], batch["action"], torch.full((16, 1), 0.5), torch.zeros(16, 1)
        )
        q = losses.critic.target_qvalue_network()(batch["observation"], batch["action"])
        q = q.min(-1, keepdim=True)[0]
        expected = q - (nets.value(batch["observation"]) if baseline == "value" else 0)
        torch.testing.assert_close(target["q"], expected.detach())


def test_critic_lower_bound_trades_advantage_against_head_disagreement():
    from torchrl_aepo.aepo import critic_lower_bound

    def rows(triples):
        return [{"guidance": w, "advantage": a, "head_gap": g} for w, a, g in triples]

    # measured signals (docs/locomotion.md): hopper's gain is small against its heads' gap
    hopper = rows([(0, -4.85, 2.23), (0.05, -3.16, 2.34), (0.1, -3.66, 2.43), (0.5, -2.37, 3.45),
                   (1, -2.79, 4.21)])  # fmt: skip
    assert critic_lower_bound(hopper) == 0.05
    assert critic_lower_bound(hopper, pessimism=0.0) == 0.5  # the advantage alone: w = 0.5
    walker = rows([(0, -1.49, 0.84), (0.1, 9.27, 1.13), (0.5, 13.7, 1.53), (1, 13.3, 1.85)])
    assert critic_lower_bound(walker) == 0.5
    falling = rows([(0, 1.0, 1.0), (0.5, 0.2, 1.0), (1, -1.0, 1.0)])
    assert critic_lower_bound(falling) == 0.0  # no degree beats the behaviour policy
    with pytest.raises(ValueError, match="pessimism"):
        critic_lower_bound(hopper, pessimism=-1.0)


def test_select_guidance_reads_the_critic_on_dataset_states():
    """A critic that rewards a_0 > 0 and a guided actor: the chosen degree ascends it."""
    from tensordict import TensorDict

    from torchrl_aepo import AEPOActor
    from torchrl_aepo.aepo import select_guidance

    class Noise(torch.nn.Module):  # exact eps of N(0, 0.25) data
        action_dim = 1

        def forward(self, x, t, obs):
            from torchrl_aepo import VPSchedule

            alpha, sigma = VPSchedule().alpha_sigma(t)
            return sigma * x / (alpha**2 * 0.25 + sigma**2)

    class Energy(torch.nn.Module):  # f = a_t[0]: guidance pushes a_0 up
        def forward(self, x, t, obs):
            return x[..., :1]

    class Critic(torch.nn.Module):
        def forward(self, obs, action):
            return action[..., :1].expand(*action.shape[:-1], 2)

    class Value(torch.nn.Module):
        def forward(self, obs):
            return torch.zeros(*obs.shape[:-1], 1)

    actor = AEPOActor(Noise(), Energy(), guidance_scale=0.3, rescale=False)
    data = TensorDict(
        {"observation": torch.zeros(256, 2), "action": torch.zeros(256, 1)}, batch_size=[256]
    )
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    choice = select_guidance(actor, Critic(), Value(), data, [0.25, 0.5, 1.0], states=128)
    torch.testing.assert_close(torch.rand(3), expected_next)  # the global random state is kept
    advantages = [r["advantage"] for r in choice.rows]
    assert [r["guidance"] for r in choice.rows] == [0.0, 0.25, 0.5, 1.0]
    assert advantages == sorted(advantages) and advantages[-1] > advantages[0] + 0.1
    assert choice.guidance > 0 and actor.guidance_scale == 0.3  # the actor's own w restored
    assert choice.dataset_actions["advantage"] == 0.0


def test_a_stage_lr_schedule_overrides_the_shared_one_for_that_stage_only(data_root):
    rb, meta = make_offline_data(TASK, root=data_root, normalize_actions=True, seed=0)
    budget = TrainConfig.budget(steps=10, batch_size=16)
    diffusion = dataclasses.replace(budget.diffusion, lr_schedule="cosine")
    train = dataclasses.replace(budget, diffusion=diffusion)
    nets = build_networks(ModelConfig.small(), meta.obs_dim, meta.action_dim)
    losses = build_losses(nets, AEPOConfig(), train)
    plan = build_training_plan(nets, losses, rb[:], aepo=AEPOConfig(), train=train)
    assert (train.lr_schedule_of("diffusion"), train.lr_schedule_of("critic")) == (
        "cosine", "constant")  # fmt: skip
    assert plan.critic_step.scheduler is None
    decay = plan.diffusion_step.scheduler.lr_lambdas[0]  # over the stage's 10 steps, to 0
    assert [decay(k) for k in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)
    bad = dataclasses.replace(budget, energy=dataclasses.replace(budget.energy, lr_schedule="step"))
    assert any(p.startswith("train.energy.lr_schedule='step'") for p in bad.problems())
