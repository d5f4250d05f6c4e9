"""Several seeds in one process: stacked networks (vmap) and the stacked critic stage."""

from __future__ import annotations

import copy

import pytest
import torch
from tensordict import TensorDict
from torchrl.objectives import SoftUpdate

from torchrl_aepo.nets import MLPNoisePredictor, TwinQNetwork, ValueNetwork
from torchrl_aepo.objectives import ExpectileLoss
from torchrl_aepo.stacked import StackedCritic, StackedModule, sample_stacked
from torchrl_aepo.trainer import OfflineTrainer, adam_step

OBS, ACT, N_DATA = 3, 2, 256


def _dataset(seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(N_DATA, OBS, generator=g)
    act = torch.rand(N_DATA, ACT, generator=g) * 2 - 1
    return TensorDict(
        {
            "observation": obs,
            "action": act,
            "next": {
                "observation": obs + 0.1 * torch.randn(N_DATA, OBS, generator=g),
                "reward": -(act**2).sum(-1, keepdim=True) + obs[:, :1],
                "terminated": torch.rand(N_DATA, 1, generator=g) < 0.05,
                "done": torch.zeros(N_DATA, 1, dtype=torch.bool),
            },
        },
        batch_size=[N_DATA],
    )


def _members(n, seed=0):
    torch.manual_seed(seed)
    qs = [TwinQNetwork(OBS, ACT, num_cells=(16, 16)) for _ in range(n)]
    vs = [ValueNetwork(OBS, num_cells=(16, 16)) for _ in range(n)]
    return qs, vs


def test_stacked_module_computes_every_member_with_its_own_weights():
    torch.manual_seed(0)
    nets = [MLPNoisePredictor(ACT, OBS, num_cells=(8, 8)) for _ in range(3)]
    stacked = StackedModule(nets)
    a, t, s = torch.randn(3, 5, ACT), torch.rand(3, 5, 1), torch.randn(3, 5, OBS)
    out = stacked(a, t, s)
    assert out.shape == (3, 5, ACT)
    for k, net in enumerate(nets):
        torch.testing.assert_close(out[k], net(a[k], t[k], s[k]))
        torch.testing.assert_close(stacked.member(k)(a[k], t[k], s[k]), net(a[k], t[k], s[k]))
    assert all(p.shape[0] == 3 for p in stacked.parameters())
    with pytest.raises(ValueError, match="one class"):
        StackedModule([nets[0], TwinQNetwork(OBS, ACT)])


def test_member_k_of_a_stacked_critic_matches_a_single_seed_run():
    n, k, steps, lr = 4, 2, 5, 1e-2
    qs, vs = _members(n)
    single_q, single_v = copy.deepcopy(qs[k]), copy.deepcopy(vs[k])  # the same initial weights
    stacked = StackedCritic(qs, vs, lr=lr, steps=steps, target_tau=0.1, adam="loop")
    loss = ExpectileLoss(single_q, single_v)
    target = SoftUpdate(loss, tau=0.1)
    optim = adam_step(loss, lr, steps, adam="loop")
    data = _dataset()
    for _ in range(steps):
        batch = sample_stacked(data, 32, stacked.generators)  # [n, 32]: own data order each
        per_member = stacked.update(batch)
        out = loss(batch[k])  # the same batch as member k
        optim(out["loss_qvalue"] + out["loss_value"])
        target.step()
        torch.testing.assert_close(per_member["loss_qvalue"][k], out["loss_qvalue"].detach())
    for name, net in (("q", single_q), ("v", single_v)):
        member = (stacked.qvalue if name == "q" else stacked.value).member(k)
        for (key, p), (_, m) in zip(net.named_parameters(), member.named_parameters(), strict=True):
            torch.testing.assert_close(m, p, rtol=1e-5, atol=1e-6, msg=f"{name}.{key}")
    targets = stacked.loss.target_qvalue_network_params.flatten_keys(".")
    for key, value in loss.target_qvalue_network_params.flatten_keys(".").items():
        torch.testing.assert_close(targets[key.replace(".", "__")][k], value, rtol=1e-5, atol=1e-6)
    # the other members trained too, on other batches: they differ from member k
    assert not torch.allclose(stacked.qvalue.member(0).weights[0], single_q.weights[0])


def _train(tmp_path, kill_at=None, steps=6, stage="critic"):
    from torchrl_aepo.stacked import StackedDiffusion

    if stage == "critic":
        qs, vs = _members(3)
        critic = StackedCritic(qs, vs, lr=1e-2, steps=steps, adam="loop", seeds=[10, 11, 12])
    elif stage == "energy":
        from torchrl_aepo.stacked import StackedEnergy

        noises, qs, energies, stats, _ = _energy_members(3)
        critic = StackedEnergy(energies, noises, qs, stats, lr=1e-2, steps=steps, adam="loop")
    else:
        torch.manual_seed(0)
        nets = [MLPNoisePredictor(ACT, OBS, num_cells=(8, 8)) for _ in range(3)]
        critic = StackedDiffusion(nets, lr=1e-2, steps=steps, adam="loop", ema_decay=0.9)
    trainer = OfflineTrainer(
        [critic.stage(_dataset(), steps, 16)],
        None,
        run_dir=tmp_path,
        log_interval=1,
        checkpoint_interval=2,
        progress_bar=False,
        config={"stacked": 3},
    )
    if kill_at is not None:

        def kill(stage, step, _metrics):
            if step == kill_at:
                raise KeyboardInterrupt

        trainer.register_op("post_optim", kill)
    try:
        trainer.train()
    except KeyboardInterrupt:
        pass
    return critic


@pytest.mark.parametrize("stage", ["critic", "diffusion", "energy"])
def test_stacked_stage_checkpoints_and_resumes_exactly(tmp_path, stage):
    full = _train(tmp_path / "full", stage=stage)
    assert (tmp_path / "full" / "checkpoints" / f"{stage}.pt").exists()
    _train(tmp_path / "killed", kill_at=3, stage=stage)
    resumed = _train(tmp_path / "killed", stage=stage)  # resumes from step 2
    for a, b in zip(full.loss.parameters(), resumed.loss.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(full.loss.buffers(), resumed.loss.buffers(), strict=True):  # EMA / targets
        assert torch.equal(a, b)
    for a, b in zip(full.generators, resumed.generators, strict=True):
        assert torch.equal(a.get_state(), b.get_state())


def test_member_k_of_a_stacked_diffusion_matches_a_single_seed_run():
    from torchrl_aepo.objectives import DiffusionLoss
    from torchrl_aepo.stacked import StackedDiffusion

    n, k, steps, lr = 3, 1, 4, 1e-2
    torch.manual_seed(0)
    nets = [MLPNoisePredictor(ACT, OBS, num_cells=(16, 16)) for _ in range(n)]
    single_net = copy.deepcopy(nets[k])
    stacked = StackedDiffusion(nets, lr=lr, steps=steps, ema_decay=0.9, adam="loop")
    loss = DiffusionLoss(single_net, ema=True)
    ema = SoftUpdate(loss, tau=0.1)
    optim = adam_step(loss, lr, steps, adam="loop")
    data = _dataset()
    for _ in range(steps):
        batch = stacked.draw(data, 32)  # [n, 32] with each member's times and noise
        per_member = stacked.update(batch)
        out = loss(batch[k])  # the same transitions, times and noise as member k
        optim(out["loss_diffusion"])
        ema.step()
        torch.testing.assert_close(per_member["loss_diffusion"][k], out["loss_diffusion"].detach())
    member = stacked.noise.member(k)
    for (key, p), (_, m) in zip(
        single_net.named_parameters(), member.named_parameters(), strict=True
    ):
        torch.testing.assert_close(m, p, rtol=1e-5, atol=1e-6, msg=key)
    targets = stacked.loss.target_noise_network_params.flatten_keys(".")
    for key, value in loss.target_noise_network_params.flatten_keys(".").items():
        torch.testing.assert_close(targets[key.replace(".", "__")][k], value, rtol=1e-5, atol=1e-6)
    # members draw different batches and noise
    first = stacked.draw(data, 8)
    assert not torch.equal(first["diffusion_noise"][0], first["diffusion_noise"][1])


def test_given_time_and_noise_leave_the_default_diffusion_loss_unchanged():
    from torchrl_aepo.objectives import DiffusionLoss

    torch.manual_seed(0)
    loss = DiffusionLoss(MLPNoisePredictor(ACT, OBS, num_cells=(8,)))
    batch = _dataset()[:16]
    torch.manual_seed(5)
    drawn = loss(batch)["loss_diffusion"]
    torch.manual_seed(5)  # the same draws, given explicitly
    time = loss.schedule.sample_time((16, 1))
    noise = torch.randn(16, ACT)
    given = batch.clone()
    given.set("diffusion_time", time)
    given.set("diffusion_noise", noise)
    torch.testing.assert_close(loss(given)["loss_diffusion"], drawn)


def _energy_members(n):
    from torchrl_aepo.nets import EnergyNetwork
    from torchrl_aepo.objectives import PosteriorStatistics

    torch.manual_seed(0)
    noises = [MLPNoisePredictor(ACT, OBS, num_cells=(16, 16)) for _ in range(n)]
    qs = [TwinQNetwork(OBS, ACT, num_cells=(16, 16)) for _ in range(n)]
    energies = [EnergyNetwork(ACT, OBS, num_cells=(16, 16)) for _ in range(n)]
    data = _dataset()
    stats = [
        PosteriorStatistics.estimate(
            net, data["observation"], data["action"], num_times=8, samples_per_time=32,
            generator=torch.Generator().manual_seed(k),
        )
        for k, net in enumerate(noises)
    ]  # fmt: skip
    return noises, qs, energies, stats, data


def test_member_k_of_a_stacked_energy_matches_a_single_seed_run():
    from torchrl_aepo.objectives import AnalyticEnergyLoss
    from torchrl_aepo.stacked import StackedEnergy

    n, k, steps, lr = 3, 1, 3, 1e-2
    noises, qs, energies, stats, data = _energy_members(n)
    single_energy = copy.deepcopy(energies[k])  # the same initial weights
    stacked = StackedEnergy(
        energies, noises, qs, stats, beta=2.0, lr=lr, steps=steps, adam="loop", seeds=[5, 6, 7]
    )
    loss = AnalyticEnergyLoss(single_energy, noises[k], qs[k], stats[k], beta=2.0)
    optim = adam_step(loss, lr, steps, adam="loop")
    for _ in range(steps):
        batch = stacked.draw(data, 32)  # [n, 32] with each member's times and noise
        per_member = stacked.update(batch)
        out = loss(batch[k])  # the same transitions, times and noise as member k
        optim(out["loss_energy"])
        torch.testing.assert_close(
            per_member["loss_energy"][k], out["loss_energy"].detach(), rtol=1e-5, atol=1e-5
        )
    member = stacked.energy.member(k)
    for (key, p), (_, m) in zip(
        single_energy.named_parameters(), member.named_parameters(), strict=True
    ):
        torch.testing.assert_close(m, p, rtol=1e-5, atol=1e-5, msg=key)
    other = dict(stacked.energy.member(0).named_parameters())
    assert not all(torch.allclose(other[key], p) for key, p in single_energy.named_parameters())
    first = stacked.draw(data, 8)  # members draw different times
    assert not torch.equal(first["energy_time"][0], first["energy_time"][1])


def test_stacked_posterior_statistics_reads_each_members_table():
    from torchrl_aepo.objectives import StackedPosteriorStatistics

    _, _, _, stats, _ = _energy_members(2)
    stacked = StackedPosteriorStatistics(stats)
    t = torch.rand(2, 5, 1)
    variance = stacked.variance(t)
    for k in range(2):
        torch.testing.assert_close(variance[k], stats[k].variance(t[k]))
    assert stacked.v_max.shape == (2, 1, 1)
