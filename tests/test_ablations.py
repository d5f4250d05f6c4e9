"""The paper's ablations as switches: config checks, the supports stage, hydra experiments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from recipe_overrides import tiny_recipe_overrides

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
from torchrl_aepo.aepo import build_energy_loss, config_problems
from torchrl_aepo.objectives import (
    AnalyticEnergyLoss,
    CEPEnergyLoss,
    CQLCriticLoss,
    DPSEnergyLoss,
    ExpectileLoss,
    ISQLLoss,
    LogMeanExpEnergyLoss,
    MSEEnergyLoss,
    SupportPosteriorEnergyLoss,
)

ROOT = Path(__file__).resolve().parents[1]
TASK = "pendulum-medium-replay"
TINY = [
    "aepo.num_support=4",
    *tiny_recipe_overrides(eval_max_steps=10, guidance_sweep="[0.0,0.5]", solver_steps=3),
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("minari")
    build_local_dataset(TASK, root=root, num_steps=800, ref_episodes=2)
    return root


def test_switches_are_validated_and_shape_the_plan():
    model, train = ModelConfig.small(), TrainConfig.budget(steps=5, batch_size=8)
    bad = AEPOConfig(critic="sac", energy="exact", num_support=1, isql_beta=-1, cql_alpha=-1)
    problems = "\n".join(config_problems(model, bad, train))
    for key in ("aepo.critic='sac'", "aepo.energy='exact'", "aepo.num_support=1",
                "aepo.isql_beta=-1", "aepo.cql_alpha=-1"):  # fmt: skip
        assert key in problems
    joint = TrainConfig.budget(steps=5, batch_size=8, plan="joint")
    assert any(
        "train.plan=joint" in p for p in config_problems(model, AEPOConfig(critic="isql"), joint)
    )
    stop_gamma = TrainConfig.budget(steps=5, batch_size=8, stop_after_stage="gamma")
    assert any("stop_after_stage='gamma'" in p
               for p in config_problems(model, AEPOConfig(energy="mse"), stop_gamma))  # fmt: skip
    assert config_problems(model, AEPOConfig(), stop_gamma) == []
    names = {
        ("expectile", "analytic"): ("diffusion", "critic", "gamma", "energy"),  # unchanged
        ("isql", "analytic"): ("diffusion", "supports", "critic", "gamma", "energy"),
        ("expectile", "mse"): ("diffusion", "critic", "energy"),
        ("isql", "cep"): ("diffusion", "supports", "critic", "energy"),
        ("expectile", "log_mean_exp"): ("diffusion", "critic", "energy"),
        ("expectile", "support_posterior"): ("diffusion", "supports", "critic", "energy"),
    }
    for (critic, energy), expected in names.items():
        assert train.stage_names(AEPOConfig(critic=critic, energy=energy)) == expected
    assert AEPOConfig(critic="cql").needs_supports() == (True, True)
    assert AEPOConfig(critic="isql").needs_supports() == (False, True)
    assert AEPOConfig(energy="cep").needs_supports() == (True, False)
    assert AEPOConfig(energy="support_posterior").needs_supports() == (True, False)


@pytest.mark.parametrize(
    "critic,energy,critic_cls,energy_cls",
    [
        ("expectile", "analytic", ExpectileLoss, AnalyticEnergyLoss),
        ("isql", "cep", ISQLLoss, CEPEnergyLoss),
        ("cql", "mse", CQLCriticLoss, MSEEnergyLoss),
        ("expectile", "dps", ExpectileLoss, DPSEnergyLoss),
        ("expectile", "support_posterior", ExpectileLoss, SupportPosteriorEnergyLoss),
    ],
)
def test_switches_reach_the_losses_and_train(
    data_root, tmp_path, critic, energy, critic_cls, energy_cls
):
    rb, meta = make_offline_data(TASK, root=data_root, seed=0)
    aepo = AEPOConfig(
        beta=0.3, energy_baseline="value", critic=critic, energy=energy, num_support=4
    )
    train = TrainConfig.budget(steps=6, batch_size=16)
    nets = build_networks(ModelConfig.small(), meta.obs_dim, meta.action_dim)
    losses = build_losses(nets, aepo, train)
    assert type(losses.critic) is critic_cls
    dataset = rb[:]
    plan = build_training_plan(nets, losses, dataset, aepo=aepo, train=train)
    summary = OfflineTrainer(plan.stages, rb, run_dir=tmp_path, progress_bar=False).train()
    assert list(summary["stages"]) == list(train.stage_names(aepo))
    assert type(plan.energy_loss) is energy_cls
    at_s, at_next = aepo.needs_supports()
    assert ("at_s" in plan.supports) == at_s and ("at_next" in plan.supports) == at_next
    for supports in plan.supports.values():
        assert supports.shape == (len(dataset), 4, meta.action_dim)
        assert supports.abs().max() <= 1.0
    if plan.supports:
        assert plan.support_stats["num_samples"] == 4 * len(dataset) * len(plan.supports)
        assert plan.support_stats["seconds"] > 0 and plan.support_stats["megabytes"] > 0
        batch = plan.with_supports(rb.sample(5))
        key = ("support", "action") if at_s else ("next", "support", "action")
        name = "at_s" if at_s else "at_next"
        torch.testing.assert_close(batch[key], plan.supports[name][batch["index"]])
    if energy == "support_posterior":  # the frozen critic's support values, computed once
        values = plan.energy_loss.support_values(batch["observation"], batch["support", "action"])
        torch.testing.assert_close(batch["support", "value"], values)


def test_supports_are_drawn_from_the_behaviour_model_once_and_restored(data_root, tmp_path):
    rb, meta = make_offline_data(TASK, root=data_root, seed=0)
    aepo = AEPOConfig(beta=0.3, critic="cql", num_support=4)
    train = TrainConfig.budget(steps=4, batch_size=16, stop_after_stage="supports")

    def plan_for():
        nets = build_networks(ModelConfig.small(), meta.obs_dim, meta.action_dim)
        losses = build_losses(nets, aepo, train)
        return build_training_plan(nets, losses, rb[:], aepo=aepo, train=train)

    first = plan_for()
    OfflineTrainer(first.stages, rb, run_dir=tmp_path, progress_bar=False,
                   stop_after_stage="supports").train()  # fmt: skip
    # the supports are the unguided DPM-Solver samples of the behaviour copy (seed + 2)
    from torchrl_aepo.diffusion.solver import DPMSolver
    from torchrl_aepo.objectives import sample_support_actions

    g = torch.Generator().manual_seed(2)
    solver = DPMSolver(first.losses.diffusion.schedule, **aepo.solver.to_dict())
    expected = sample_support_actions(first.nets.behaviour, rb[:]["observation"], 4,
                                      solver=solver, generator=g)  # fmt: skip
    torch.testing.assert_close(first.supports["at_s"], expected)
    second = plan_for()
    OfflineTrainer(second.stages, rb, run_dir=tmp_path, progress_bar=False).train()
    for name in ("at_s", "at_next"):
        torch.testing.assert_close(second.supports[name], first.supports[name])
    assert second.support_stats == first.support_stats


def test_energy_switch_builds_each_loss_and_analytic_needs_the_table():
    nets = build_networks(ModelConfig.small(), 3, 1)
    losses = build_losses(nets, AEPOConfig(), TrainConfig.budget(steps=1, batch_size=4))
    for energy, cls in (("mse", MSEEnergyLoss), ("dps", DPSEnergyLoss), ("cep", CEPEnergyLoss),
                        ("log_mean_exp", LogMeanExpEnergyLoss),
                        ("support_posterior", SupportPosteriorEnergyLoss)):  # fmt: skip
        assert type(build_energy_loss(nets, losses, AEPOConfig(energy=energy), None)) is cls
    capped = AEPOConfig(energy="log_mean_exp", energy_max_target=4.6)
    assert build_energy_loss(nets, losses, capped, None).max_target == 4.6
    assert any("energy_max_target" in p and "log_mean_exp" in p
               for p in AEPOConfig(energy_max_target=4.6).problems())  # fmt: skip
    with pytest.raises(ValueError, match="posterior statistics"):
        build_energy_loss(nets, losses, AEPOConfig(), None)


def _compose(*overrides, hydra_config=False):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        return compose(config_name="config", overrides=list(overrides),
                       return_hydra_config=hydra_config)  # fmt: skip


def test_each_ablation_is_one_override():
    default = _compose()
    assert default.aepo.critic == "expectile" and default.aepo.energy == "analytic"
    assert default.method is None
    expected = {
        "posterior2": {"posterior": 2}, "cql": {"critic": "cql"}, "isql": {"critic": "isql"},
        "qgpo": {"critic": "isql", "energy": "cep"}, "mse": {"energy": "mse"},
        "dps": {"energy": "dps"}, "cep": {"energy": "cep"}, "no_rescale": {"rescale": False},
        "log_mean_exp": {"energy": "log_mean_exp", "energy_max_target": 4.605},
        "support_posterior": {"energy": "support_posterior"},
        "paper_energy": {"energy_baseline": "none", "variance_weight": 1.0},
    }  # fmt: skip
    for name, keys in expected.items():
        cfg = _compose(f"ablation={name}")
        for key, value in keys.items():
            assert cfg.aepo[key] == value, (name, key)
        others = {k: v for k, v in cfg.aepo.items() if k not in keys}
        assert others == {k: v for k, v in default.aepo.items() if k not in keys}, name


def test_experiment_configs_compose():
    fig1 = _compose("+experiment=fig1", hydra_config=True)
    assert fig1.hydra.sweeper.params.ablation == "aepo,posterior2,cql,isql"
    fig2 = _compose("+experiment=fig2", "aepo.rescale=false", hydra_config=True)
    assert fig2.hydra.sweeper.params["aepo.rescale"] == "true,false"
    assert fig2.method == "AEPO (rescale False)"
    assert list(fig2.eval.guidance_sweep) == [0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 10.0]


def test_fig1_multirun_and_report(data_root, tmp_path):
    sweep_dir = tmp_path / "multirun"
    cmd = [
        sys.executable, str(ROOT / "recipes" / "aepo_offline.py"), "-m", "+experiment=fig1",
        f"task={TASK}", "ablation=aepo,isql", f"data.root={data_root}",
        f"hydra.sweep.dir={sweep_dir}", *TINY,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(sweep_dir.rglob("results.json"))]
    assert sorted(r["method"] for r in results) == ["AEPO", "AEPO-ISQL"]
    by_method = {r["method"]: r for r in results}
    assert by_method["AEPO"]["timings"]["support_actions"] is None
    cost = by_method["AEPO-ISQL"]["timings"]["support_actions"]
    assert cost["num_samples"] > 0 and cost["megabytes"] > 0
    assert list(by_method["AEPO-ISQL"]["timings"]["stages"]) == [
        "diffusion", "supports", "critic", "gamma", "energy"
    ]  # fmt: skip
    out = tmp_path / "report"
    report = subprocess.run(
        [sys.executable, "-m", "torchrl_aepo.report", str(sweep_dir), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stdout + report.stderr
    table = (out / "table.md").read_text()
    assert f"| {TASK} | AEPO | 1 |" in table and f"| {TASK} | AEPO-ISQL | 1 |" in table
    assert (out / "radar.png").exists() and (out / "guidance.png").exists()
