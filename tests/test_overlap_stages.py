"""``train.overlap_stages=true``: the critic stage trained in a child process during diffusion.

Tiny recipe runs (hydra's compose API, in-process; each overlapped run spawns one child, a few
seconds of start-up): the run finishes with every stage, is reproducible, resumes without
redoing finished stages, refuses what it does not support, and reports the child's failure.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from recipe_overrides import tiny_recipe_overrides

ROOT = Path(__file__).resolve().parents[1]
TASK = "pendulum-medium-expert"
TINY = [f"task={TASK}", *tiny_recipe_overrides(steps=30, logger=None), "train.overlap_stages=true"]


def _cfg(data_root, run_dir, *extra):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        return compose(
            config_name="config",
            overrides=[*TINY, f"data.root={data_root}", f"run_dir={run_dir}", *extra],
        )


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state"]


def _assert_equal_states(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal_states(a[key], b[key], f"{where}.{key}")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def overlapped(recipe, data_root, tmp_path_factory):
    """One finished overlapped run: (run_dir, results)."""
    run_dir = tmp_path_factory.mktemp("overlap") / "a"
    return run_dir, recipe.run(_cfg(data_root, run_dir))


def test_overlapped_run_trains_every_stage_and_logs_the_critic(overlapped):
    run_dir, results = overlapped
    assert (run_dir / "results.json").exists()
    stages = results["train"]["stages"]
    assert list(stages) == ["diffusion", "critic", "gamma", "energy"]
    assert all(s["done"] and s["steps"] in (1, 30) for s in stages.values())
    assert stages["critic"]["child_process"] and not stages["critic"]["skipped"]
    assert stages["critic"]["steps_this_run"] == 30
    overlap = results["timings"]["overlap"]
    assert set(overlap["stage_seconds"]) == {"diffusion", "critic"}
    assert overlap["wall_seconds"] > 0 and overlap["sequential_seconds"] > 0
    assert results["config"]["train"]["overlap_stages"] is True
    # the child had no logger: its scalars reached the run's logger from its checkpoint
    csv = run_dir / "logs" / "aepo" / "scalars" / "critic" / "loss_qvalue.csv"
    assert [line.split(",")[0] for line in csv.read_text().split()] == ["10", "20", "30"]


def test_overlapped_run_is_reproducible(recipe, data_root, tmp_path, overlapped):
    first_dir, first = overlapped
    second = recipe.run(_cfg(data_root, tmp_path / "b"))
    for stage in ("critic", "energy"):
        _assert_equal_states(
            _state(first_dir / "checkpoints" / f"{stage}.pt"),
            _state(tmp_path / "b" / "checkpoints" / f"{stage}.pt"),
            stage,
        )
    assert second["final"]["returns"] == first["final"]["returns"]
    assert second["train_config_hash"] == first["train_config_hash"]


def test_stop_and_resume_do_not_redo_finished_stages(recipe, data_root, tmp_path):
    run_dir = tmp_path / "run"
    stopped = recipe.run(_cfg(data_root, run_dir, "train.stop_after_stage=diffusion"))
    assert stopped["stopped_after"] == "diffusion"
    assert stopped["train"]["stages"]["critic"]["child_process"]  # waited for the child
    for stage in ("diffusion", "critic"):
        assert torch.load(run_dir / "checkpoints" / f"{stage}.pt", weights_only=True)["done"]
    assert not (run_dir / "results.json").exists()

    # both overlapped stages are finished: no child, both restored, gamma and energy trained
    results = recipe.run(_cfg(data_root, run_dir))
    stages = results["train"]["stages"]
    assert stages["diffusion"]["skipped"] and stages["critic"]["skipped"]
    assert "child_process" not in stages["critic"]
    assert stages["energy"]["steps_this_run"] == 30
    assert results["timings"]["overlap"] is None
    # the critic's scalars were logged once, by the first run
    csv = run_dir / "logs" / "aepo" / "scalars" / "critic" / "loss_qvalue.csv"
    assert [line.split(",")[0] for line in csv.read_text().split()] == ["10", "20", "30"]
    # eval_only ignores the key (nothing is trained)
    again = recipe.run(_cfg(data_root, run_dir, "eval_only=true", "aepo.guidance=0.0"))
    assert again["timings"].get("overlap") is None


def test_unsupported_combinations_are_refused_naming_the_keys(recipe, data_root, tmp_path):
    utils = recipe.utils
    cfg = _cfg(data_root, tmp_path, "train.plan=joint", "aepo.critic=cql", "train.num_seeds=2")
    with pytest.raises(recipe.RecipeError) as err:
        utils.algorithm_config(cfg)
    for key in ("train.plan='joint'", "aepo.critic='cql'", "train.num_seeds=2"):
        assert f"{key} with train.overlap_stages=true" in str(err.value)
    assert "train.overlap_stages=false" in str(err.value)
    with pytest.raises(recipe.RecipeError, match="train.overlap_stages='yes': use true or false"):
        utils.algorithm_config(_cfg(data_root, tmp_path, "train.overlap_stages=yes"))


def test_torchrun_is_refused(recipe, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    problems = recipe.utils.overlap_run_problems(_cfg(data_root, tmp_path), True)
    assert len(problems) == 1 and "torchrun (WORLD_SIZE=2)" in problems[0]


def test_the_childs_failure_is_reported_with_the_stage(recipe, data_root, tmp_path):
    with pytest.raises(recipe.RecipeError) as err:
        recipe.run(_cfg(data_root, tmp_path / "run", "train.critic.lr=1e30"))
    message = str(err.value)
    assert "stage 'critic', trained in child process" in message
    assert "NonFiniteError" in message and "train.overlap_stages=false" in message


def test_a_killed_child_is_reported_with_its_signal(recipe, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    targets = importlib.import_module("overlap_targets")
    overlapped_stages = importlib.import_module("overlapped_stages")  # recipes/ is on sys.path
    trainer = SimpleNamespace(
        stages=[SimpleNamespace(name="diffusion"), SimpleNamespace(name="critic")],
        register_op=lambda *_: None,
    )
    child = overlapped_stages.OverlappedStage(OmegaConf.create({}), tmp_path, trainer)
    child.launch(targets.sleep_then_report, (60.0,))
    child.process.kill()
    with pytest.raises(
        recipe.RecipeError, match="ended without a result .killed by signal SIGKILL"
    ):
        child.wait()
