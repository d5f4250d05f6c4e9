"""AEPO's training plan: the stages for the generic trainer, and the invariant tying them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from tensordict import TensorDictBase
from torch import Tensor, nn
from torchrl._utils import timeit

from torchrl_aepo.aepo.build import (
    AEPOLosses,
    AEPONetworks,
    build_energy_loss,
    estimate_posterior_statistics,
)
from torchrl_aepo.aepo.config import PLANS, AEPOConfig, TrainConfig
from torchrl_aepo.trainer import GeneratorState, OptimizerStep, Stage, adam_step


def _metrics(td: TensorDictBase) -> dict[str, Tensor]:
    """Scalar entries of a loss output (losses and diagnostics), detached."""
    return {
        key: value.detach().reshape(())
        for key, value in td.items()
        if isinstance(value, Tensor) and value.numel() == 1
    }


class _PosteriorSlot:
    """Checkpoints the plan's ``Gamma`` statistics (they are built during training)."""

    def __init__(self, plan: TrainingPlan) -> None:
        self.plan = plan

    def state_dict(self) -> dict[str, Any]:
        return self.plan.posterior.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        from torchrl_aepo.objectives import PosteriorStatistics

        self.plan._set_posterior(PosteriorStatistics.from_state_dict(dict(state)))


class TrainingPlan:
    """AEPO's training stages for :class:`~torchrl_aepo.trainer.OfflineTrainer`.

    Built by :func:`build_training_plan`. :attr:`stages` is ``[diffusion, critic, gamma,
    energy]`` (``train.plan="staged"``) or ``[joint]``. The plan holds the ``Gamma``
    statistics (:attr:`posterior`) and the energy loss (:attr:`energy_loss`, built when the
    energy stage starts) and keeps the behaviour network in sync with the trained noise
    network (:meth:`sync_behaviour`).
    """

    def __init__(
        self,
        nets: AEPONetworks,
        losses: AEPOLosses,
        dataset: TensorDictBase,
        *,
        aepo: AEPOConfig,
        train: TrainConfig,
        optimizer_step: Callable[[nn.Module, float, int, str], OptimizerStep],
        seed: int = 0,
        compile: Mapping[str, Any] | None = None,
    ) -> None:
        if train.plan not in PLANS:
            raise ValueError(f"train.plan must be 'staged' or 'joint', got {train.plan!r}.")
        self.nets, self.losses, self.dataset = nets, losses, dataset
        self.aepo, self.train = aepo, train
        self.compile = compile
        self.posterior: Any = None
        self.energy_loss: nn.Module | None = None
        self._energy_step: OptimizerStep | None = None
        self._optimizer_step = optimizer_step
        self.gamma_generator = torch.Generator(device=dataset.device or "cpu").manual_seed(seed + 1)
        joint = train.plan == "joint"
        # The lr schedule of each optimiser spans the steps it takes (the joint loop's in joint).
        budget = {
            name: train.joint.steps if joint else getattr(train, name).steps
            for name in ("diffusion", "critic", "energy")
        }
        self._budget = budget
        self.diffusion_step = optimizer_step(
            nets.noise, train.diffusion.lr, budget["diffusion"], "loss_diffusion"
        )
        self.critic_step = optimizer_step(
            losses.critic, train.critic.lr, budget["critic"], "loss_qvalue + loss_value"
        )
        self.stages = self._joint() if joint else self._staged()

    # ----------------------------------------------------------- stage dependencies
    #: Config keys (dotted prefixes) each stage's result depends on, besides the shared ones:
    #: a stage's checkpoint can be reused by a run that changes none of them.
    SHARED_KEYS = ("task", "data", "seed", "train.plan", "train.adam", "train.lr_schedule",
                   "train.grad_clip")  # fmt: skip
    STAGE_KEYS = {
        "diffusion": ("model.noise_network", "model.noise_widths", "model.noise_num_cells",
                      "train.diffusion"),
        "critic": ("model.qvalue_num_cells", "model.value_num_cells", "aepo.expectile",
                   "aepo.discount", "train.critic"),
        "gamma": ("model.noise_network", "model.noise_widths", "model.noise_num_cells",
                  "train.diffusion", "train.gamma_table"),
    }  # fmt: skip

    def stage_configs(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Per-stage subsets of the full training ``config`` (nested ``task``/``data``/
        ``model``/``aepo``/``train``/``seed``) for ``OfflineTrainer(stage_configs=...)``.

        The behaviour model, the critic and the ``Gamma`` table depend only on their own
        settings; the energy (and the joint loop) on everything. So a run that changes, say,
        ``aepo.beta`` or ``aepo.energy_baseline`` reuses the first three stages of a finished
        run (``init_from``) and trains only the energy.
        """
        out = {}
        for stage in self.stages:
            keys = self.STAGE_KEYS.get(stage.name)
            out[stage.name] = (
                dict(config) if keys is None else _select(config, (*self.SHARED_KEYS, *keys))
            )
        return out

    # ------------------------------------------------------------- the one invariant
    def sync_behaviour(self) -> None:
        """Copy the (EMA) noise-network weights into ``nets.behaviour``.

        Called when the diffusion stage completes (also when it is restored on resume), before
        every ``Gamma`` refresh of the joint loop and before every evaluation hook
        (:meth:`evaluation_op`). Idempotent.
        """
        state = self.losses.diffusion.sampling_network().state_dict()
        self.nets.behaviour.load_state_dict(state)

    def evaluation_op(
        self, evaluate: Callable[[str, int], None], interval: int
    ) -> Callable[[str, int, Any], None]:
        """A trainer ``"post_optim"`` op that evaluates the policy during the last stage.

        Every ``interval`` steps of the last stage (not at its final step, which the caller
        evaluates anyway) it syncs the behaviour network and calls ``evaluate(stage, step)``.
        """
        last = self.stages[-1]

        def op(stage: str, step: int, _metrics: Any) -> None:
            if stage == last.name and step % interval == 0 and step < last.total_steps:
                self.sync_behaviour()
                evaluate(stage, step)

        return op

    # ---------------------------------------------------------------------- pieces
    def _set_posterior(self, posterior: Any) -> None:
        self.posterior = posterior
        if self.energy_loss is not None:
            self.energy_loss.update_posterior_statistics(posterior)

    def _estimate_gamma(self) -> None:
        with timeit("train/gamma/estimate"):
            posterior = estimate_posterior_statistics(
                self.nets.behaviour,
                self.dataset,
                self.train.gamma_table,
                schedule=self.losses.diffusion.schedule,
                generator=self.gamma_generator,
            )
        self._set_posterior(posterior)

    def _build_energy(self) -> None:
        if self.energy_loss is None:
            self.energy_loss = build_energy_loss(
                self.nets, self.losses, self.aepo, self.posterior, self.compile
            )
            self._energy_step = self._optimizer_step(
                self.nets.energy, self.train.energy.lr, self._budget["energy"], "loss_energy"
            )

    def _diffusion_update(self, batch: TensorDictBase, _step: int) -> dict[str, Tensor]:
        out = self.losses.diffusion(batch)
        self.diffusion_step(out["loss_diffusion"])
        if self.losses.diffusion_ema is not None:
            self.losses.diffusion_ema.step()
        return _metrics(out)

    def _critic_update(self, batch: TensorDictBase, _step: int) -> dict[str, Tensor]:
        out = self.losses.critic(batch)
        self.critic_step(out["loss_qvalue"] + out["loss_value"])
        self.losses.critic_target.step()
        return _metrics(out)

    def _energy_update(self, batch: TensorDictBase, _step: int) -> dict[str, Tensor]:
        out = self.energy_loss(batch)
        self._energy_step(out["loss_energy"])
        return _metrics(out)

    def _gamma_update(self, _batch: None, _step: int) -> dict[str, Tensor]:
        self._estimate_gamma()
        return {}

    def _staged(self) -> list[Stage]:
        t = self.train
        return [
            Stage(
                "diffusion",
                t.diffusion.steps,
                self._diffusion_update,
                lambda: {"loss": self.losses.diffusion, "optim": self.diffusion_step},
                batch_size=t.diffusion.batch_size,
                finalize=self.sync_behaviour,
            ),
            Stage(
                "critic",
                t.critic.steps,
                self._critic_update,
                lambda: {"loss": self.losses.critic, "optim": self.critic_step},
                batch_size=t.critic.batch_size,
            ),
            Stage(
                "gamma",
                1,
                self._gamma_update,
                lambda: {"posterior": _PosteriorSlot(self)},
                batch_size=None,
            ),
            Stage(
                "energy",
                t.energy.steps,
                self._energy_update,
                lambda: {"loss": self.energy_loss, "optim": self._energy_step},
                batch_size=t.energy.batch_size,
                setup=self._build_energy,
            ),
        ]

    def _joint(self) -> list[Stage]:
        refresh = self.train.joint.gamma_refresh_interval

        def setup() -> None:
            # A provisional table from the untrained network, so that the energy loss exists;
            # refreshed every `refresh` steps.
            self.sync_behaviour()
            self._estimate_gamma()
            self._build_energy()

        def update(batch: TensorDictBase, step: int) -> dict[str, Tensor]:
            metrics = self._diffusion_update(batch, step)
            metrics.update(self._critic_update(batch, step))
            if step % refresh == 0 and step > 0:
                self.sync_behaviour()
                self._estimate_gamma()
            metrics.update(self._energy_update(batch, step))
            return metrics

        return [
            Stage(
                "joint",
                self.train.joint.steps,
                update,
                lambda: {
                    "diffusion": self.losses.diffusion,
                    "diffusion_optim": self.diffusion_step,
                    "critic": self.losses.critic,
                    "critic_optim": self.critic_step,
                    "posterior": _PosteriorSlot(self),
                    "energy": self.energy_loss,
                    "energy_optim": self._energy_step,
                    # Between two refreshes the behaviour copy holds the EMA weights of the
                    # last refresh, which no other state recreates; the generator makes the
                    # later refreshes draw the same noise as an uninterrupted run.
                    "behaviour": self.nets.behaviour,
                    "gamma_rng": GeneratorState(self.gamma_generator),
                },
                batch_size=self.train.joint.batch_size,
                setup=setup,
                finalize=self.sync_behaviour,
            )
        ]


def _select(config: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The entries of nested ``config`` at the dotted ``keys`` (missing keys are skipped)."""
    out: dict[str, Any] = {}
    for key in keys:
        node, parts = config, key.split(".")
        for part in parts:
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            target = out
            for part in parts[:-1]:
                target = target.setdefault(part, {})
            target[parts[-1]] = node
    return out


def build_training_plan(
    nets: AEPONetworks,
    losses: AEPOLosses,
    dataset: TensorDictBase,
    *,
    aepo: AEPOConfig,
    train: TrainConfig,
    seed: int = 0,
    compile: Mapping[str, Any] | None = None,
) -> TrainingPlan:
    """AEPO's training plan on ``dataset`` (all transitions, actions in the training box).

    Args:
        nets / losses: from :func:`build_networks` / :func:`build_losses`.
        dataset: the whole dataset as a TensorDict (``observation [N, s]``, ``action
            [N, d]``); the ``Gamma`` table is estimated on it.
        aepo / train: the configuration.
        seed: seeds the ``Gamma`` estimate's generator (``seed + 1``).
        compile: ``torch.compile`` options for the energy loss, or ``None``.

    Returns:
        a :class:`TrainingPlan`; pass ``plan.stages`` to ``OfflineTrainer``.
    """

    def optimizer_step(module: nn.Module, lr: float, steps: int, name: str) -> OptimizerStep:
        return adam_step(
            module,
            lr,
            steps,
            adam=train.adam,
            lr_schedule=train.lr_schedule,
            grad_clip=train.grad_clip,
            name=name,
        )

    return TrainingPlan(
        nets,
        losses,
        dataset,
        aepo=aepo,
        train=train,
        optimizer_step=optimizer_step,
        seed=seed,
        compile=compile,
    )
