"""End-to-end tests of recipes/aepo_offline.py on a tiny local Pendulum dataset.

The recipe is composed with hydra's compose API and its ``run(cfg)`` is called in-process
(the hydra entry point only wraps it); one test runs the real command line.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from recipe_overrides import tiny_recipe_overrides

ROOT = Path(__file__).resolve().parents[1]
TASK = "pendulum-medium-expert"

TINY = [
    f"task={TASK}",
    *tiny_recipe_overrides(steps=30, guidance_sweep="[0.0,1.0]", eval_interval=15, logger=None),
]


def _cfg(data_root, run_dir, *extra):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        return compose(
            config_name="config",
            overrides=[*TINY, f"data.root={data_root}", f"run_dir={run_dir}", *extra],
        )


def test_smoke_end_to_end(recipe, data_root, tmp_path):
    run_dir = tmp_path / "run"
    results = recipe.run(_cfg(data_root, run_dir))

    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk["task"] == TASK
    assert on_disk["dataset"]["id"] == "local/pendulum/medium-expert-v0"
    assert on_disk["dataset"]["num_transitions"] > 0
    assert len(on_disk["config_hash"]) == 12
    assert on_disk["seeds"]["train"] == 0 and len(on_disk["seeds"]["eval_env_seeds"]) == 2
    chosen = on_disk["config"]["aepo"]["guidance"]
    for key in ("final", "behaviour"):
        entry = on_disk[key]
        assert len(entry["returns"]) == 2 and len(entry["normalized_scores"]) == 2
        for stat in ("normalized_mean", "normalized_std", "return_mean", "return_std"):
            assert isinstance(entry[stat], float)
    assert on_disk["final"]["guidance"] == chosen and on_disk["behaviour"]["guidance"] == 0.0
    assert sorted(r["guidance"] for r in on_disk["guidance_sweep"]) == sorted({0.0, 1.0, chosen})
    assert on_disk["best"]["during_training"]["normalized_score"] is not None
    assert [step for step, _ in on_disk["eval_during_training"]] == [15]
    stages = on_disk["timings"]["stages"]
    assert list(stages) == ["diffusion", "critic", "gamma", "energy"]
    for name in ("diffusion", "critic", "energy"):
        assert stages[name]["steps"] == 30 and stages[name]["updates_per_s"] > 0
    assert on_disk["timings"]["total_seconds"] > 0
    assert results["final"]["normalized_mean"] == on_disk["final"]["normalized_mean"]
    assert on_disk["deployed"] is None  # deploy.num_candidates=null: not evaluated

    for plot in ("training_losses.png", "eval_over_training.png", "guidance_sweep.png"):
        path = run_dir / "plots" / plot
        assert path.exists() and path.read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "actor.pt").exists()
    scalars = run_dir / "logs" / "aepo" / "scalars"
    assert (scalars / "diffusion" / "loss_diffusion.csv").exists()
    assert (scalars / "energy" / "loss_energy.csv").exists()
    for stage in ("diffusion", "critic", "gamma", "energy"):
        assert (run_dir / "checkpoints" / f"{stage}.pt").exists()


def test_resume_after_first_stage(recipe, data_root, tmp_path):
    run_dir = tmp_path / "run"
    stopped = recipe.run(
        _cfg(data_root, run_dir, "train.stop_after_stage=diffusion", "train.eval_interval=0")
    )
    assert stopped["stopped_after"] == "diffusion"
    assert (run_dir / "checkpoints" / "diffusion.pt").exists()
    assert not (run_dir / "checkpoints" / "critic.pt").exists()
    assert not (run_dir / "results.json").exists()

    # Same run dir, no stop: the diffusion stage is restored, not redone.
    results = recipe.run(_cfg(data_root, run_dir, "train.eval_interval=0"))
    stages = results["train"]["stages"]
    assert stages["diffusion"]["skipped"] and stages["diffusion"]["steps_this_run"] == 0
    assert stages["diffusion"]["steps"] == 30
    assert stages["critic"]["steps_this_run"] == 30 and not stages["critic"]["skipped"]
    assert stages["energy"]["steps_this_run"] == 30
    assert (run_dir / "results.json").exists()
    assert results["timings"]["stages"]["diffusion"]["skipped"] is True

    # A third run finds everything finished and only re-evaluates.
    again = recipe.run(_cfg(data_root, run_dir, "train.eval_interval=0"))
    assert all(s["skipped"] for s in again["train"]["stages"].values())


def test_changed_training_config_refuses_to_resume(recipe, data_root, tmp_path):
    run_dir = tmp_path / "run"
    recipe.run(_cfg(data_root, run_dir, "train.stop_after_stage=diffusion"))
    with pytest.raises(recipe.RecipeError, match="aepo.beta"):
        recipe.run(_cfg(data_root, run_dir, "aepo.beta=7"))


def test_unknown_task_lists_close_names(recipe, data_root, tmp_path):
    with pytest.raises(recipe.RecipeError, match="pendulum-medium"):
        recipe.run(_cfg(data_root, tmp_path / "run", "task.name=pendulum-mediun"))


def test_command_line_unknown_task(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "aepo_offline.py"),
            "task.name=hoper-medium-v2",
            f"run_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "hopper-medium-v2" in proc.stderr and "Traceback" not in proc.stderr


def test_joint_schedule(recipe, data_root, tmp_path):
    results = recipe.run(
        _cfg(
            data_root,
            tmp_path / "run",
            "train.plan=joint",
            "train.joint.steps=30",
            "train.joint.batch_size=64",
            "train.joint.gamma_refresh_interval=10",
        )
    )
    assert list(results["timings"]["stages"]) == ["joint"]
    assert results["timings"]["stages"]["joint"]["steps"] == 30
    assert [step for step, _ in results["eval_during_training"]] == [15]
    assert (tmp_path / "run" / "checkpoints" / "joint.pt").exists()


def test_resume_true_continues_the_latest_unfinished_run(recipe, data_root, tmp_path):
    first = tmp_path / "outputs" / TASK / "first"
    recipe.run(_cfg(data_root, first, "train.stop_after_stage=critic", "train.eval_interval=0"))
    results = recipe.run(
        _cfg(
            data_root,
            tmp_path / "outputs" / TASK / "second",
            "resume=true",
            "train.eval_interval=0",
        )
    )
    assert results["run_dir"] == str(first)
    assert results["train"]["stages"]["critic"]["skipped"]
    assert (first / "results.json").exists()
    with pytest.raises(recipe.RecipeError, match="no unfinished run"):
        recipe.run(_cfg(data_root, tmp_path / "elsewhere" / "x", "resume=true"))
    with pytest.raises(recipe.RecipeError, match="resume is off"):
        recipe.run(_cfg(data_root, first, "resume=false"))


def test_loggers(recipe, data_root, tmp_path):
    cfg = _cfg(data_root, tmp_path, "logger=none")
    assert recipe.utils.make_logger(cfg.logger, tmp_path) is None
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(recipe.RecipeError, match="pip install tensorboard"):
            recipe.utils.make_logger(
                _cfg(data_root, tmp_path, "logger=tensorboard").logger, tmp_path
            )
    logger = recipe.utils.make_logger(
        _cfg(data_root, tmp_path, "logger=wandb", "logger.mode=disabled").logger, tmp_path
    )
    logger.log_scalar("x", 1.0, step=1)
    logger.experiment.finish()


def test_adam_implementation_is_configurable(recipe, data_root, tmp_path):
    from torchrl_aepo.trainer import adam_step

    module = torch.nn.Linear(2, 2)
    for kind, flags in (("fused", {"fused": True}), ("foreach", {"foreach": True})):
        train = recipe.utils.algorithm_config(
            _cfg(data_root, tmp_path / kind, f"train.adam={kind}")
        )[2]
        step = adam_step(module, 1e-3, 10, adam=train.adam)
        assert all(step.optimizer.defaults[name] is value for name, value in flags.items())
    with pytest.raises(recipe.RecipeError, match="train.adam"):
        recipe.utils.algorithm_config(_cfg(data_root, tmp_path / "x", "train.adam=sgd"))
    with pytest.raises(ValueError, match="train.adam"):
        adam_step(module, 1e-3, 1, adam="sgd")


def test_compile_switch_compiles_losses_and_actor(recipe, data_root, tmp_path):
    cfg = _cfg(data_root, tmp_path / "run", "compile.enabled=true", "compile.mode=max-autotune")
    assert recipe.utils.compile_options(cfg.compile) == {"mode": "max-autotune"}
    assert recipe.utils.compile_options(_cfg(data_root, tmp_path / "off").compile) is None

    # A compiled loss trains at two batch sizes (the second compiles with dynamic shapes).
    from tensordict import TensorDict

    from torchrl_aepo.aepo import AEPOConfig, ModelConfig, TrainConfig, build_losses, build_networks

    options = recipe.utils.compile_options(
        _cfg(data_root, tmp_path / "on", "compile.enabled=true").compile
    )
    nets = build_networks(ModelConfig.small(), 3, 2)
    loss = build_losses(nets, AEPOConfig(), TrainConfig(), compile=options).diffusion
    assert loss._compiled_call_impl is not None
    for batch in (16, 24):
        td = TensorDict(
            {"observation": torch.randn(batch, 3), "action": torch.rand(batch, 2)}, [batch]
        )
        loss(td)["loss_diffusion"].backward()
        assert torch.isfinite(loss.noise_network_params["mlp", "0", "weight"].grad).all()


def test_bad_settings_are_refused_before_any_work(recipe, data_root, tmp_path):
    run_dir = tmp_path / "run"
    bad = [
        "train.critic.batch_size=0",
        "train.diffusion.steps=-1",
        "train.energy.steps=0",
        "eval.episodes=0",
        "eval.num_envs=-2",
        "aepo.expectile=1.5",
        "aepo.solver.steps=0",
        "aepo.latent_scale=-1",
        "deploy.latent_scale=-0.5",
        "deploy.num_candidates=1",  # with deploy.selection=argmax_q: nothing to select
        "deploy.guidance=-1",
    ]
    with pytest.raises(recipe.RecipeError) as err:
        recipe.run(_cfg(data_root, run_dir, *bad))
    message = str(err.value)
    assert "11 invalid setting(s)" in message
    for override in bad:
        assert override in message, (override, message)
    assert not run_dir.exists()  # refused before the run dir, data or training
    with pytest.raises(recipe.RecipeError, match=r"unknown key\(s\) \['aepo.gamma'\]"):
        recipe.run(_cfg(data_root, run_dir, "+aepo.gamma=0.9"))


def _register_pendulum(env_id: str, max_torque: float = 2.0) -> None:
    import gymnasium as gym
    import numpy as np
    from gymnasium.envs.classic_control.pendulum import PendulumEnv

    class Pendulum(PendulumEnv):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.max_torque = max_torque
            self.action_space = gym.spaces.Box(-max_torque, max_torque, (1,), np.float32)

    if env_id not in gym.registry:
        gym.register(env_id, entry_point=Pendulum, max_episode_steps=200)


def test_eval_env_is_checked_against_the_dataset_before_training(recipe, data_root, tmp_path):
    # a 1-D [-2, 2] dataset against a 1-D [-4, 4] env, and against an 11-D observation env
    _register_pendulum("PendulumWideTorque-v0", max_torque=4.0)
    for env_id, what in (
        ("PendulumWideTorque-v0", "action box"),
        ("InvertedDoublePendulum-v5", "observation size 9"),
    ):
        run_dir = tmp_path / env_id
        with pytest.raises(recipe.RecipeError, match=what) as err:
            recipe.run(_cfg(data_root, run_dir, f"task.eval_env_id={env_id}"))
        assert "does not match the dataset" in str(err.value)
        assert not (run_dir / "checkpoints").exists()


def test_eval_env_override_is_honoured(recipe, data_root, tmp_path):
    _register_pendulum("PendulumCopy-v0")
    results = recipe.run(
        _cfg(
            data_root, tmp_path / "run", "task.eval_env_id=PendulumCopy-v0", "train.eval_interval=0"
        )
    )
    assert results["dataset"]["metadata"]["eval_env_id"] == "PendulumCopy-v0"


def test_non_finite_scores_are_an_error_and_other_values_explicit(recipe, tmp_path):
    import numpy as np

    path = tmp_path / "results.json"
    bad = {
        "final": {"normalized_mean": float("nan")},
        "guidance_sweep": [{"x": 1.0}, {"x": -np.inf}],
    }
    with pytest.raises(
        recipe.RecipeError, match=r"final.normalized_mean=nan, guidance_sweep\[1\].x=-inf"
    ):
        recipe.utils.write_results(path, bad)
    assert not path.exists()
    recipe.utils.write_results(
        path,
        {"final": {"normalized_mean": 1.5}, "timings": {"a": float("inf"), "b": np.float64("nan")}},
    )
    assert json.loads(path.read_text()) == {
        "final": {"normalized_mean": 1.5},
        "timings": {"a": "inf", "b": "nan"},
    }
    assert "null" not in path.read_text()


def test_diverging_training_stops_with_a_clear_error(recipe, data_root, tmp_path):
    run_dir = tmp_path / "run"
    cfg = _cfg(data_root, run_dir, "train.diffusion.lr=1e30", "train.adam=loop")
    with pytest.raises(
        recipe.RecipeError,
        match=r"Training stopped in stage 'diffusion' at step \d+/30: non-finite loss_diffusion",
    ) as err:
        recipe.run(cfg)
    assert "start a new run_dir" in str(err.value)
    assert not (run_dir / "results.json").exists() and not (run_dir / "actor.pt").exists()


def test_eval_only_evaluates_a_finished_run_under_other_sampling_settings(
    recipe, data_root, tmp_path
):
    run_dir = tmp_path / "run"
    recipe.run(_cfg(data_root, run_dir, "train.eval_interval=0"))
    original = (run_dir / "results.json").read_bytes()
    sampling = ["aepo.guidance=2.0", "aepo.num_candidates=4", "aepo.selection=argmax_q"]
    again = recipe.run(
        _cfg(
            data_root,
            run_dir,
            "eval_only=true",
            "eval.guidance_sweep=[0.0]",
            "deploy.num_candidates=3",
            "deploy.guidance_sweep=[0.0]",
            "deploy.latent_scale=0.5",
            *sampling,
        )
    )
    assert all(s["skipped"] and s["steps_this_run"] == 0 for s in again["train"]["stages"].values())
    assert (run_dir / "results.json").read_bytes() == original  # never overwritten
    written = list(run_dir.glob("results.eval-*.json"))
    assert len(written) == 1
    on_disk = json.loads(written[0].read_text())
    assert on_disk["final"]["guidance"] == 2.0
    assert on_disk["deployed"]["num_candidates"] == 3 and on_disk["deployed"]["guidance"] == 2.0
    assert on_disk["deployed"]["latent_scale"] == 0.5  # the effective value is recorded
    assert len(on_disk["deployed"]["returns"]) == 2
    assert [r["guidance"] for r in on_disk["deployed_sweep"]] == [0.0, 2.0]
    assert on_disk["deployed_sweep"][1] == {
        k: v for k, v in on_disk["deployed"].items() if k in on_disk["deployed_sweep"][1]
    }
    assert on_disk["config"]["aepo"]["num_candidates"] == 4
    # the deployed policy at its own degree (deploy.guidance), the reported one unchanged
    own = recipe.run(
        _cfg(data_root, run_dir, "eval_only=true", "eval.guidance_sweep=[0.0]",
             "deploy.num_candidates=1", "deploy.selection=first", "deploy.guidance=0.5",
             "aepo.guidance=2.0")
    )  # fmt: skip
    assert own["final"]["guidance"] == 2.0 and own["deployed"]["guidance"] == 0.5
    assert [r["guidance"] for r in own["deployed_sweep"]] == [0.5]
    # a training key may not differ: refused with the changed key
    with pytest.raises(recipe.RecipeError, match=r"aepo.beta"):
        recipe.run(_cfg(data_root, run_dir, "eval_only=true", "aepo.beta=7"))
    # an unfinished run cannot be evaluated without training
    unfinished = tmp_path / "unfinished"
    recipe.run(_cfg(data_root, unfinished, "train.stop_after_stage=diffusion"))
    with pytest.raises(recipe.RecipeError, match="not finished"):
        recipe.run(_cfg(data_root, unfinished, "eval_only=true"))
    assert not list(unfinished.glob("results*.json"))


def test_init_from_reuses_the_stages_whose_settings_are_unchanged(recipe, data_root, tmp_path):
    first = tmp_path / "first"
    recipe.run(_cfg(data_root, first, "train.eval_interval=0"))
    # only energy settings change: behaviour model, critic and Gamma table are reused
    energy_only = recipe.run(
        _cfg(
            data_root,
            tmp_path / "energy_only",
            f"init_from={first}",
            "aepo.beta=0.7",
            "aepo.energy_baseline=none",
            "train.eval_interval=0",
        )
    )
    stages = energy_only["train"]["stages"]
    assert [k for k, v in stages.items() if v["skipped"]] == ["diffusion", "critic", "gamma"]
    assert stages["energy"]["steps_this_run"] == 30
    a = torch.load(first / "checkpoints" / "diffusion.pt", weights_only=True)["state"]["loss"]
    b = torch.load(tmp_path / "energy_only" / "checkpoints" / "diffusion.pt", weights_only=True)
    assert all(torch.equal(v, b["state"]["loss"][k]) for k, v in a.items())
    assert b["imported_from"].endswith("diffusion.pt")
    # another energy (an ablation) on the same expectile critic reuses it too
    mse = recipe.run(
        _cfg(
            data_root,
            tmp_path / "mse",
            f"init_from={first}",
            "ablation=mse",
            "train.eval_interval=0",
        )
    )
    assert [k for k, v in mse["train"]["stages"].items() if v["skipped"]] == [
        "diffusion",
        "critic",
    ]
    # a behaviour-model setting changes: the critic (independent of it) is the only reuse
    other = recipe.run(
        _cfg(
            data_root,
            tmp_path / "other",
            f"init_from={first}",
            "train.diffusion.lr=0.002",
            "train.diffusion.lr_schedule=cosine",  # its own schedule: not the critic's key
            "train.eval_interval=0",
        )
    )
    assert [k for k, v in other["train"]["stages"].items() if v["skipped"]] == ["critic"]
    # the advantage-weighted behaviour model: the critic first (reused), the rest retrained
    weighted = recipe.run(
        _cfg(
            data_root,
            tmp_path / "weighted",
            f"init_from={first}",
            "aepo.behaviour_weighting=advantage",
            "train.eval_interval=0",
        )
    )
    stages = weighted["train"]["stages"]
    assert list(stages) == ["critic", "diffusion", "gamma", "energy"]
    assert [k for k, v in stages.items() if v["skipped"]] == ["critic"]
    assert math.isfinite(weighted["final"]["normalized_mean"])


# ------------------------------------------------------------- train.num_seeds (stacked seeds)
SEEDS = ["train.num_seeds=2", "train.eval_interval=0", "seed=3"]


def _check_multi_seed_results(run_dir, results):
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk["num_seeds"] == 2 and [s["seed"] for s in on_disk["seeds"]] == [3, 4]
    for key in ("final", "behaviour"):
        means = [s[key]["normalized_mean"] for s in on_disk["seeds"]]
        assert all(math.isfinite(m) for m in means)
        assert on_disk[key]["normalized_mean"] == pytest.approx(sum(means) / 2)
        assert on_disk[key]["normalized_std"] == pytest.approx(abs(means[0] - means[1]) / 2)
        assert on_disk[key]["normalized_scores"] == pytest.approx(means)
    assert results["final"]["normalized_mean"] == on_disk["final"]["normalized_mean"]
    for seed in (3, 4):
        assert (run_dir / f"actor_seed{seed}.pt").exists()
    return on_disk


def test_num_seeds_trains_stacked_seeds_and_reports_each(recipe, data_root, tmp_path):
    run_dir = tmp_path / "run"
    results = recipe.run(_cfg(data_root, run_dir, *SEEDS, "deploy.num_candidates=2"))
    on_disk = _check_multi_seed_results(run_dir, results)
    assert list(on_disk["timings"]["stages"]) == ["diffusion", "critic", "gamma", "energy"]
    deployed = [s["deployed"]["normalized_mean"] for s in on_disk["seeds"]]
    assert on_disk["deployed"]["normalized_mean"] == pytest.approx(sum(deployed) / 2)
    # the members are different seeds: different trained weights
    assert on_disk["seeds"][0]["final"]["returns"] != on_disk["seeds"][1]["final"]["returns"]
    from torchrl_aepo.report import load_runs  # the ablation report: one run per seed

    runs = load_runs([run_dir])
    assert [r.seed for r in runs] == [3, 4]
    assert [r.final for r in runs] == [s["final"]["normalized_mean"] for s in on_disk["seeds"]]


def test_num_seeds_resumes_after_a_stage(recipe, data_root, tmp_path):
    run_dir = tmp_path / "run"
    stopped = recipe.run(_cfg(data_root, run_dir, *SEEDS, "train.stop_after_stage=critic"))
    assert stopped["stopped_after"] == "critic"
    assert (run_dir / "checkpoints" / "critic.pt").exists()
    assert not (run_dir / "checkpoints" / "gamma.pt").exists()
    results = recipe.run(_cfg(data_root, run_dir, *SEEDS))
    stages = results["train"]["stages"]
    assert stages["diffusion"]["skipped"] and stages["critic"]["skipped"]
    assert stages["energy"]["steps_this_run"] == 30 and not stages["energy"]["skipped"]
    _check_multi_seed_results(run_dir, results)


def test_num_seeds_refuses_unsupported_settings_before_any_work(recipe, data_root, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(recipe.RecipeError) as err:
        recipe.run(_cfg(data_root, run_dir, *SEEDS, "aepo.critic=cql", "train.grad_clip=1.0"))
    message = str(err.value)
    assert "aepo.critic='cql' with train.num_seeds=2" in message
    assert "train.grad_clip=1.0 with train.num_seeds=2" in message
    assert not run_dir.exists()


def test_guidance_chosen_from_dataset_states(recipe, data_root, tmp_path):
    run_dir = tmp_path / "run"
    rule = ["aepo.guidance_rule=critic_lower_bound", "aepo.guidance_ladder=[0.5,2.0]",
            "aepo.guidance_states=32", "eval.guidance_sweep=[0.0]"]  # fmt: skip
    recipe.run(_cfg(data_root, run_dir, *rule))
    on_disk = json.loads((run_dir / "results.json").read_text())
    selection = on_disk["guidance_selection"]
    assert selection["rule"] == "critic_lower_bound" and selection["states"] == 32
    assert [r["guidance"] for r in selection["rows"]] == [0.0, 0.5, 2.0]
    assert on_disk["final"]["guidance"] == selection["guidance"]
    # the rule is a sampling setting: eval_only may switch it off again
    cfg = _cfg(data_root, run_dir, "eval_only=true", "eval.guidance_sweep=[0.0]")
    again = recipe.run(cfg)
    assert again["guidance_selection"] is None
    assert again["final"]["guidance"] == cfg.aepo.guidance
