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
from torchrl_aepo.trainer import CheckpointError, OfflineTrainer

OBS, ACT, N = 3, 1, 512


def _buffer(seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(N, OBS, generator=g)
    act = torch.rand(N, ACT, generator=g) * 2 - 1
    data = TensorDict(
        {
            "observation": obs,
            "action": act,
            "next": {
                "observation": obs + 0.1 * torch.randn(N, OBS, generator=g),
                "reward": -(act**2),
                "terminated": torch.zeros(N, 1, dtype=torch.bool),
                "done": torch.zeros(N, 1, dtype=torch.bool),
            },
        },
        batch_size=[N],
    )
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(N), batch_size=32)
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


def _setup(schedule="staged", steps=None):
    """AEPO's plan (torchrl_aepo.aepo) as a realistic multi-stage workload of the trainer."""
    torch.manual_seed(0)
    cells = (16, 16)
    model = ModelConfig("mlp", noise_num_cells=cells, qvalue_num_cells=cells,
                        value_num_cells=cells, energy_num_cells=cells)  # fmt: skip
    aepo = AEPOConfig()
    train = _train_config(schedule, steps)
    nets = build_networks(model, OBS, ACT)
    losses = build_losses(nets, aepo, train)
    rb = _buffer()
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
