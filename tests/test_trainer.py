"""OfflineTrainer running AEPO's training plan: staged and joint schedules, checkpoints, resume, errors."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

from torchrl_aepo.aepo import (
    AEPOConfig,
    CriticStageConfig,
    DiffusionStageConfig,
    EnergyStageConfig,
    GammaTableConfig,
    JointStageConfig,
    ModelConfig,
    TrainConfig,
    build_losses,
    build_networks,
    build_training_plan,
)
from torchrl_aepo.objectives import PosteriorStatistics
from torchrl_aepo.trainer import (
    CheckpointError,
    NonFiniteError,
    OfflineTrainer,
    OptimizerStep,
    Stage,
)

OBS, ACT, N = 3, 1, 512


def _buffer(seed=0, sampler_seed=None, reward_nan=False):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(N, OBS, generator=g)
    act = torch.rand(N, ACT, generator=g) * 2 - 1
    data = TensorDict(
        {
            "observation": obs,
            "action": act,
            "next": {
                "observation": obs + 0.1 * torch.randn(N, OBS, generator=g),
                "reward": torch.full_like(act, float("nan")) if reward_nan else -(act**2),
                "terminated": torch.zeros(N, 1, dtype=torch.bool),
                "done": torch.zeros(N, 1, dtype=torch.bool),
            },
        },
        batch_size=[N],
    )
    generator = None if sampler_seed is None else torch.Generator().manual_seed(sampler_seed)
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(N), batch_size=32, generator=generator)
    rb.extend(data)
    return rb


def _train_config(plan="staged", steps=None):
    steps = steps or {"diffusion": 7, "critic": 5, "energy": 6, "joint": 9}
    return TrainConfig(
        plan=plan,
        diffusion=DiffusionStageConfig(steps["diffusion"], 32, 1e-3, ema_decay=0.99),
        critic=CriticStageConfig(steps["critic"], 32, 1e-3, target_tau=0.005),
        gamma_table=GammaTableConfig(num_times=5, samples_per_time=16),
        energy=EnergyStageConfig(steps["energy"], 32, 1e-3),
        joint=JointStageConfig(steps["joint"], 32, gamma_refresh_interval=4),
        adam="loop",
    )


def _setup(schedule="staged", steps=None, sampler_seed=None, **data):
    """AEPO's plan (torchrl_aepo.aepo) as a realistic multi-stage workload of the trainer."""
    torch.manual_seed(0)
    cells = (16, 16)
    model = ModelConfig("mlp", noise_num_cells=cells, qvalue_num_cells=cells,
                        value_num_cells=cells, energy_num_cells=cells)  # fmt: skip
    aepo = AEPOConfig()
    train = _train_config(schedule, steps)
    nets = build_networks(model, OBS, ACT)
    losses = build_losses(nets, aepo, train)
    rb = _buffer(sampler_seed=sampler_seed, **data)
    plan = build_training_plan(nets, losses, rb[:], aepo=aepo, train=train)
    named = {
        "noise": nets.noise,
        "behaviour": nets.behaviour,
        "energy": nets.energy,
        "q": nets.qvalue,
    }
    return plan.stages, plan, rb, named


def _trainer(tmp_path, stages, rb, **kwargs):
    kwargs.setdefault("config", {"a": 1})
    return OfflineTrainer(
        stages,
        rb,
        run_dir=tmp_path,
        log_interval=2,
        checkpoint_interval=3,
        progress_bar=False,
        **kwargs,
    )


def test_staged_runs_every_stage_and_checkpoints(tmp_path):
    stages, ctx, rb, nets = _setup()
    trainer = _trainer(tmp_path, stages, rb)
    summary = trainer.train()
    assert [s for s in summary["stages"]] == ["diffusion", "critic", "gamma", "energy"]
    assert summary["stages"]["diffusion"]["steps"] == 7
    assert summary["stages"]["energy"]["steps"] == 6
    assert all(v["done"] and not v["skipped"] for v in summary["stages"].values())
    for name in ("diffusion", "critic", "gamma", "energy"):
        assert (tmp_path / "checkpoints" / f"{name}.pt").exists()
    assert "diffusion/loss_diffusion" in trainer.history
    assert "energy/loss_energy" in trainer.history
    assert isinstance(ctx.posterior, PosteriorStatistics)
    # the sampling network received the EMA weights of the diffusion loss
    ema = stages[0].stateful()["loss"].sampling_network()
    for a, b in zip(ema.parameters(), nets["behaviour"].parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_resume_skips_finished_stages(tmp_path):
    stages, _, rb, _ = _setup()
    first = _trainer(tmp_path, stages, rb, stop_after_stage="critic").train()
    assert first["stopped_after"] == "critic"
    assert not (tmp_path / "checkpoints" / "energy.pt").exists()
    energy_before = None

    stages, ctx, rb, nets = _setup()  # fresh process: new, untrained modules
    energy_before = [p.clone() for p in nets["energy"].parameters()]
    trainer = _trainer(tmp_path, stages, rb)
    second = trainer.train()
    assert second["stages"]["diffusion"]["skipped"] and second["stages"]["critic"]["skipped"]
    assert second["stages"]["diffusion"]["steps_this_run"] == 0
    assert second["stages"]["critic"]["steps_this_run"] == 0
    assert second["stages"]["gamma"]["steps_this_run"] == 1
    assert second["stages"]["energy"]["steps_this_run"] == 6
    # diffusion weights were restored from the checkpoint, not left at their init
    saved = torch.load(tmp_path / "checkpoints" / "diffusion.pt", weights_only=True)
    w = saved["state"]["loss"]["noise_network_params.mlp.0.weight"]
    torch.testing.assert_close(nets["noise"].mlp[0].weight, w)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(energy_before, nets["energy"].parameters(), strict=True)
    )
    # history of the restored stages is kept (for plots)
    assert len(trainer.history["diffusion/loss_diffusion"]) >= 1


def test_resume_mid_stage_loses_at_most_one_interval(tmp_path):
    stages, _, rb, _ = _setup(steps={"diffusion": 8, "critic": 2, "energy": 2, "joint": 2})
    trainer = _trainer(tmp_path, stages, rb)

    calls = {"n": 0}

    def interrupt(stage, step, metrics):
        if stage == "diffusion" and step == 7:
            raise KeyboardInterrupt

    trainer.register_op("post_optim", interrupt)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    saved = torch.load(tmp_path / "checkpoints" / "diffusion.pt", weights_only=True)
    assert saved["step"] == 6 and not saved["done"]  # checkpoint_interval = 3

    stages, _, rb, _ = _setup(steps={"diffusion": 8, "critic": 2, "energy": 2, "joint": 2})
    trainer = _trainer(tmp_path, stages, rb)
    trainer.register_op("post_optim", lambda *a: calls.__setitem__("n", calls["n"] + 1))
    summary = trainer.train()
    assert summary["stages"]["diffusion"]["resumed_from"] == 6
    assert summary["stages"]["diffusion"]["steps_this_run"] == 2


def test_joint_schedule(tmp_path):
    stages, ctx, rb, _ = _setup("joint")
    assert [s.name for s in stages] == ["joint"]
    summary = _trainer(tmp_path, stages, rb).train()
    assert summary["stages"]["joint"]["steps"] == 9
    assert (tmp_path / "checkpoints" / "joint.pt").exists()
    stages, ctx, rb, _ = _setup("joint")
    again = _trainer(tmp_path, stages, rb).train()
    assert again["stages"]["joint"]["skipped"]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    stages, _, rb, _ = _setup()
    _trainer(tmp_path, stages, rb, stop_after_stage="diffusion").train()
    (tmp_path / "checkpoints" / "diffusion.pt").write_bytes(b"not a checkpoint")
    stages, _, rb, _ = _setup()
    with pytest.raises(CheckpointError, match="corrupt"):
        _trainer(tmp_path, stages, rb).train()


def test_changed_config_is_a_clear_error(tmp_path):
    stages, _, rb, _ = _setup()
    _trainer(tmp_path, stages, rb, stop_after_stage="diffusion").train()
    stages, _, rb, _ = _setup()
    with pytest.raises(CheckpointError, match=r"a: 1 -> 2"):
        _trainer(tmp_path, stages, rb, config={"a": 2}).train()


def test_resume_off_refuses_existing_checkpoints(tmp_path):
    stages, _, rb, _ = _setup()
    _trainer(tmp_path, stages, rb, stop_after_stage="diffusion").train()
    stages, _, rb, _ = _setup()
    with pytest.raises(CheckpointError, match="resume is off"):
        _trainer(tmp_path, stages, rb, resume=False).train()


def test_bad_arguments():
    stages, _, rb, _ = _setup()
    with pytest.raises(ValueError, match="stop_after_stage"):
        OfflineTrainer(stages, rb, run_dir=".", stop_after_stage="nope")
    with pytest.raises(ValueError, match="plan"):
        build_training_plan(None, None, rb[:], aepo=AEPOConfig(), train=TrainConfig(plan="nope"))
    trainer = OfflineTrainer(stages, rb, run_dir=".")
    with pytest.raises(ValueError, match="hook destination"):
        trainer.register_op("nope", print)
    with pytest.raises(ValueError, match=r"only_stages=\['nope'\] names \['nope'\]"):
        OfflineTrainer(stages, rb, run_dir=".", only_stages=("nope",))
    with pytest.raises(ValueError, match="only_stages=\\[\\] is empty"):
        OfflineTrainer(stages, rb, run_dir=".", only_stages=())
    with pytest.raises(ValueError, match="stop_after_stage='energy'"):
        OfflineTrainer(stages, rb, run_dir=".", only_stages=("critic",), stop_after_stage="energy")


def test_only_stages_trains_a_subset_that_the_full_run_restores_and_logs(tmp_path):
    """One trainer trains the critic alone (as another process would, without a logger) when
    the full run starts (``pre_train``, after its resume=False check); the full run trains the
    other stages, restores the critic and sends its recorded scalars to its logger once."""
    from torchrl.record.loggers import get_logger

    def train_critic_alone() -> None:
        stages, _, rb, _ = _setup()
        summary = _trainer(tmp_path, stages, rb, only_stages=["critic"]).train()
        assert list(summary["stages"]) == ["critic"] and summary["stages"]["critic"]["done"]
        assert [p.name for p in (tmp_path / "checkpoints").glob("*.pt")] == ["critic.pt"]

    stages, _, rb, _ = _setup()
    logger = get_logger("csv", str(tmp_path / "logs"), "x")
    trainer = _trainer(tmp_path, stages, rb, logger=logger, resume=False)
    trainer.register_op("pre_train", train_critic_alone)
    trainer.register_op("post_stage", lambda s, _: s == "critic" and trainer.log_history(s))
    summary = trainer.train()["stages"]
    assert summary["critic"]["skipped"] and summary["critic"]["steps"] == 5
    assert not summary["diffusion"]["skipped"] and summary["energy"]["steps_this_run"] == 6
    csv = tmp_path / "logs" / "x" / "scalars" / "critic" / "loss_qvalue.csv"
    assert [row.split(",")[0] for row in csv.read_text().split()] == ["2", "4", "5"]
    assert trainer.log_history("critic") == 0  # already sent: never twice


# ------------------------------------------------------------- reproducible resume (issue 17)


def _snapshot(stages, nets):
    """Every tensor a run ends with: stage states (losses, optimisers, Gamma) and networks."""
    out = {}
    for stage in stages:
        for name, obj in stage.stateful().items():
            for key, value in _flatten(obj.state_dict(), f"{stage.name}.{name}"):
                out[key] = value
    for name, net in nets.items():
        for key, value in net.state_dict().items():
            out[f"net.{name}.{key}"] = value
    return out


def _flatten(obj, prefix):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj.detach().clone()
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _flatten(v, f"{prefix}.{i}")
    else:
        yield prefix, obj


def _interrupt_at(stage_name, at_step):
    def op(stage, step, _metrics):
        if stage == stage_name and step == at_step:
            raise KeyboardInterrupt

    return op


def _history(trainer):
    return {k: v for k, v in trainer.history.items() if not k.endswith("updates_per_s")}


@pytest.mark.parametrize(
    "schedule, kills",
    [("staged", [("diffusion", 5), ("critic", 5), ("energy", 7)]), ("joint", [("joint", 7)])],
)
def test_killed_and_resumed_run_equals_the_uninterrupted_one_bitwise(tmp_path, schedule, kills):
    """The replay buffer's sampler generator (and any extra generator) is checkpointed."""
    steps = {"diffusion": 8, "critic": 7, "energy": 8, "joint": 11}

    def build():
        stages, plan, rb, nets = _setup(schedule, steps, sampler_seed=3)
        return stages, rb, nets, {"gamma": plan.gamma_generator}

    stages, rb, nets, gens = build()
    reference = _trainer(tmp_path / "ref", stages, rb, generators=gens)
    reference.train()
    expected = _snapshot(stages, nets)

    run = tmp_path / "killed"
    for stage_name, step in kills:  # each kill is a fresh "process": new modules, new buffer
        stages, rb, nets, gens = build()
        trainer = _trainer(run, stages, rb, generators=gens)
        trainer.register_op("post_optim", _interrupt_at(stage_name, step))
        with pytest.raises(KeyboardInterrupt):
            trainer.train()
    stages, rb, nets, gens = build()
    resumed = _trainer(run, stages, rb, generators=gens)
    summary = resumed.train()
    assert summary["stages"][kills[-1][0]]["resumed_from"] is not None
    got = _snapshot(stages, nets)
    assert got.keys() == expected.keys()
    different = [
        k
        for k in expected
        if not (
            torch.equal(got[k], expected[k])
            if isinstance(expected[k], torch.Tensor)
            else got[k] == expected[k]
        )
    ]
    assert not different, different[:5]
    assert _history(resumed) == _history(reference)


def test_csv_logs_do_not_repeat_steps_after_a_resume(tmp_path):
    from torchrl.record.loggers import get_logger

    def rows(run):
        path = run / "logs" / "x" / "scalars" / "diffusion" / "loss_diffusion.csv"
        return [tuple(float(v) for v in line.split(",")) for line in path.read_text().split()]

    steps = {"diffusion": 8, "critic": 1, "energy": 1, "joint": 1}
    stages, _, rb, _ = _setup(steps=steps, sampler_seed=3)
    logger = get_logger("csv", str(tmp_path / "ref" / "logs"), "x")
    _trainer(tmp_path / "ref", stages, rb, logger=logger, stop_after_stage="diffusion").train()

    run = tmp_path / "killed"
    stages, _, rb, _ = _setup(steps=steps, sampler_seed=3)
    trainer = _trainer(run, stages, rb, logger=get_logger("csv", str(run / "logs"), "x"))
    # killed at step 5: step 4 was logged, the last checkpoint is at step 3
    trainer.register_op("post_optim", _interrupt_at("diffusion", 5))
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert [r[0] for r in rows(run)] == [2.0, 4.0]
    stages, _, rb, _ = _setup(steps=steps, sampler_seed=3)
    logger = get_logger("csv", str(run / "logs"), "x")
    _trainer(run, stages, rb, logger=logger, stop_after_stage="diffusion").train()
    assert [r[0] for r in rows(run)] == [2.0, 4.0, 6.0, 8.0]
    assert rows(run) == rows(tmp_path / "ref")


def test_every_scalar_logged_at_one_step_reaches_the_logger(tmp_path):
    from torchrl.record.loggers import get_logger

    stages, _, rb, _ = _setup(steps={"diffusion": 2, "critic": 1, "energy": 1, "joint": 1})
    trainer = _trainer(tmp_path, stages, rb, logger=get_logger("csv", str(tmp_path / "logs"), "x"))
    trainer.log_scalar("energy/a", 1.0, step=10)
    trainer.log_scalar("energy/b", 2.0, step=10)
    trainer.log_scalar("energy/a", 3.0, step=10)  # a repeat of (a, 10) is not sent again
    scalars = tmp_path / "logs" / "x" / "scalars" / "energy"
    assert (scalars / "a.csv").read_text().split() == ["10,1.0"]
    assert (scalars / "b.csv").read_text().split() == ["10,2.0"]


# ------------------------------------------------------------------- NaN/inf guard (issue 17)


def _toy_stage(loss_fn, total=8, optim=True):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    step_fn = OptimizerStep(torch.optim.SGD(model.parameters(), lr=0.1), name="loss_toy")

    def step(_batch, index):
        loss = loss_fn(model, index)
        if optim:
            step_fn(loss)
        return {"loss_toy": loss.detach()}

    stage = Stage("toy", total, step, lambda: {"model": model}, batch_size=None)
    return stage, model


def test_non_finite_loss_stops_the_stage_and_keeps_the_last_good_checkpoint(tmp_path):
    def loss_fn(model, index):
        loss = model(torch.ones(1, 2)).pow(2).mean()
        return loss * float("nan") if index == 4 else loss

    stage, model = _toy_stage(loss_fn)
    trainer = OfflineTrainer(
        [stage], None, run_dir=tmp_path, checkpoint_interval=3, progress_bar=False
    )
    before = {}
    trainer.register_op(
        "post_optim",
        lambda s, step, m: before.update({k: v.clone() for k, v in model.state_dict().items()}),
    )
    with pytest.raises(NonFiniteError) as err:
        trainer.train()
    message = str(err.value)
    assert "stage 'toy' at step 5/8" in message and "loss_toy = nan" in message
    assert "(step 3) is kept" in message and "update was not applied" in message
    assert isinstance(err.value, ValueError)
    # the bad update was not applied, and the checkpoint still holds step 3
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    saved = torch.load(tmp_path / "checkpoints" / "toy.pt", weights_only=True)
    assert saved["step"] == 3 and torch.isfinite(saved["state"]["model"]["weight"]).all()


def test_non_finite_gradient_with_a_finite_loss_is_an_error(tmp_path):
    def loss_fn(model, index):  # sqrt at 0: the loss is 0, its gradient 0 * inf = nan
        return (model.weight * 0).sum().sqrt()

    stage, _ = _toy_stage(loss_fn)
    trainer = OfflineTrainer([stage], None, run_dir=tmp_path, progress_bar=False)
    with pytest.raises(NonFiniteError, match=r"loss_toy = 0.0 is finite but 1 gradient") as err:
        trainer.train()
    assert "no checkpoint of stage 'toy' was written yet" in str(err.value)


def test_non_finite_loss_metric_without_optimizer_step_is_caught_before_a_checkpoint(tmp_path):
    def loss_fn(model, index):
        return torch.tensor(float("inf") if index == 1 else 1.0)

    stage, _ = _toy_stage(loss_fn, optim=False)
    trainer = OfflineTrainer(
        [stage], None, run_dir=tmp_path, log_interval=5, checkpoint_interval=3, progress_bar=False
    )
    with pytest.raises(NonFiniteError, match=r"step 3/8.*non-finite loss_toy = inf"):
        trainer.train()
    assert not (tmp_path / "checkpoints" / "toy.pt").exists()


def test_nan_rewards_stop_the_critic_stage_with_the_loss_name(tmp_path):
    stages, _, rb, _ = _setup(reward_nan=True)
    with pytest.raises(NonFiniteError) as err:
        _trainer(tmp_path, stages, rb).train()
    message = str(err.value)
    assert "stage 'critic' at step 1/5" in message
    assert "loss_qvalue + loss_value = nan" in message
    assert (tmp_path / "checkpoints" / "diffusion.pt").exists()
    assert not (tmp_path / "checkpoints" / "critic.pt").exists()


def test_corrupt_logged_steps_file_is_a_clear_error(tmp_path):
    from torchrl.record.loggers import get_logger

    stages, _, rb, _ = _setup()
    logger = get_logger("csv", str(tmp_path / "logs"), "x")
    _trainer(tmp_path, stages, rb, logger=logger, stop_after_stage="diffusion").train()
    (tmp_path / "checkpoints" / "logged_steps.json").write_text("{trunc")
    stages, _, rb, _ = _setup()
    with pytest.raises(CheckpointError, match=r"logged_steps.json is corrupt.*delete it"):
        _trainer(tmp_path, stages, rb, logger=logger).train()
