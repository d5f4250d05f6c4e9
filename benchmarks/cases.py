"""The benchmark cases: what is built and timed in each section (training, sampling, eval,
scaling), ours next to TorchRL's peers and the plain-PyTorch reference."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.harness import (
    BenchConfig,
    Built,
    Case,
    _action_spec,
    _adam,
    _dict_batch,
    _flops_diffusion,
    _flops_energy,
    _flops_expectile,
    _flops_full,
    _flops_guided,
    _frozen,
    _load_reference,
    _n_params,
    _nets,
    _params,
    _td_batch,
    _unique,
    _widths,
)


# ============================================================================ builders: training
def _build_ours_diffusion(cfg: BenchConfig, batch: int, width: float = 1.0) -> Built:
    from torchrl_aepo.objectives.diffusion import DiffusionLoss

    nets = _nets(cfg, width=width)
    loss = DiffusionLoss(nets["noise"])
    opt = _adam(loss.parameters(), 1e-4, cfg.optim)
    td = _td_batch(cfg, batch)

    def run():
        loss(td)["loss_diffusion"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run, _flops_diffusion(_n_params(nets["noise"]), batch), 1


def _build_ours_expectile(cfg: BenchConfig, batch: int) -> Built:
    from torchrl.objectives import SoftUpdate

    from torchrl_aepo.objectives.expectile import ExpectileLoss

    nets = _nets(cfg)
    loss = ExpectileLoss(nets["q"], nets["v"], expectile=0.7, discount=0.99)
    updater = SoftUpdate(loss, tau=0.005)
    opt = _adam(loss.parameters(), 3e-4, cfg.optim)
    td = _td_batch(cfg, batch)

    def run():
        out = loss(td)
        (out["loss_qvalue"] + out["loss_value"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        updater.step()

    p = _params(nets)
    return run, _flops_expectile(p["q"], p["v"], batch), 1


def _posterior_statistics(cfg: BenchConfig, noise: nn.Module, td, num_times=None, samples=None):
    from torchrl_aepo.objectives.posterior import PosteriorStatistics

    with torch.no_grad():
        return PosteriorStatistics.estimate(
            noise,
            td["observation"],
            td["action"],
            num_times=num_times or max(2, min(16, cfg.posterior_times)),
            samples_per_time=samples or min(128, cfg.posterior_samples),
        )


def _energy_params(loss: nn.Module, energy: nn.Module) -> list[nn.Parameter]:
    own = getattr(loss, "energy_network_params", None)
    if own is not None:
        return [p for p in own.parameters() if p.requires_grad]
    ids = {id(p) for p in energy.parameters()}
    return [p for p in loss.parameters() if id(p) in ids]


def _build_ours_energy(cfg: BenchConfig, batch: int) -> Built:
    from torchrl_aepo.objectives.energy import AnalyticEnergyLoss

    nets = _nets(cfg)
    td = _td_batch(cfg, batch)
    noise, critic = _frozen(nets["noise"]), _frozen(nets["q"])
    stats = _posterior_statistics(cfg, noise, td)
    loss = AnalyticEnergyLoss(nets["energy"], noise, critic, stats, beta=3.0)
    opt = _adam(_energy_params(loss, nets["energy"]), 3e-4, cfg.optim)

    def run():
        loss(td)["loss_energy"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    p = _params(nets)
    return run, _flops_energy(p["noise"], p["q"], p["energy"], batch), 1


def _build_ours_full(
    cfg: BenchConfig, batch: int, width: float = 1.0, compiled: bool = False
) -> Built:
    from torchrl_aepo import aepo

    # AEPO as the recipe builds it (torchrl_aepo.aepo), with the paper's networks.
    hidden = (max(8, int(round(256 * width))),) * 3
    model = aepo.ModelConfig("umlp", _widths(width), hidden, hidden, hidden, hidden)
    algo = aepo.AEPOConfig()
    nets = aepo.build_networks(model, cfg.obs_dim, cfg.action_dim)
    losses = aepo.build_losses(nets, algo, aepo.TrainConfig(), compile={} if compiled else None)
    td = _td_batch(cfg, batch)
    stats = _posterior_statistics(cfg, nets.behaviour, td)
    energy = aepo.build_energy_loss(nets, losses, algo, stats, compile={} if compiled else None)
    diffusion, critic, updater = losses.diffusion, losses.critic, losses.critic_target
    taken: set[int] = set()
    groups = []
    for params, lr in (
        (diffusion.parameters(), 1e-4),
        (critic.parameters(), 3e-4),
        (_energy_params(energy, nets.energy), 3e-4),
    ):
        params = [p for p in _unique(params) if p.requires_grad and id(p) not in taken]
        taken.update(id(p) for p in params)
        groups.append(_adam(params, lr, cfg.optim))

    def run():
        out_c = critic(td)
        total = (
            diffusion(td)["loss_diffusion"]
            + out_c["loss_qvalue"]
            + out_c["loss_value"]
            + energy(td)["loss_energy"]
        )
        total.backward()
        for opt in groups:
            opt.step()
            opt.zero_grad(set_to_none=True)
        updater.step()

    sizes = _params({"noise": nets.noise, "q": nets.qvalue, "v": nets.value, "energy": nets.energy})
    return run, _flops_full(sizes, batch), 1


def _build_posterior_estimate(cfg: BenchConfig) -> Built:
    nets = _nets(cfg)
    noise = _frozen(nets["noise"])
    td = _td_batch(cfg, 4096)
    k, m = cfg.posterior_times, cfg.posterior_samples

    def run():
        _posterior_statistics(cfg, noise, td, num_times=k, samples=m)

    return run, 2.0 * _n_params(noise) * k * m, k * m


# ---------------------------------------------------------------------------- torchrl peers
class _ConcatAdapter(nn.Module):
    """Runs our noise network on TorchRL's ``cat([noisy_action, observation, t_int])`` input.

    ``t_int`` in ``[0, N)`` is mapped to the continuous time ``(t_int + 1) / N``; slicing is
    views only, so the network (and its FLOPs) is exactly ours.
    """

    def __init__(self, network: nn.Module, action_dim: int, obs_dim: int, num_steps: int):
        super().__init__()
        self.network, self.d, self.s, self.n = network, action_dim, obs_dim, float(num_steps)

    def forward(self, inputs: Tensor) -> Tensor:
        x = inputs[..., : self.d]
        obs = inputs[..., self.d : self.d + self.s]
        t = (inputs[..., -1:] + 1.0) / self.n
        return self.network(x, t, obs)


def _build_diffusion_bc(cfg: BenchConfig, batch: int) -> Built:
    from torchrl.modules import DiffusionActor
    from torchrl.objectives import DiffusionBCLoss

    nets = _nets(cfg)
    adapter = _ConcatAdapter(nets["noise"], cfg.action_dim, cfg.obs_dim, 1000)
    actor = DiffusionActor(cfg.action_dim, score_network=adapter, num_steps=1000)
    loss = DiffusionBCLoss(actor)
    opt = _adam(loss.parameters(), 1e-4, cfg.optim)
    td = _td_batch(cfg, batch)

    def run():
        loss(td)["loss_diffusion_bc"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run, _flops_diffusion(_n_params(nets["noise"]), batch), 1


def _iql(cfg: BenchConfig):
    """TorchRL's IQLLoss with its recipe's TanhNormal actor (3x256 MLPs), as the project's
    baseline builds it (:func:`torchrl_aepo.baselines.build_iql`)."""
    from torchrl.objectives import SoftUpdate

    from torchrl_aepo.baselines import build_iql

    loss, _ = build_iql(cfg.obs_dim, cfg.action_dim, actor="tanh_normal", num_cells=(256, 256, 256))
    updater = SoftUpdate(loss, tau=0.005)

    def count(params) -> int:
        return sum(p.numel() for p in params.values(True, True))

    sizes = {  # the twin Q's parameters are stacked: their count holds both heads
        "actor": count(loss.actor_network_params),
        "q": count(loss.qvalue_network_params),
        "v": count(loss.value_network_params),
    }
    return loss, updater, sizes


def _build_iql_full(cfg: BenchConfig, batch: int) -> Built:
    loss, updater, sizes = _iql(cfg)
    opt = _adam(loss.parameters(), 3e-4, cfg.optim)
    td = _td_batch(cfg, batch)

    def run():
        out = loss(td.clone(False))
        (out["loss_actor"] + out["loss_qvalue"] + out["loss_value"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        updater.step()

    flops = _flops_expectile(sizes["q"], sizes["v"], batch) + 6.0 * sizes["actor"] * batch
    return run, flops, 1


def _build_iql_critic(cfg: BenchConfig, batch: int) -> Built:
    loss, updater, sizes = _iql(cfg)
    params = list(loss.qvalue_network_params.parameters()) + list(
        loss.value_network_params.parameters()
    )
    opt = _adam(params, 3e-4, cfg.optim)
    td = _td_batch(cfg, batch)

    def run():
        loss_v, _ = loss.value_loss(td)
        loss_q, _ = loss.qvalue_loss(td)
        (loss_v + loss_q).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        updater.step()

    return run, _flops_expectile(sizes["q"], sizes["v"], batch), 1


# ---------------------------------------------------------------------------- reference
def _reference_algo(cfg: BenchConfig, style: str, batch: int, width: float = 1.0):
    ref = _load_reference()
    nets = ref.make_networks(cfg.action_dim, cfg.obs_dim, style=style, widths=_widths(width))
    algo = ref.ReferenceAEPO(nets)
    td = _td_batch(cfg, batch)
    data = _dict_batch(td)
    algo.estimate_gamma(
        data["obs"], data["act"], num_times=16, samples_per_time=min(128, cfg.posterior_samples)
    )
    sizes = {
        "noise": _n_params(nets["score"]),
        "q": _n_params(nets["q"]),
        "v": _n_params(nets["v"]),
        "energy": _n_params(nets["energy"]),
    }
    return algo, data, sizes


def _build_reference(cfg: BenchConfig, batch: int, part: str, style: str = "library") -> Built:
    algo, data, p = _reference_algo(cfg, style, batch)
    if part == "full":
        return (lambda: algo.update(data)), _flops_full(p, batch), 1
    if part == "diffusion":
        return (
            (lambda: algo.diffusion_step(data["obs"], data["act"])),
            _flops_diffusion(p["noise"], batch),
            1,
        )
    if part == "critic":
        return (lambda: algo.critic_update(data)), _flops_expectile(p["q"], p["v"], batch), 1
    if part == "energy":
        return (
            (lambda: algo.energy_step(data["obs"], data["act"])),
            _flops_energy(p["noise"], p["q"], p["energy"], batch),
            1,
        )
    raise ValueError(part)


# ============================================================================ builders: sampling
def _make_actor(
    cfg: BenchConfig,
    nets: dict[str, nn.Module],
    *,
    order: int,
    steps: int,
    guided: bool = True,
    candidates: int = 1,
    compiled: bool = False,
):
    from torchrl_aepo.actor import AEPOActor
    from torchrl_aepo.diffusion.solver import DPMSolver

    kwargs: dict[str, Any] = {}
    if candidates > 1:
        kwargs = {
            "num_candidates": candidates,
            "selection": "argmax_q",
            "qvalue_network": nets["q"],
        }
    return AEPOActor(
        nets["noise"],
        nets["energy"] if guided else None,
        action_spec=_action_spec(cfg),
        guidance_scale=1.0,
        rescale=True,
        solver=DPMSolver(order=order, steps=steps),
        compile=compiled,
        **kwargs,
    )


def _sampling_nets(cfg: BenchConfig, width: float = 1.0) -> dict[str, nn.Module]:
    return {k: _frozen(v) for k, v in _nets(cfg, width=width).items()}


def _build_ours_sampling(
    cfg: BenchConfig,
    batch: int,
    order: int,
    steps: int,
    *,
    guided: bool = True,
    width: float = 1.0,
    candidates: int = 1,
    compiled: bool = False,
) -> Built:
    from tensordict import TensorDict

    nets = _sampling_nets(cfg, width)
    actor = _make_actor(
        cfg,
        nets,
        order=order,
        steps=steps,
        guided=guided,
        candidates=candidates,
        compiled=compiled,
    )
    td = TensorDict({"observation": torch.randn(batch, cfg.obs_dim)}, batch_size=[batch])
    p = _params(nets)
    n = batch * candidates
    if guided:
        flops = _flops_guided(p["noise"], p["energy"], steps, n)
    else:
        flops = steps * 2.0 * p["noise"] * n
    if candidates > 1:
        flops += 2.0 * p["q"] * n

    def run():
        actor(td)

    return run, flops, batch


def _build_ddpm_sampling(cfg: BenchConfig, batch: int, steps: int) -> Built:
    from tensordict import TensorDict
    from torchrl.modules import DiffusionActor

    nets = _sampling_nets(cfg)
    adapter = _ConcatAdapter(nets["noise"], cfg.action_dim, cfg.obs_dim, steps)
    actor = DiffusionActor(cfg.action_dim, score_network=adapter, num_steps=steps)
    td = TensorDict({"observation": torch.randn(batch, cfg.obs_dim)}, batch_size=[batch])

    def run():
        with torch.no_grad():
            actor(td)

    return run, steps * 2.0 * _n_params(nets["noise"]) * batch, batch


def _build_reference_sampling(
    cfg: BenchConfig, batch: int, order: int, steps: int, style: str = "library"
) -> Built:
    ref = _load_reference()
    nets = {
        k: _frozen(v)
        for k, v in ref.make_networks(cfg.action_dim, cfg.obs_dim, style=style).items()
    }
    sampler = ref.ReferenceGuidedSampler(nets["score"], nets["energy"], steps=steps, order=order)
    obs = torch.randn(batch, cfg.obs_dim)

    def run():
        with torch.no_grad():
            sampler(obs)

    flops = _flops_guided(_n_params(nets["score"]), _n_params(nets["energy"]), steps, batch)
    return run, flops, batch


# ============================================================================ builders: eval
def _gym_vector_env(cfg: BenchConfig, num_envs: int):
    import gymnasium as gym

    kwargs = {}
    if hasattr(gym.vector, "AutoresetMode"):  # TorchRL needs SAME_STEP (or DISABLED) resets
        kwargs["autoreset_mode"] = gym.vector.AutoresetMode.SAME_STEP
    return gym.vector.SyncVectorEnv(
        [lambda: gym.make(cfg.env_name) for _ in range(num_envs)], **kwargs
    )


def _torchrl_env(cfg: BenchConfig, num_envs: int):
    import logging
    import warnings

    warnings.filterwarnings("ignore", message="Nested TransformedEnvs")

    from torchrl.envs import DoubleToFloat, GymWrapper, TransformedEnv

    logging.getLogger("torchrl").setLevel(logging.WARNING)
    env = TransformedEnv(GymWrapper(_gym_vector_env(cfg, num_envs)), DoubleToFloat())
    env.set_seed(0)
    return env


def _build_eval_raw_random(cfg: BenchConfig) -> Built:
    venv = _gym_vector_env(cfg, cfg.eval_envs)
    venv.reset(seed=0)
    steps = cfg.eval_steps

    def run():
        venv.reset(seed=0)
        for _ in range(steps):
            venv.step(venv.action_space.sample())

    return run, 0.0, cfg.eval_envs * steps


def _build_eval_torchrl(cfg: BenchConfig, policy: str) -> Built:
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    env = _torchrl_env(cfg, cfg.eval_envs)
    steps, flops, actor = cfg.eval_steps, 0.0, None
    if policy == "actor":
        nets = _sampling_nets(cfg)
        actor = _make_actor(cfg, nets, order=cfg.qgpo_order, steps=cfg.qgpo_steps)
        p = _params(nets)
        flops = steps * _flops_guided(p["noise"], p["energy"], cfg.qgpo_steps, cfg.eval_envs)

    def run():
        with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
            env.rollout(steps, policy=actor, break_when_any_done=False)

    return run, flops, cfg.eval_envs * steps


def _build_eval_reference(cfg: BenchConfig, style: str = "library") -> Built:
    import numpy as np

    ref = _load_reference()
    nets = {
        k: _frozen(v)
        for k, v in ref.make_networks(cfg.action_dim, cfg.obs_dim, style=style).items()
    }
    sampler = ref.ReferenceGuidedSampler(
        nets["score"], nets["energy"], steps=cfg.qgpo_steps, order=cfg.qgpo_order
    )
    venv = _gym_vector_env(cfg, cfg.eval_envs)
    steps = cfg.eval_steps

    def run():
        obs, _ = venv.reset(seed=0)
        for _ in range(steps):
            with torch.no_grad():
                action = sampler(torch.as_tensor(obs, dtype=torch.float32))
            obs, *_ = venv.step(np.asarray(action.numpy(), dtype=np.float64))

    flops = steps * _flops_guided(
        _n_params(nets["score"]), _n_params(nets["energy"]), cfg.qgpo_steps, cfg.eval_envs
    )
    return run, flops, cfg.eval_envs * steps


# ============================================================================ sections
def _training_cases(cfg: BenchConfig, batch: int) -> list[Case]:
    b = {"batch": batch}

    def c(name, impl, build, note=""):
        return Case("training", name, impl, dict(b), build, note=note)

    # The same updates with Adam(fused=True), side by side with the --optim flavour.
    fused = dataclasses.replace(cfg, optim="fused")
    fused_cases = (
        []
        if cfg.optim == "fused"
        else [
            c(
                "DiffusionLoss",
                "ours, Adam(fused=True)",
                lambda: _build_ours_diffusion(fused, batch),
                "as 'ours' with torch.optim.Adam(..., fused=True)",
            ),
            c(
                "ExpectileLoss",
                "ours, Adam(fused=True)",
                lambda: _build_ours_expectile(fused, batch),
                "as 'ours' with torch.optim.Adam(..., fused=True)",
            ),
            c(
                "AEPO update",
                "ours, Adam(fused=True)",
                lambda: _build_ours_full(fused, batch),
                "as 'ours' with torch.optim.Adam(..., fused=True)",
            ),
        ]
    )
    return (
        [
            c("DiffusionLoss", "ours", lambda: _build_ours_diffusion(cfg, batch)),
            c(
                "DiffusionLoss",
                "torchrl DiffusionBCLoss",
                lambda: _build_diffusion_bc(cfg, batch),
                "same noise network via a concat adapter",
            ),
            c("DiffusionLoss", "reference", lambda: _build_reference(cfg, batch, "diffusion")),
            c(
                "DiffusionLoss",
                "reference-research",
                lambda: _build_reference(cfg, batch, "diffusion", "research"),
                "QGPO-shaped networks (local stand-in for QGPO's behaviour step)",
            ),
            c(
                "ExpectileLoss",
                "ours",
                lambda: _build_ours_expectile(cfg, batch),
                "loss + Adam + SoftUpdate",
            ),
            c(
                "ExpectileLoss",
                "torchrl IQLLoss critic",
                lambda: _build_iql_critic(cfg, batch),
                "IQLLoss.value_loss + qvalue_loss + Adam(Q,V) + SoftUpdate",
            ),
            c(
                "ExpectileLoss",
                "torchrl IQLLoss full",
                lambda: _build_iql_full(cfg, batch),
                "IQLLoss forward (actor+Q+V) + Adam + SoftUpdate; TanhNormal 3x256 actor",
            ),
            c("ExpectileLoss", "reference", lambda: _build_reference(cfg, batch, "critic")),
            c("AnalyticEnergyLoss", "ours", lambda: _build_ours_energy(cfg, batch)),
            c("AnalyticEnergyLoss", "reference", lambda: _build_reference(cfg, batch, "energy")),
            c(
                "AEPO update",
                "ours",
                lambda: _build_ours_full(cfg, batch),
                "3 losses, 1 backward, 3 Adam, SoftUpdate",
            ),
            c("AEPO update", "reference", lambda: _build_reference(cfg, batch, "full")),
            c(
                "AEPO update",
                "reference-research",
                lambda: _build_reference(cfg, batch, "full", "research"),
                "QGPO-shaped networks, 4x256 energy",
            ),
        ]
        + fused_cases
        + _compiled_training_cases(cfg, batch)
    )


def _compiled_training_cases(cfg: BenchConfig, batch: int) -> list[Case]:
    if not cfg.compile:
        return []
    return [
        Case(
            "training",
            "AEPO update",
            "ours, torch.compile",
            {"batch": batch},
            lambda: _build_ours_full(cfg, batch, compiled=True),
            note="as 'ours' with the three losses compiled (nn.Module.compile)",
        )
    ]


def _sampling_cases(cfg: BenchConfig, batch: int) -> list[Case]:
    cases = []
    for order in cfg.orders:
        for steps in cfg.steps:
            params = {"batch": batch, "order": order, "steps": steps, "nfe": steps}
            cases.append(
                Case(
                    "sampling",
                    "guided",
                    "ours",
                    dict(params),
                    lambda o=order, s=steps: _build_ours_sampling(cfg, batch, o, s),
                    unit="actions",
                )
            )
            if batch < 800 or steps in cfg.reference_large_batch_steps:
                cases.append(
                    Case(
                        "sampling",
                        "guided",
                        "reference",
                        dict(params),
                        lambda o=order, s=steps: _build_reference_sampling(cfg, batch, o, s),
                        unit="actions",
                    )
                )
    order_qgpo, steps_qgpo = cfg.qgpo_order, cfg.qgpo_steps
    if cfg.compile:
        cases.append(
            Case(
                "sampling",
                "guided",
                "ours, torch.compile",
                {"batch": batch, "order": order_qgpo, "steps": steps_qgpo, "nfe": steps_qgpo},
                lambda: _build_ours_sampling(cfg, batch, order_qgpo, steps_qgpo, compiled=True),
                unit="actions",
                note="AEPOActor(compile=True)",
            )
        )
    cases.append(
        Case(
            "sampling",
            "guided",
            "reference-research",
            {"batch": batch, "order": order_qgpo, "steps": steps_qgpo, "nfe": steps_qgpo},
            lambda: _build_reference_sampling(cfg, batch, order_qgpo, steps_qgpo, "research"),
            unit="actions",
            note="QGPO-shaped networks (local stand-in for QGPO's sampler)",
        )
    )
    for steps in cfg.steps:
        params = {"batch": batch, "order": 1, "steps": steps, "nfe": steps}
        cases.append(
            Case(
                "sampling",
                "unguided",
                "ours",
                dict(params),
                lambda s=steps: _build_ours_sampling(cfg, batch, 1, s, guided=False),
                unit="actions",
                note="behaviour policy, DDIM (order 1)",
            )
        )
        cases.append(
            Case(
                "sampling",
                "unguided",
                "torchrl DiffusionActor",
                dict(params) | {"order": None},
                lambda s=steps: _build_ddpm_sampling(cfg, batch, s),
                unit="actions",
                note="DDPM with num_steps=NFE, same noise network",
            )
        )
    return cases


def _eval_cases(cfg: BenchConfig) -> list[Case]:
    p = {"env": cfg.env_name, "num_envs": cfg.eval_envs, "steps": cfg.eval_steps}
    actor_name = f"guided actor o{cfg.qgpo_order}/{cfg.qgpo_steps}"
    return [
        Case(
            "eval",
            "random policy",
            "gymnasium",
            dict(p),
            lambda: _build_eval_raw_random(cfg),
            unit="env_steps",
            note="raw SyncVectorEnv, no policy",
        ),
        Case(
            "eval",
            "random policy",
            "torchrl",
            dict(p),
            lambda: _build_eval_torchrl(cfg, "random"),
            unit="env_steps",
            note="GymWrapper(SyncVectorEnv)+DoubleToFloat, env.rollout",
        ),
        Case(
            "eval",
            actor_name,
            "ours",
            dict(p),
            lambda: _build_eval_torchrl(cfg, "actor"),
            unit="env_steps",
            note="env.rollout(policy=AEPOActor), DETERMINISTIC",
        ),
        Case(
            "eval",
            actor_name,
            "reference",
            dict(p),
            lambda: _build_eval_reference(cfg),
            unit="env_steps",
            note="research-style loop: numpy<->torch, ReferenceGuidedSampler",
        ),
    ]


def _scaling_cases(cfg: BenchConfig) -> dict[str, list[Case]]:
    o, n = cfg.qgpo_order, cfg.qgpo_steps
    guided = f"guided o{o}/{n}"
    solver = {"order": o, "steps": n, "nfe": n}
    tb, sb = cfg.scale_width_train_batch, cfg.scale_width_sample_batch
    batch_cases = []
    for b in cfg.scale_batches:
        batch_cases += [
            Case(
                "scaling_batch",
                "DiffusionLoss",
                "ours",
                {"batch": b},
                lambda b=b: _build_ours_diffusion(cfg, b),
            ),
            Case(
                "scaling_batch",
                "AEPO update",
                "ours",
                {"batch": b},
                lambda b=b: _build_ours_full(cfg, b),
            ),
            Case(
                "scaling_batch",
                "AEPO update",
                "reference",
                {"batch": b},
                lambda b=b: _build_reference(cfg, b, "full"),
            ),
        ]
    for b in cfg.scale_sample_batches:
        batch_cases.append(
            Case(
                "scaling_batch",
                guided,
                "ours",
                {"batch": b} | solver,
                lambda b=b: _build_ours_sampling(cfg, b, o, n),
                unit="actions",
            )
        )
    width_cases = []
    for w in cfg.scale_widths:
        params = {"width": w, "noise_widths": list(_widths(w)), "hidden": int(round(256 * w))}
        width_cases += [
            Case(
                "scaling_width",
                "DiffusionLoss",
                "ours",
                params | {"batch": tb},
                lambda w=w: _build_ours_diffusion(cfg, tb, w),
            ),
            Case(
                "scaling_width",
                "AEPO update",
                "ours",
                params | {"batch": tb},
                lambda w=w: _build_ours_full(cfg, tb, w),
            ),
            Case(
                "scaling_width",
                guided,
                "ours",
                params | {"batch": sb} | solver,
                lambda w=w: _build_ours_sampling(cfg, sb, o, n, width=w),
                unit="actions",
            ),
        ]
    cand_cases = []
    states = cfg.scale_candidate_states
    for k in cfg.scale_candidates:
        cand_cases.append(
            Case(
                "scaling_candidates",
                guided,
                "ours",
                {"batch": states, "candidates": k} | solver,
                lambda k=k: _build_ours_sampling(cfg, states, o, n, candidates=k),
                unit="states",
                note="argmax_q selection for K > 1",
            )
        )
    return {"batch": batch_cases, "width": width_cases, "candidates": cand_cases}
