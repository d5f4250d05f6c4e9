"""Several seeds in one process: N copies of a network with stacked parameters, run by vmap.

:class:`StackedModule` holds the parameters of ``N`` networks of one architecture stacked along
a leading dimension (built with :meth:`tensordict.TensorDict.from_modules`, as TorchRL builds
ensembles) and calls the architecture once for all members with :func:`torch.vmap`: inputs
``[N, *B, ...]`` give outputs ``[N, *B, ...]``, member ``k`` computed with the weights of
network ``k``. The stacked parameters are ordinary ``nn.Parameter``s of the module, so a
TorchRL loss built on it (``convert_to_functional``, target copies, ``SoftUpdate``) and an Adam
over them work unchanged; Adam and Polyak updates are elementwise, hence independent per member.

:class:`StackedCritic` is the critic stage (``ExpectileLoss``, Eq. 27) of ``N`` seeds trained at
once: one loss on stacked Q and V networks with ``reduction="none"``, the per-member means
summed (so the gradient of member ``k`` is exactly its own loss's gradient), each member with its
own data order (its own ``torch.Generator`` over the dataset). Its :meth:`StackedCritic.stage`
is a :class:`~torchrl_aepo.trainer.Stage` for :class:`~torchrl_aepo.trainer.OfflineTrainer`
(checkpoints hold the stacked weights, the Adam state and every member's generator).

:class:`StackedDiffusion` is the behaviour stage (``DiffusionLoss``, Eq. 7, with its EMA) of
``N`` seeds: each member's generator draws its batch, diffusion times and noise, given to the
loss as inputs.

:func:`estimate_stacked_posterior_statistics` estimates every member's ``Gamma`` table from its
(EMA) noise network (``StackedModule.member(k)``), and :class:`StackedEnergy` is the analytic
energy stage (``AnalyticEnergyLoss``, Eqs. 25-26) of ``N`` seeds: stacked energy networks on the
frozen stacked behaviour model and target critic, member ``k`` reading its own table
(:class:`~torchrl_aepo.objectives.StackedPosteriorStatistics`), batch, times and noise.

Scope: every stage of the staged plan with the expectile critic and the analytic energy is
stacked; :class:`~torchrl_aepo.aepo.StackedTrainingPlan` assembles them for the recipe's
``train.num_seeds=N`` (``recipes/multi_seed.py``), which then evaluates each member as an
ordinary single-seed actor and reports per-seed scores and their mean ± std. Not stacked: the
joint plan, the ablation critics and energies (support actions), gradient clipping.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor, nn
from torchrl.objectives import SoftUpdate

from torchrl_aepo.trainer import GeneratorState, OptimizerStep, Stage, adam_step

__all__ = [
    "StackedModule",
    "StackedCritic",
    "StackedDiffusion",
    "StackedEnergy",
    "estimate_stacked_posterior_statistics",
    "member_tensors",
    "sample_stacked",
]


class StackedModule(nn.Module):
    """``N`` networks of one architecture as one module with stacked parameters.

    Args:
        modules: the ``N`` networks (same class and shapes); their current weights are copied.

    ``forward(*inputs)``: every input ``[N, *B, ...]`` (member ``k``'s inputs at index ``k``);
    returns ``[N, *B, ...]``. Attributes ``obs_dim`` / ``action_dim`` of the networks are kept.

    Example:
        >>> nets = [nn.Linear(3, 2) for _ in range(4)]
        >>> stacked = StackedModule(nets)
        >>> x = torch.randn(4, 5, 3)
        >>> torch.allclose(stacked(x)[2], nets[2](x[2]), atol=1e-6)
        True
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(modules) < 1:
            raise ValueError("StackedModule needs at least one module.")
        kinds = {type(m) for m in modules}
        if len(kinds) != 1:
            raise ValueError(f"StackedModule: all modules must have one class, got {kinds}.")
        stacked = TensorDict.from_modules(*modules).flatten_keys(".")
        trainable = dict(modules[0].named_parameters())
        self._names: list[tuple[str, str]] = []
        for key, value in stacked.items():
            mangled = key.replace(".", "__")  # parameter names cannot hold dots
            if key in trainable:
                self.register_parameter(mangled, nn.Parameter(value.detach().clone()))
            else:
                self.register_buffer(mangled, value.detach().clone())
            self._names.append((key, mangled))
        base = copy.deepcopy(modules[0])
        TensorDict.from_module(base).data.to("meta").to_module(base)
        self.__dict__["_base"] = base  # weightless: not a submodule, not in the state dict
        self.num_members = len(modules)
        for attr in ("obs_dim", "action_dim"):
            if hasattr(modules[0], attr):
                setattr(self, attr, getattr(modules[0], attr))

    def stacked_params(self) -> TensorDictBase:
        """The stacked tensors as a ``TensorDict`` of batch size ``[N]`` (nested like the network)."""
        return TensorDict(
            {key: getattr(self, mangled) for key, mangled in self._names},
            batch_size=[self.num_members],
        ).unflatten_keys(".")

    def forward(self, *inputs: Tensor) -> Tensor:
        base = self._base

        def one(params: TensorDictBase, *x: Tensor) -> Tensor:
            with params.to_module(base):
                return base(*x)

        return torch.vmap(one, in_dims=(0,) * (len(inputs) + 1))(self.stacked_params(), *inputs)

    def member(self, k: int) -> nn.Module:
        """Member ``k`` as a stand-alone network (a copy of its weights)."""
        module = copy.deepcopy(self._base)
        self.stacked_params()[k].detach().clone().to_module(module)
        return module


def sample_stacked(
    dataset: TensorDictBase, batch_size: int, generators: Sequence[torch.Generator]
) -> TensorDictBase:
    """``[N, batch_size]`` transitions of ``dataset``: row ``k`` drawn uniformly with replacement
    with ``generators[k]`` (each member its own data order)."""
    n = dataset.shape[0]
    index = torch.stack(
        [torch.randint(n, (batch_size,), generator=g, device=g.device) for g in generators]
    )
    return dataset[index.to(dataset.device)]


class _StackedStage:
    """What the stacked stages share: a trainer :class:`~torchrl_aepo.trainer.Stage` that draws
    ``[N, batch_size]`` with the members' generators (:meth:`draw`), updates all members at once
    (:meth:`update`, per-member metrics) and checkpoints the loss, the optimiser and every
    member's generator. Logged metrics are the means over members."""

    stage_name: str
    loss: nn.Module
    optim: Any
    generators: list[torch.Generator]

    def draw(self, dataset: TensorDictBase, batch_size: int) -> TensorDictBase:
        raise NotImplementedError

    def update(self, batch: TensorDictBase) -> dict[str, Tensor]:
        raise NotImplementedError

    def stage(self, dataset: TensorDictBase, total_steps: int, batch_size: int) -> Stage:
        """The trainer stage named :attr:`stage_name`."""

        def step(_batch: None, _step: int) -> Mapping[str, Tensor]:
            return {k: v.mean() for k, v in self.update(self.draw(dataset, batch_size)).items()}

        def stateful() -> dict[str, Any]:
            state: dict[str, Any] = {"loss": self.loss, "optim": self.optim}
            for k, g in enumerate(self.generators):
                state[f"rng_member{k}"] = GeneratorState(g)
            return state

        return Stage(self.stage_name, int(total_steps), step, stateful, batch_size=None)


class StackedCritic(_StackedStage):
    """The expectile critic stage of ``N`` seeds at once (stacked twin Q and V).

    Args:
        qvalues / values: the ``N`` twin-Q and value networks (member ``k``'s initial weights).
        expectile / discount: ``ExpectileLoss``'s.
        lr: Adam's learning rate; steps: the lr schedule's span.
        target_tau: Polyak rate of the target Q.
        adam / lr_schedule: as in :func:`~torchrl_aepo.trainer.adam_step`. Gradient clipping
            would couple the members through the global norm and is not offered.
        seeds: the members' data-order seeds (``len == N``); default ``0..N-1``.
    """

    stage_name = "critic"

    def __init__(
        self,
        qvalues: Sequence[nn.Module],
        values: Sequence[nn.Module],
        *,
        expectile: float = 0.7,
        discount: float = 0.99,
        lr: float = 3e-4,
        steps: int = 1,
        target_tau: float = 0.005,
        adam: str = "fused",
        lr_schedule: str = "constant",
        seeds: Sequence[int] | None = None,
    ) -> None:
        from torchrl_aepo.objectives import ExpectileLoss

        if len(qvalues) != len(values):
            raise ValueError(f"{len(qvalues)} Q networks but {len(values)} value networks.")
        self.num_members = len(qvalues)
        seeds = list(range(self.num_members)) if seeds is None else list(seeds)
        if len(seeds) != self.num_members:
            raise ValueError(f"{len(seeds)} seeds for {self.num_members} members.")
        self.qvalue, self.value = StackedModule(qvalues), StackedModule(values)
        self.loss = ExpectileLoss(
            self.qvalue,
            self.value,
            expectile=float(expectile),
            discount=float(discount),
            reduction="none",
        )
        self.target = SoftUpdate(self.loss, tau=float(target_tau))
        self.optim: OptimizerStep = adam_step(
            self.loss, lr, steps, adam=adam, lr_schedule=lr_schedule,
            name="loss_qvalue + loss_value (stacked)",
        )  # fmt: skip
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def update(self, batch: TensorDictBase) -> dict[str, Tensor]:
        """One Adam step of every member on ``batch`` (``[N, B]``); per-member losses ``[N]``."""
        out = self.loss(batch)
        dims = tuple(range(1, out["loss_qvalue"].ndim))
        loss_q = out["loss_qvalue"].mean(dims) if dims else out["loss_qvalue"]
        dims = tuple(range(1, out["loss_value"].ndim))
        loss_v = out["loss_value"].mean(dims) if dims else out["loss_value"]
        self.optim((loss_q + loss_v).sum())
        self.target.step()
        return {"loss_qvalue": loss_q.detach(), "loss_value": loss_v.detach()}

    def draw(self, dataset: TensorDictBase, batch_size: int) -> TensorDictBase:
        """``[N, batch_size]`` transitions, member ``k``'s drawn with its generator."""
        return sample_stacked(dataset, batch_size, self.generators)


class StackedDiffusion(_StackedStage):
    """The behaviour (diffusion, Eq. 7) stage of ``N`` seeds at once (stacked noise networks).

    One :class:`~torchrl_aepo.DiffusionLoss` with ``reduction="none"`` on a
    :class:`StackedModule` of the ``N`` noise networks, with its EMA (``SoftUpdate``, elementwise:
    independent per member) and one Adam. Each member has its own generator, which draws its
    batch indices, diffusion times and noise (given to the loss as ``diffusion_time`` /
    ``diffusion_noise``), so member ``k`` sees exactly what a single-seed run with that generator
    would feed the same loss.

    Args:
        noise_networks: the ``N`` noise predictors (member ``k``'s initial weights).
        lr / steps / adam / lr_schedule: as in :func:`~torchrl_aepo.trainer.adam_step`.
        ema_decay: EMA decay of the sampling weights, or ``None``.
        seeds: the members' generator seeds (default ``0..N-1``).
        schedule: the noise schedule (default ``VPSchedule()``).
    """

    stage_name = "diffusion"

    def __init__(
        self,
        noise_networks: Sequence[nn.Module],
        *,
        lr: float = 1e-4,
        steps: int = 1,
        ema_decay: float | None = 0.999,
        adam: str = "fused",
        lr_schedule: str = "constant",
        seeds: Sequence[int] | None = None,
        schedule: Any = None,
    ) -> None:
        from torchrl_aepo.objectives import DiffusionLoss

        self.num_members = len(noise_networks)
        seeds = list(range(self.num_members)) if seeds is None else list(seeds)
        if len(seeds) != self.num_members:
            raise ValueError(f"{len(seeds)} seeds for {self.num_members} members.")
        self.noise = StackedModule(noise_networks)
        self.loss = DiffusionLoss(
            self.noise, schedule=schedule, ema=ema_decay is not None, reduction="none"
        )
        self.ema = None if ema_decay is None else SoftUpdate(self.loss, tau=1.0 - ema_decay)
        self.optim: OptimizerStep = adam_step(
            self.loss, lr, steps, adam=adam, lr_schedule=lr_schedule,
            name="loss_diffusion (stacked)",
        )  # fmt: skip
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def draw(self, dataset: TensorDictBase, batch_size: int) -> TensorDictBase:
        """``[N, batch_size]`` transitions with each member's times and noise, all drawn with
        the member's generator (indices, then times, then noise)."""
        n, rows = dataset.shape[0], []
        action_dim = dataset["action"].shape[-1]
        for g in self.generators:
            index = torch.randint(n, (batch_size,), generator=g)
            time = self.loss.schedule.sample_time((batch_size, 1), generator=g)
            noise = torch.randn(batch_size, action_dim, generator=g)
            row = dataset[index.to(dataset.device)].clone(False)
            row.set(self.loss.tensor_keys.time, time.to(dataset.device))
            row.set(self.loss.tensor_keys.noise, noise.to(dataset.device))
            rows.append(row)
        return torch.stack(rows)

    def update(self, batch: TensorDictBase) -> dict[str, Tensor]:
        """One Adam (+ EMA) step of every member on ``batch`` (``[N, B]``); losses ``[N]``."""
        per_sample = self.loss(batch)["loss_diffusion"]
        per_member = per_sample.reshape(self.num_members, -1).mean(-1)
        self.optim(per_member.sum())
        if self.ema is not None:
            self.ema.step()
        return {"loss_diffusion": per_member.detach()}


def member_tensors(stacked: StackedModule, tensors: TensorDictBase, k: int) -> TensorDictBase:
    """Member ``k``'s slice of ``tensors``, a TensorDict keyed like ``stacked``'s own tensors
    (e.g. a loss's ``target_*_params`` over a :class:`StackedModule`), nested like the single
    network's parameters, so that it can update a single-seed loss's target parameters."""
    flat = tensors.flatten_keys(".")
    return TensorDict(
        {key: flat[mangled][k].detach().clone() for key, mangled in stacked._names},
        batch_size=[],
    ).unflatten_keys(".")


def estimate_stacked_posterior_statistics(
    behaviour: StackedModule,
    dataset: TensorDictBase,
    generators: Sequence[torch.Generator],
    **estimate_kwargs: Any,
) -> Any:
    """The ``Gamma`` / Posterior-2 tables of every member of a stacked (EMA) noise network.

    Member ``k``'s table is :meth:`~torchrl_aepo.objectives.PosteriorStatistics.estimate` of
    ``behaviour.member(k)`` on ``dataset``'s ``(s, a)`` pairs with ``generators[k]``, exactly
    what a single-seed run with that network and generator estimates. ``estimate_kwargs``:
    ``schedule``, ``num_times``, ``samples_per_time``, ``batch_size``.
    """
    from torchrl_aepo.objectives import PosteriorStatistics, StackedPosteriorStatistics

    if len(generators) != behaviour.num_members:
        raise ValueError(f"{len(generators)} generators for {behaviour.num_members} members.")
    members = [
        PosteriorStatistics.estimate(
            behaviour.member(k),
            dataset["observation"],
            dataset["action"],
            generator=g,
            **estimate_kwargs,
        )
        for k, g in enumerate(generators)
    ]
    return StackedPosteriorStatistics(members)


class StackedEnergy(_StackedStage):
    """The analytic energy stage (``AnalyticEnergyLoss``, Eqs. 25-26) of ``N`` seeds at once.

    One :class:`~torchrl_aepo.objectives.AnalyticEnergyLoss` with ``reduction="none"`` on a
    :class:`StackedModule` of the ``N`` energy networks, with the frozen stacked noise network
    (the members' behaviour models), the frozen stacked critic (the members' target twin Q)
    and a :class:`~torchrl_aepo.objectives.StackedPosteriorStatistics` (member ``k``'s
    ``Gamma`` table for row ``k``). The per-member means are summed, so member ``k``'s
    gradient is exactly its own loss's; one Adam (elementwise, hence independent per member).
    Each member's generator draws its batch indices, diffusion times and noise (given to the
    loss as ``energy_time`` / ``energy_noise``).

    Args:
        energy_networks: the ``N`` energy networks (member ``k``'s initial weights).
        noise_network: the frozen behaviour noise networks: a :class:`StackedModule` (e.g.
            ``StackedDiffusion.loss.sampling_network()``) or a sequence of ``N`` networks.
        qvalue_network: the frozen critics: a stacked module (e.g.
            ``StackedCritic.loss.target_qvalue_network()``) or ``N`` networks.
        posterior_statistics: a ``StackedPosteriorStatistics`` or ``N`` ``PosteriorStatistics``.
        value_network: with ``energy_baseline="value"``: the stacked value networks (the
            critic is then ``Q - V``, as :class:`~torchrl_aepo.aepo.AdvantageCritic`).
        beta / posterior / clip_posterior_mean / variance_weight: ``AnalyticEnergyLoss``'s.
        lr / steps / adam / lr_schedule: as in :func:`~torchrl_aepo.trainer.adam_step`.
        seeds: the members' generator seeds (default ``0..N-1``).
    """

    stage_name = "energy"

    def __init__(
        self,
        energy_networks: Sequence[nn.Module],
        noise_network: nn.Module | Sequence[nn.Module],
        qvalue_network: nn.Module | Sequence[nn.Module],
        posterior_statistics: Any,
        *,
        value_network: nn.Module | Sequence[nn.Module] | None = None,
        beta: float = 3.0,
        posterior: int = 1,
        clip_posterior_mean: tuple[float, float] | None = (-1.0, 1.0),
        variance_weight: float = 1.0,
        lr: float = 3e-4,
        steps: int = 1,
        adam: str = "fused",
        lr_schedule: str = "constant",
        seeds: Sequence[int] | None = None,
    ) -> None:
        from torchrl_aepo.objectives import (
            AnalyticEnergyLoss,
            StackedPosteriorStatistics,
            frozen_view,
        )

        self.num_members = len(energy_networks)
        seeds = list(range(self.num_members)) if seeds is None else list(seeds)
        if len(seeds) != self.num_members:
            raise ValueError(f"{len(seeds)} seeds for {self.num_members} members.")
        self.energy = StackedModule(energy_networks)
        noise, qvalue = _as_stacked(noise_network), _as_stacked(qvalue_network)
        if not isinstance(posterior_statistics, StackedPosteriorStatistics):
            posterior_statistics = StackedPosteriorStatistics(list(posterior_statistics))
        for name, part in (
            ("noise", noise),
            ("qvalue", qvalue),
            ("posterior", posterior_statistics),
        ):
            count = getattr(part, "num_members", self.num_members)
            if count != self.num_members:
                raise ValueError(f"{self.num_members} energy networks but {count} {name} members.")
        critic = qvalue
        if value_network is not None:
            from torchrl_aepo.aepo.build import AdvantageCritic

            critic = AdvantageCritic(qvalue, frozen_view(_as_stacked(value_network)))
        self.loss = AnalyticEnergyLoss(
            self.energy,
            noise,
            critic,
            posterior_statistics,
            beta=beta,
            posterior=posterior,
            clip_posterior_mean=clip_posterior_mean,
            variance_weight=variance_weight,
            reduction="none",
        )
        self.optim: OptimizerStep = adam_step(
            self.loss, lr, steps, adam=adam, lr_schedule=lr_schedule,
            name="loss_energy (stacked)",
        )  # fmt: skip
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def draw(self, dataset: TensorDictBase, batch_size: int) -> TensorDictBase:
        """``[N, batch_size]`` transitions with each member's times and noise, all drawn with
        the member's generator (indices, then times, then noise)."""
        n, rows = dataset.shape[0], []
        action_dim = dataset["action"].shape[-1]
        keys = self.loss.tensor_keys
        for g in self.generators:
            index = torch.randint(n, (batch_size,), generator=g)
            time = self.loss.schedule.sample_time((batch_size, 1), generator=g)
            noise = torch.randn(batch_size, action_dim, generator=g)
            row = dataset[index.to(dataset.device)].clone(False)
            row.set(keys.time, time.to(dataset.device))
            row.set(keys.noise, noise.to(dataset.device))
            rows.append(row)
        return torch.stack(rows)

    def update(self, batch: TensorDictBase) -> dict[str, Tensor]:
        """One Adam step of every member on ``batch`` (``[N, B]``): ``loss_energy`` ``[N]`` per
        member and the loss's diagnostics (scalars over all members)."""
        out = self.loss(batch)
        per_member = out["loss_energy"].reshape(self.num_members, -1).mean(-1)
        self.optim(per_member.sum())
        metrics = {k: v.detach() for k, v in out.items() if k != "loss_energy" and v.numel() == 1}
        return {"loss_energy": per_member.detach(), **metrics}


def _as_stacked(module: nn.Module | Sequence[nn.Module]) -> nn.Module:
    return StackedModule(list(module)) if isinstance(module, (list, tuple)) else module
