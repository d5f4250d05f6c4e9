"""Hydra configs of the recipe: every task file composes and matches the task table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from torchrl_aepo.data.tasks import PAPER_TASKS, TASKS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TASK_FILES = sorted(p.stem for p in (CONFIGS / "task").glob("*.yaml") if p.stem != "minari")


def _compose(overrides=()):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        return compose(config_name="config", overrides=list(overrides))


def test_every_paper_and_local_task_has_a_file():
    local = [name for name, spec in TASKS.items() if spec.backend == "local"]
    assert len(PAPER_TASKS) == 33
    assert set(PAPER_TASKS) | set(local) == set(TASK_FILES)


def _recipe_utils():
    spec = importlib.util.spec_from_file_location("recipe_utils", ROOT / "recipes" / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_task_file_composes_and_matches_the_table():
    # The task files carry only the name (and per-task hyperparameters): the task the recipe
    # resolves from them is the table's.
    make_task = _recipe_utils().make_task
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        for name in TASK_FILES:
            cfg = compose(config_name="config", overrides=[f"task={name}"])
            OmegaConf.resolve(cfg)  # every interpolation resolves
            spec = TASKS[cfg.task.name]
            task = make_task(cfg.task)
            assert cfg.task.name == name
            assert task.dataset_id == spec.dataset_id, name
            assert task.eval_env_id == spec.eval_env_id, name
            assert task.max_episode_steps == spec.max_episode_steps, name
            assert task.backend == spec.backend, name


def test_generated_task_files_are_up_to_date():
    spec = importlib.util.spec_from_file_location("gen", CONFIGS / "generate_task_configs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.main(["--check"]) == 0, "run python configs/generate_task_configs.py"


def test_defaults_and_presets():
    cfg = _compose()
    assert cfg.task.name == "pendulum-medium-expert"
    assert cfg.logger.backend == "csv"
    assert cfg.train.plan == "staged"
    paper = _compose(["preset=paper"])
    assert paper.model.noise_network == "umlp"
    assert list(paper.model.noise_widths) == [512, 256, 128]
    assert paper.train.diffusion.steps == 600000 and paper.train.diffusion.batch_size == 4096
    assert paper.train.critic.steps == 1000000 and paper.train.energy.steps == 1000000
    assert paper.train.gamma_table.num_times == 1000
    assert paper.train.gamma_table.samples_per_time == 4096
    quick = _compose(["preset=quick"])
    assert quick.train.diffusion.steps < paper.train.diffusion.steps
    # locomotion: the faithful policy samples (aepo.latent_scale 1), the deployed one is the
    # sampler from the zero latent, one action per state, and passes the deploy checks
    loco = _compose(["preset=locomotion", "task=hopper-medium-local"])
    assert loco.aepo.latent_scale == 1.0 and loco.aepo.guidance_rule == "critic_lower_bound"
    assert loco.aepo.clip_denoised is True and paper.aepo.clip_denoised is False
    assert dict(loco.deploy) == {
        "num_candidates": 1, "selection": "first", "latent_scale": 0.0, "guidance_sweep": [0.0],
        "guidance": None,
    }  # fmt: skip
    assert _recipe_utils().deploy_problems(loco.deploy) == []
    mean = _compose(["deploy.num_candidates=16", "deploy.selection=mean"])
    assert _recipe_utils().deploy_problems(mean.deploy) == []
    best = _compose(["deploy.num_candidates=16", "deploy.selection=best"])
    assert _recipe_utils().deploy_problems(best.deploy) == [
        "deploy.selection='best': use argmax_q, softmax_q, mean or first"
    ]


def test_command_line_overrides():
    cfg = _compose(
        ["task=hopper-medium-v2", "aepo.beta=3", "eval.episodes=10", "logger=wandb", "device=cpu"]
    )
    assert cfg.task.name == "hopper-medium-v2"
    assert cfg.aepo.beta == 3
    assert cfg.eval.episodes == 10
    assert cfg.logger.backend == "wandb" and cfg.logger.mode == "offline"
    antmaze = _compose(["task=antmaze-umaze-v2"])
    assert antmaze.eval.episodes == 100  # per-family setting from the task file
    assert _compose(["task=antmaze-umaze-v2", "eval.episodes=7"]).eval.episodes == 7


def test_unknown_task_option_lists_the_options():
    with pytest.raises(MissingConfigException, match="pendulum-medium"):
        _compose(["task=pendulum-mediun"])


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "wandb", "none"])
def test_logger_group(logger):
    assert _compose([f"logger={logger}"]).logger.backend == logger


def test_minari_template_needs_a_name():
    cfg = _compose(["task=minari", "task.name=D4RL/door/human-v2"])
    assert cfg.task.name == "D4RL/door/human-v2"


def test_training_hash_covers_every_training_key_and_no_sampling_key():
    utils = _recipe_utils()
    base = utils.training_config(_compose())
    # sampling keys: never hashed (eval_only may change them)
    for override in ("aepo.guidance=3", "aepo.rescale=false", "aepo.num_candidates=4",
                     "aepo.solver.steps=5", "aepo.clip_denoised=true", "deploy.num_candidates=16"):  # fmt: skip
        assert utils.training_config(_compose([override])) == base, override
    # a training key changes the hash; one added later only off the value older runs had
    # (variance_weight: 1, Eq. 25), so those runs resume with aepo.variance_weight=1
    assert base["aepo"]["variance_weight"] == 0
    paper = utils.training_config(_compose(["aepo.variance_weight=1"]))
    assert "variance_weight" not in paper["aepo"]
    assert utils.training_config(_compose(["aepo.beta=1"]))["aepo"]["beta"] == 1
    assert "num_seeds" not in base["train"]  # train.num_seeds=1 (default): the old hash
    assert utils.training_config(_compose(["train.num_seeds=3"]))["train"]["num_seeds"] == 3
    # a stage's own lr schedule: hashed only when set, and only into that stage's settings
    assert all("lr_schedule" not in base["train"][s] for s in ("diffusion", "critic", "energy"))
    cosine = utils.training_config(_compose(["train.diffusion.lr_schedule=cosine"]))
    assert cosine["train"]["diffusion"]["lr_schedule"] == "cosine"
    assert cosine["train"]["critic"] == base["train"]["critic"]
    assert cosine["train"]["lr_schedule"] == base["train"]["lr_schedule"] == "constant"
