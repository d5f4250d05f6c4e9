"""Evaluations during training in TorchRL's Evaluator thread (``train.eval_mode=background``)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from recipe_overrides import tiny_recipe_overrides

from torchrl_aepo.actor import AEPOActor
from torchrl_aepo.background_eval import BackgroundEvaluation
from torchrl_aepo.diffusion.solver import DPMSolver
from torchrl_aepo.evaluation import guidance_sweep, make_eval_env
from torchrl_aepo.nets import EnergyNetwork, MLPNoisePredictor
from torchrl_aepo.trainer import OfflineTrainer

ROOT = Path(__file__).resolve().parents[1]
TASK = "pendulum-medium-expert"
KWARGS = {"episodes": 3, "max_steps": 15, "seed": 5}


def _actor(seed=0):
    torch.manual_seed(seed)
    return AEPOActor(
        MLPNoisePredictor(1, 3, num_cells=(16,)),
        EnergyNetwork(1, 3, num_cells=(16,)),
        action_spec=(torch.tensor([-2.0]), torch.tensor([2.0])),
        solver=DPMSolver(steps=3),
        guidance_scale=0.5,
    )


def _same(a, b):
    """Equal results, up to the wall time."""
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d.pop("seconds"), d.pop("steps_per_s")
    return da == db


@pytest.fixture(scope="module")
def env():
    env = make_eval_env("Pendulum-v1", 2, max_episode_steps=15)
    yield env
    env.close()


@pytest.mark.parametrize("exploration", ["random", "deterministic"])
def test_background_result_equals_sync_and_keeps_the_rngs(env, exploration):
    actor = _actor()
    kwargs = {**KWARGS, "exploration": exploration}
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    background = BackgroundEvaluation(actor, env, guidance=2.0, **kwargs)
    try:
        assert background.submit(actor, 7) == []
        ((step, result),) = background.drain()
    finally:
        background.close()
    # the training thread's global RNG was not touched by the background evaluation
    torch.testing.assert_close(torch.rand(3), expected_draw)
    sync = guidance_sweep(actor, env, [2.0], **kwargs)[0]
    assert step == 7 and result.guidance == 2.0 and result.seeds == [5, 6, 7]
    assert _same(result, sync)
    assert actor.guidance_scale == 0.5  # the live actor's degree is untouched
    assert background.stats()["evaluations"] == 1


def test_snapshot_is_isolated_from_later_training(env):
    actor = _actor()
    before = copy.deepcopy(actor)
    recorded = []
    background = BackgroundEvaluation(
        actor, env, guidance=1.0, on_result=lambda s, r: recorded.append((s, r)), **KWARGS
    )
    try:
        background.submit(actor, 3)
        with torch.no_grad():  # "training" goes on while the snapshot is evaluated
            for p in actor.parameters():
                p.add_(torch.randn_like(p))
        ((step, result),) = background.drain()
    finally:
        background.close()
    assert recorded == [(step, result)]
    assert _same(result, guidance_sweep(before, env, [1.0], **KWARGS)[0])
    assert not _same(result, guidance_sweep(actor, env, [1.0], **KWARGS)[0])


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_one_in_flight_and_errors_come_back(env):
    actor = _actor()
    background = BackgroundEvaluation(actor, env, guidance=1.0, **KWARGS)
    try:
        background.submit(actor, 1)
        done = background.submit(actor, 2)  # waits for step 1 unless it already finished
        done += background.drain()
        assert [s for s, _ in done] == [1, 2] and not background.pending
        assert _same(done[0][1], done[1][1])
    finally:
        background.close()
    broken = BackgroundEvaluation(actor, env, guidance=1.0, **{**KWARGS, "episodes": 0})
    try:
        broken.submit(actor, 4)
        with pytest.raises(RuntimeError, match="step 4 failed: ValueError: episodes"):
            broken.drain()
    finally:
        broken.close()
    # weights that do not fit the copy: the evaluator's own thread dies; an error, not a hang
    other = AEPOActor(
        MLPNoisePredictor(1, 3, num_cells=(8,)),
        EnergyNetwork(1, 3, num_cells=(8,)),
        action_spec=(torch.tensor([-2.0]), torch.tensor([2.0])),
    )
    mismatch = BackgroundEvaluation(actor, env, guidance=1.0, **KWARGS)
    try:
        mismatch.submit(other, 6)
        with pytest.raises(RuntimeError, match="stopped before returning the evaluation of step 6"):
            mismatch.drain()
    finally:
        mismatch.close()


def test_late_scalars_reach_the_logger_on_their_channel(tmp_path):
    class Logger:
        rows = []

        def log_scalar(self, name, value, step):
            self.rows.append((name, step))

    trainer = OfflineTrainer([], None, run_dir=tmp_path, logger=Logger(), progress_bar=False)
    trainer.log_scalar("energy/loss", 1.0, 20)
    trainer.log_scalar("energy/eval_normalized_score", 2.0, 10, channel="energy/eval")
    trainer.log_scalar("energy/late_scalar", 3.0, 15)  # its own sequence: sent
    trainer.log_scalar("energy/loss", 4.0, 15)  # before the last logged step of that scalar
    assert Logger.rows == [
        ("energy/loss", 20),
        ("energy/eval_normalized_score", 10),
        ("energy/late_scalar", 15),
    ]
    assert trainer.history["energy/loss"] == [[20, 1.0], [15, 4.0]]


# ------------------------------------------------------------------------------- the recipe
def _cfg(data_root, run_dir, *extra, eval_interval=5):
    overrides = tiny_recipe_overrides(steps=20, eval_max_steps=15, eval_interval=eval_interval)
    overrides.append("train.energy.lr=0.1")  # the policy changes visibly between evaluations
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        return compose(
            config_name="config",
            overrides=[f"task={TASK}", *overrides, f"data.root={data_root}",
                       f"run_dir={run_dir}", *extra],
        )  # fmt: skip


def test_recipe_background_records_what_sync_records(recipe, data_root, tmp_path):
    sync = recipe.run(_cfg(data_root, tmp_path / "sync"))
    background = recipe.run(_cfg(data_root, tmp_path / "bg", "train.eval_mode=background"))
    # evaluations at steps 5, 10, 15 (checkpoints every 10: 5 is collected by step 10)
    assert [s for s, _ in sync["eval_during_training"]] == [5, 10, 15]
    assert len({score for _, score in sync["eval_during_training"]}) > 1
    assert background["eval_during_training"] == sync["eval_during_training"]
    assert background["final"]["returns"] == sync["final"]["returns"]  # training unchanged
    assert background["config_hash"] == sync["config_hash"]
    assert background["train_config_hash"] == sync["train_config_hash"]
    stats = background["timings"]["eval_during_training"]
    assert stats["mode"] == "background" and stats["evaluations"] == 3
    assert "eval_during_training" not in sync["timings"]

    # killed at step 11: the evaluation of step 10 was submitted after checkpoint 10 was
    # complete and is lost with the process; the resumed run evaluates it again
    poll = BackgroundEvaluation.poll

    def killed(self):
        if 10 in self.in_flight:
            raise KeyboardInterrupt
        return poll(self)

    run_dir = tmp_path / "killed"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BackgroundEvaluation, "poll", killed)
        with pytest.raises(KeyboardInterrupt):
            recipe.run(_cfg(data_root, run_dir, "train.eval_mode=background"))
    resumed = recipe.run(_cfg(data_root, run_dir, "train.eval_mode=background"))
    assert resumed["train"]["stages"]["energy"]["resumed_from"] == 10
    assert resumed["eval_during_training"] == sync["eval_during_training"]
    assert resumed["final"]["returns"] == sync["final"]["returns"]


def test_recipe_config_check(recipe, data_root, tmp_path):
    import utils  # recipes/utils.py, on the path once the recipe is loaded

    with pytest.raises(
        utils.RecipeError, match=r"train.eval_mode='thread': use sync or background"
    ):
        utils.algorithm_config(_cfg(data_root, tmp_path, "train.eval_mode=thread"))
    # background without evaluations during training: nothing to do
    results = recipe.run(
        _cfg(data_root, tmp_path / "run", "train.eval_mode=background", eval_interval=0)
    )
    assert results["eval_during_training"] == []
    assert "eval_during_training" not in results["timings"]
