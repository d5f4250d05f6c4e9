"""AEPO's staged plan for ``N`` seeds at once (``train.num_seeds``): stacked stages and members.

:class:`StackedTrainingPlan` is the multi-seed counterpart of
:class:`~torchrl_aepo.aepo.TrainingPlan` for ``train.plan=staged``, ``aepo.critic=expectile``
and ``aepo.energy=analytic``: member ``k`` is the seed ``seeds[k]``, its networks initialised
as :func:`~torchrl_aepo.aepo.build_networks` does after ``torch.manual_seed(seeds[k])``, and it
has its own generators (data order, diffusion times and noise, ``Gamma`` estimate) derived from
that seed. The stages ``diffusion -> critic -> gamma -> energy`` are
:class:`~torchrl_aepo.stacked.StackedDiffusion`, :class:`~torchrl_aepo.stacked.StackedCritic`,
one ``Gamma`` table per member (:func:`~torchrl_aepo.stacked.estimate_stacked_posterior_statistics`)
and :class:`~torchrl_aepo.stacked.StackedEnergy`, for the generic
:class:`~torchrl_aepo.trainer.OfflineTrainer` (checkpoints hold every member's state).
:meth:`StackedTrainingPlan.member` gives member ``k`` as an ordinary single-seed
:class:`~torchrl_aepo.aepo.AEPONetworks` / :class:`~torchrl_aepo.aepo.AEPOLosses` pair (target
critic and EMA included), so that :func:`~torchrl_aepo.aepo.build_actor` and the evaluation
work on it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase
from torch import Tensor

from torchrl_aepo.aepo.build import AEPOLosses, AEPONetworks, build_losses, build_networks
from torchrl_aepo.aepo.config import AEPOConfig, ModelConfig, TrainConfig, num_seeds_problems
from torchrl_aepo.trainer import Stage

__all__ = ["StackedTrainingPlan", "member_stream_seed"]

#: Stream ids of a member's generators (one per use, so no two uses share a stream).
_STREAMS = {"diffusion": 1, "critic": 2, "gamma": 3, "energy": 4}


def member_stream_seed(seed: int, stream: str) -> int:
    """The seed of member ``seed``'s generator for ``stream`` (``diffusion``, ``critic``,
    ``gamma`` or ``energy``): a ``numpy.random.SeedSequence`` of ``(seed, stream id)``, so the
    streams of one member and of neighbouring seeds are unrelated."""
    state = np.random.SeedSequence([int(seed), _STREAMS[stream]]).generate_state(2)
    return int(state[0]) << 31 | int(state[1]) >> 1


class _StackedPosteriorSlot:
    """Checkpoints the members' ``Gamma`` tables (built by the gamma stage)."""

    def __init__(self, plan: StackedTrainingPlan) -> None:
        self.plan = plan

    def state_dict(self) -> dict[str, Any]:
        return {f"member{k}": m.state_dict() for k, m in enumerate(self.plan.posterior.members)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        from torchrl_aepo.objectives import PosteriorStatistics, StackedPosteriorStatistics

        members = [
            PosteriorStatistics.from_state_dict(dict(state[f"member{k}"]))
            for k in range(self.plan.num_members)
        ]
        device = self.plan.dataset.device or "cpu"
        self.plan.posterior = StackedPosteriorStatistics(members).to(device)


class StackedTrainingPlan:
    """The staged AEPO plan of ``len(seeds)`` seeds trained at once with stacked networks.

    Args:
        model / aepo / train: the configuration (``train.num_seeds`` is not read: the members
            are ``seeds``). Unsupported settings raise ``ValueError`` naming them.
        obs_dim / action_dim: the dataset's sizes.
        dataset: the whole dataset (``observation``, ``action``, ``next`` ...) on ``device``.
        seeds: the members' seeds.
        device: where the networks live.

    :attr:`stages` go to ``OfflineTrainer`` (with ``generators=plan.generators``).
    """

    def __init__(
        self,
        model: ModelConfig,
        aepo: AEPOConfig,
        train: TrainConfig,
        obs_dim: int,
        action_dim: int,
        dataset: TensorDictBase,
        seeds: Sequence[int],
        device: torch.device | str = "cpu",
    ) -> None:
        from torchrl_aepo.stacked import StackedCritic, StackedDiffusion

        problems = num_seeds_problems(aepo, train)
        if problems:
            raise ValueError("; ".join(problems))
        self.model, self.aepo, self.train = model, aepo, train
        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)
        self.dataset, self.device = dataset, torch.device(device)
        self.seeds = [int(s) for s in seeds]
        self.num_members = len(self.seeds)
        members = []
        with torch.random.fork_rng(devices=[]):
            for s in self.seeds:  # member k: the initial weights of a run seeded with seeds[k]
                torch.manual_seed(s)
                members.append(build_networks(model, obs_dim, action_dim, device))
        self._initial = members
        t = train
        self.diffusion = StackedDiffusion(
            [m.noise for m in members], lr=t.diffusion.lr, steps=t.diffusion.steps,
            ema_decay=t.diffusion.ema_decay, adam=t.adam,
            lr_schedule=t.lr_schedule_of("diffusion"),
            seeds=[member_stream_seed(s, "diffusion") for s in self.seeds],
        )  # fmt: skip
        self.critic = StackedCritic(
            [m.qvalue for m in members], [m.value for m in members],
            expectile=aepo.expectile, discount=aepo.discount, lr=t.critic.lr,
            steps=t.critic.steps, target_tau=t.critic.target_tau, adam=t.adam,
            lr_schedule=t.lr_schedule_of("critic"),
            seeds=[member_stream_seed(s, "critic") for s in self.seeds],
        )  # fmt: skip
        gen_device = dataset.device or "cpu"
        self.gamma_generators = [
            torch.Generator(device=gen_device).manual_seed(member_stream_seed(s, "gamma"))
            for s in self.seeds
        ]
        self.behaviour: Any = None
        self.posterior: Any = None
        self.energy: Any = None
        self._energy_stage: Stage | None = None
        self.stages = self._stages()

    @property
    def generators(self) -> dict[str, torch.Generator]:
        """The generators outside the stages' own state (for ``OfflineTrainer(generators=)``)."""
        return {f"gamma_member{k}": g for k, g in enumerate(self.gamma_generators)}

    # --------------------------------------------------------------------------- stages
    def sync_behaviour(self) -> None:
        """The stacked (EMA) noise networks as the frozen behaviour model of every member."""
        self.behaviour = self.diffusion.loss.sampling_network()

    def _gamma_update(self, _batch: None, _step: int) -> dict[str, Tensor]:
        from torchrl_aepo.stacked import estimate_stacked_posterior_statistics

        table = self.train.gamma_table
        self.posterior = estimate_stacked_posterior_statistics(
            self.behaviour,
            self.dataset,
            self.gamma_generators,
            schedule=self.diffusion.loss.schedule,
            num_times=int(table.num_times),
            samples_per_time=int(table.samples_per_time),
            batch_size=int(table.batch_size),
        )
        return {}

    def _build_energy(self) -> None:
        from torchrl_aepo.stacked import StackedEnergy

        if self.energy is not None:
            return
        a, t = self.aepo, self.train
        clip = None if a.clip_posterior_mean is None else tuple(a.clip_posterior_mean)
        self.energy = StackedEnergy(
            [m.energy for m in self._initial],
            self.behaviour,
            self.critic.loss.target_qvalue_network(),
            self.posterior,
            value_network=self.critic.value if a.energy_baseline == "value" else None,
            beta=float(a.beta), posterior=int(a.posterior), clip_posterior_mean=clip,
            variance_weight=float(a.variance_weight), lr=t.energy.lr, steps=t.energy.steps,
            adam=t.adam, lr_schedule=t.lr_schedule_of("energy"),
            seeds=[member_stream_seed(s, "energy") for s in self.seeds],
        )  # fmt: skip
        self._energy_stage = self.energy.stage(self.dataset, t.energy.steps, t.energy.batch_size)

    def _stages(self) -> list[Stage]:
        t = self.train
        diffusion = self.diffusion.stage(self.dataset, t.diffusion.steps, t.diffusion.batch_size)
        diffusion.finalize = self.sync_behaviour
        return [
            diffusion,
            self.critic.stage(self.dataset, t.critic.steps, t.critic.batch_size),
            Stage(
                "gamma",
                1,
                self._gamma_update,
                lambda: {"posterior": _StackedPosteriorSlot(self)},
                batch_size=None,
            ),
            Stage(
                "energy",
                t.energy.steps,
                lambda batch, step: self._energy_stage.step(batch, step),
                lambda: self._energy_stage.stateful(),
                batch_size=None,
                setup=self._build_energy,
            ),
        ]

    # -------------------------------------------------------------------------- members
    def member(self, k: int) -> tuple[AEPONetworks, AEPOLosses]:
        """Member ``k`` as an ordinary single-seed network set and losses, for
        :func:`~torchrl_aepo.aepo.build_actor` and the evaluation: online and behaviour (EMA)
        noise networks, twin Q and V with the target Q, and the energy network, all copies of
        member ``k``'s trained weights."""
        from torchrl_aepo.stacked import member_tensors

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seeds[k])
            nets = build_networks(self.model, self.obs_dim, self.action_dim, self.device)
        trained = {
            "noise": self.diffusion.noise,
            "behaviour": self.behaviour if self.behaviour is not None else self.diffusion.noise,
            "qvalue": self.critic.qvalue,
            "value": self.critic.value,
        }
        if self.energy is not None:
            trained["energy"] = self.energy.energy
        for name, stacked in trained.items():
            getattr(nets, name).load_state_dict(stacked.member(k).state_dict())
        losses = build_losses(nets, self.aepo, self.train)
        target = member_tensors(
            self.critic.qvalue, self.critic.loss.target_qvalue_network_params, k
        )
        losses.critic.target_qvalue_network_params.data.update_(target)
        if self.diffusion.ema is not None:
            ema = member_tensors(
                self.diffusion.noise, self.diffusion.loss.target_noise_network_params, k
            )
            losses.diffusion.target_noise_network_params.data.update_(ema)
        return nets, losses
