"""AEPO's training plan: the stages for the generic trainer, and the invariant tying them."""

from __future__ import annotations

import time
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
from torchrl_aepo.aepo.weighting import advantage_weights
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


class _SupportsSlot:
    """Checkpoints the plan's support actions (generated once, after the diffusion stage)."""

    def __init__(self, plan: TrainingPlan) -> None:
        self.plan = plan

    def state_dict(self) -> dict[str, Any]:
        return {"supports": dict(self.plan.supports), "stats": dict(self.plan.support_stats)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.plan.supports = dict(state["supports"])
        self.plan.support_stats = dict(state["stats"])


class TrainingPlan:
    """AEPO's training stages for :class:`~torchrl_aepo.trainer.OfflineTrainer`.

    Built by :func:`build_training_plan`. :attr:`stages` is ``[diffusion, critic, gamma,
    energy]`` (``train.plan="staged"``) or ``[joint]``. The plan holds the ``Gamma``
    statistics (:attr:`posterior`) and the energy loss (:attr:`energy_loss`, built when the
    energy stage starts) and keeps the behaviour network in sync with the trained noise
    network (:meth:`sync_behaviour`).

    The ablations change the staged plan (:meth:`TrainConfig.stage_names`): with
    ``aepo.critic=isql|cql`` or ``aepo.energy=cep`` a ``supports`` stage after ``diffusion``
    draws ``aepo.num_support`` actions per transition from the frozen behaviour model, once,
    at ``s'`` (``isql``, ``cql``) and/or at ``s`` (``cql``, ``cep``); they are kept in
    :attr:`supports` (``"at_s"`` / ``"at_next"``, ``[N, K, d]``, checkpointed), their cost in
    :attr:`support_stats`, and added to each critic/energy batch by its ``"index"`` under
    ``("support", "action")`` / ``("next", "support", "action")``. The ``gamma`` stage exists
    only for ``aepo.energy=analytic``.
    """

    def __init__(
        self,
        nets: AEPONetworks,
        losses: AEPOLosses,
        dataset: TensorDictBase,
        *,
        aepo: AEPOConfig,
        train: TrainConfig,
        optimizer_step: Callable[[nn.Module, float, int, str, str], OptimizerStep],
        seed: int = 0,
        compile: Mapping[str, Any] | None = None,
    ) -> None:
        if train.plan not in PLANS:
            raise ValueError(f"train.plan must be 'staged' or 'joint', got {train.plan!r}.")
        self.nets, self.losses, self.dataset = nets, losses, dataset
        self.aepo, self.train = aepo, train
        self.compile = compile
        self.seed = int(seed)
        self.supports: dict[str, Tensor] = {}
        self.support_stats: dict[str, float] = {}
        self.support_values: Tensor | None = None
        self._support_values_checked = False
        #: ``aepo.behaviour_weighting="advantage"``: the dataset's advantage weights ``[N]``,
        #: computed from the trained critic when the diffusion stage first needs them.
        self.behaviour_weights: Tensor | None = None
        # behaviour_weight_sampling="resample": (the weights it was built from, their CDF)
        self._weight_cdf: tuple[Tensor, Tensor] | None = None
        if train.plan == "joint" and (
            aepo.critic != "expectile"
            or aepo.energy != "analytic"
            or aepo.behaviour_weighting != "none"
        ):
            raise ValueError(
                f"train.plan=joint supports only aepo.critic=expectile, aepo.energy=analytic "
                f"and aepo.behaviour_weighting=none (got {aepo.critic!r}, {aepo.energy!r}, "
                f"{aepo.behaviour_weighting!r}); use train.plan=staged."
            )
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
            nets.noise, train.diffusion.lr, budget["diffusion"], "loss_diffusion",
            train.lr_schedule_of("diffusion"),
        )  # fmt: skip
        self.critic_step = optimizer_step(
            losses.critic,
            train.critic.lr,
            budget["critic"],
            "sum of the critic's loss_*",
            train.lr_schedule_of("critic"),
        )
        self.stages = self._joint() if joint else self._staged()

    # ----------------------------------------------------------- stage dependencies
    #: Config keys (dotted prefixes) each stage's result depends on, besides the shared ones:
    #: a stage's checkpoint can be reused by a run that changes none of them.
    SHARED_KEYS = ("task", "data", "seed", "train.plan", "train.adam", "train.lr_schedule",
                   "train.grad_clip")  # fmt: skip
    _BEHAVIOUR_KEYS = ("model.noise_network", "model.noise_widths", "model.noise_num_cells",
                       "train.diffusion")  # fmt: skip
    _SUPPORT_KEYS = ("aepo.critic", "aepo.energy", "aepo.num_support", "train.supports")
    #: The critic-ablation keys: read only by an ISQL or CQL critic, so absent from the
    #: expectile critic's stage (an energy ablation then reuses a default run's critic).
    _CRITIC_ABLATION_KEYS = ("aepo.critic", "aepo.isql_beta", "aepo.cql_alpha",
                             "aepo.cql_num_random", "aepo.cql_temperature")  # fmt: skip
    #: With ``aepo.behaviour_weighting="advantage"`` the behaviour model (and every stage
    #: that reads it) also depends on the critic's settings and the weights'.
    _WEIGHTING_KEYS = ("aepo.behaviour_weighting", "aepo.behaviour_weight_clip",
                       "aepo.behaviour_weight_sampling", "aepo.beta")  # fmt: skip
    STAGE_KEYS = {
        "diffusion": _BEHAVIOUR_KEYS,
        "supports": (*_BEHAVIOUR_KEYS, *_SUPPORT_KEYS),
        "critic": ("model.qvalue_num_cells", "model.value_num_cells", "aepo.expectile",
                   "aepo.discount", "train.critic"),
        "gamma": (*_BEHAVIOUR_KEYS, "train.gamma_table"),
    }  # fmt: skip

    def stage_configs(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Per-stage subsets of the full training ``config`` (nested ``task``/``data``/
        ``model``/``aepo``/``train``/``seed``) for ``OfflineTrainer(stage_configs=...)``.

        The behaviour model, the critic and the ``Gamma`` table depend only on their own
        settings (a critic that reads support actions, ``aepo.critic=isql|cql``, also on the
        behaviour model's and the supports'); the energy (and the joint loop) on everything.
        So a run that changes, say, ``aepo.beta`` or ``aepo.energy_baseline`` reuses the
        first stages of a finished run (``init_from``) and trains only the energy; so does one
        that swaps the energy (``aepo.energy=mse|dps|cep``), whose expectile critic reads none
        of the critic-ablation keys.
        """
        out = {}
        for stage in self.stages:
            keys = self.STAGE_KEYS.get(stage.name)
            if stage.name == "critic" and self.aepo.critic != "expectile":
                keys = (*keys, *self._CRITIC_ABLATION_KEYS, *self._BEHAVIOUR_KEYS,
                        *self._SUPPORT_KEYS)  # fmt: skip
            if stage.name in ("diffusion", "supports", "gamma") and self._weighted:
                keys = (*keys, *self.STAGE_KEYS["critic"], *self._WEIGHTING_KEYS)
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
        self,
        evaluate: Callable[[str, int], None],
        interval: int,
        every_step: Callable[[str, int], None] | None = None,
    ) -> Callable[[str, int, Any], None]:
        """A trainer ``"post_optim"`` op that evaluates the policy during the last stage.

        Every ``interval`` steps of the last stage (not at its final step, which the caller
        evaluates anyway) it syncs the behaviour network and calls ``evaluate(stage, step)``.
        ``every_step(stage, step)``, when given, is called first at every step of the last
        stage (e.g. to collect the results of background evaluations).
        """
        last = self.stages[-1]

        def op(stage: str, step: int, _metrics: Any) -> None:
            if stage != last.name:
                return
            if every_step is not None:
                every_step(stage, step)
            if step % interval == 0 and step < last.total_steps:
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
                self.nets.energy, self.train.energy.lr, self._budget["energy"], "loss_energy",
                self.train.lr_schedule_of("energy"),
            )  # fmt: skip

    @torch.no_grad()
    def _cache_support_values(self) -> None:
        """The frozen critic's values of the support actions at ``s`` ``[N, K]``, once, before
        the first energy update, for an energy that reads them (``support_values``:
        ``aepo.energy=support_posterior``); the energy batches then carry them as
        ``("support", "value")``. Not checkpointed: the critic is final when the energy stage
        starts, so a resumed run recomputes the same (an ``eval_only`` run never does)."""
        self._support_values_checked = True
        values_of = getattr(self.energy_loss, "support_values", None)
        if values_of is None or "at_s" not in self.supports:
            return
        start, chunk = time.perf_counter(), int(self.train.supports.batch_size)
        states, supports = self.dataset.get("observation"), self.supports["at_s"]
        self.support_values = torch.cat(
            [
                values_of(states[i : i + chunk], supports[i : i + chunk])
                for i in range(0, states.shape[0], chunk)
            ]
        )
        print(
            f"[aepo] critic values of the {supports.shape[0] * supports.shape[1]} support "
            f"actions in {time.perf_counter() - start:.1f} s"
        )

    @torch.no_grad()
    def generate_supports(self) -> dict[str, float]:
        """Draw the support actions from ``nets.behaviour`` (unguided DPM-Solver, ``aepo.solver``).

        ``train.supports.batch_size`` states per solver call, each with ``aepo.num_support``
        samples, from a generator seeded with ``seed + 2``. Returns (and keeps in
        :attr:`support_stats`) the wall time, the memory the supports hold and, on CUDA, the
        peak device memory of the generation.
        """
        from torchrl_aepo.diffusion.solver import DPMSolver
        from torchrl_aepo.objectives import sample_support_actions

        at_s, at_next = self.aepo.needs_supports()
        device = self.dataset.device or torch.device("cpu")
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        generator = torch.Generator(device=device).manual_seed(self.seed + 2)
        solver = DPMSolver(self.losses.diffusion.schedule, **self.aepo.solver.to_dict())
        chunk, k = int(self.train.supports.batch_size), int(self.aepo.num_support)
        keys = [("at_s", "observation")] if at_s else []
        keys += [("at_next", ("next", "observation"))] if at_next else []
        start = time.perf_counter()
        supports = {}
        for name, key in keys:
            states = self.dataset.get(key)
            supports[name] = torch.cat(
                [
                    sample_support_actions(
                        self.nets.behaviour, states[i : i + chunk], k, solver=solver,
                        generator=generator,
                    )
                    for i in range(0, states.shape[0], chunk)
                ]
            )  # fmt: skip
        if cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        num = sum(v.shape[0] * v.shape[1] for v in supports.values())
        stats = {
            "seconds": seconds,
            "num_samples": float(num),
            "samples_per_s": num / seconds if seconds > 0 else float("nan"),
            "megabytes": sum(v.numel() * v.element_size() for v in supports.values()) / 2**20,
        }
        if cuda:
            stats["peak_device_megabytes"] = torch.cuda.max_memory_allocated(device) / 2**20
        self.supports, self.support_stats = supports, stats
        print(
            f"[aepo] support actions: {num} samples ({', '.join(supports)}; K={k}) in "
            f"{seconds:.1f} s, {stats['megabytes']:.1f} MB"
        )
        return stats

    def with_supports(self, batch: TensorDictBase) -> TensorDictBase:
        """``batch`` with its transitions' support actions (read by their ``"index"``)."""
        if not self.supports:
            return batch
        index = _batch_index(batch, "the plan's support actions are")
        if "at_s" in self.supports:
            batch.set(("support", "action"), self.supports["at_s"][index])
            if self.support_values is not None:
                batch.set(("support", "value"), self.support_values[index])
        if "at_next" in self.supports:
            batch.set(("next", "support", "action"), self.supports["at_next"][index])
        return batch

    def _supports_update(self, _batch: None, _step: int) -> dict[str, Tensor]:
        return {f"supports_{k}": torch.tensor(v) for k, v in self.generate_supports().items()}

    @property
    def _weighted(self) -> bool:
        return self.aepo.behaviour_weighting == "advantage"

    def _behaviour_weights(self) -> Tensor:
        """The dataset's advantage weights ``[N]``, computed from the trained critic on first use."""
        if self.behaviour_weights is None:
            self.behaviour_weights = advantage_weights(
                self.losses.critic.target_qvalue_network(),
                self.nets.value,
                self.dataset,
                beta=self.aepo.beta,
                clip=self.aepo.behaviour_weight_clip,
            )
            w = self.behaviour_weights
            print(
                f"[aepo] behaviour weights exp(beta A): mean {float(w.mean()):.3g}, "
                f"{float((w >= self.aepo.behaviour_weight_clip).float().mean()):.1%} clipped, "
                f"effective sample share {float(w.sum() ** 2 / w.pow(2).sum() / len(w)):.1%}"
            )
        return self.behaviour_weights

    def _weigh(self, batch: TensorDictBase) -> TensorDictBase:
        """``batch`` with its transitions' advantage weights (by their ``"index"``) under the
        diffusion loss's ``weight`` key (``aepo.behaviour_weight_sampling="loss"``), or, with
        ``"resample"``, a batch of the same size drawn from the dataset with probability
        proportional to the weights (by inverse CDF on torch's global generator, which the
        trainer checkpoints), with their rows under ``"index"`` and no weight key."""
        weights = self._behaviour_weights()
        if self.aepo.behaviour_weight_sampling == "resample":
            if self._weight_cdf is None or self._weight_cdf[0] is not weights:
                cdf = weights.double().cumsum(0)
                self._weight_cdf = (weights, cdf / cdf[-1])  # rebuilt if the weights are replaced
            uniform = torch.rand(batch.shape[0], dtype=torch.float64, device=weights.device)
            index = torch.searchsorted(self._weight_cdf[1], uniform).clamp(max=len(weights) - 1)
            return self.dataset[index].set("index", index)  # rows, as a replay-buffer sample
        index = _batch_index(batch, "aepo.behaviour_weighting='advantage': the weights are")
        batch.set(self.losses.diffusion.tensor_keys.weight, weights[index])
        return batch

    def _diffusion_update(self, batch: TensorDictBase, _step: int) -> dict[str, Tensor]:
        if self._weighted:
            batch = self._weigh(batch)
        out = self.losses.diffusion(batch)
        self.diffusion_step(out["loss_diffusion"])
        if self.losses.diffusion_ema is not None:
            self.losses.diffusion_ema.step()
        return _metrics(out)

    def _critic_update(self, batch: TensorDictBase, _step: int) -> dict[str, Tensor]:
        out = self.losses.critic(self.with_supports(batch))
        names = [k for k in out.keys() if k.startswith("loss_")]
        self.critic_step(sum(out[k] for k in names), name=" + ".join(names))
        self.losses.critic_target.step()
        return _metrics(out)

    def _energy_update(self, batch: TensorDictBase, _step: int) -> dict[str, Tensor]:
        if not self._support_values_checked:
            self._cache_support_values()
        out = self.energy_loss(self.with_supports(batch))
        self._energy_step(out["loss_energy"])
        return _metrics(out)

    def _gamma_update(self, _batch: None, _step: int) -> dict[str, Tensor]:
        self._estimate_gamma()
        return {}

    def _staged(self) -> list[Stage]:
        t = self.train
        stages = [
            Stage(
                "diffusion",
                t.diffusion.steps,
                self._diffusion_update,
                lambda: {"loss": self.losses.diffusion, "optim": self.diffusion_step},
                batch_size=t.diffusion.batch_size,
                finalize=self.sync_behaviour,
            ),
            Stage(
                "supports",
                1,
                self._supports_update,
                lambda: {"supports": _SupportsSlot(self)},
                batch_size=None,
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
        by_name = {stage.name: stage for stage in stages}
        return [by_name[name] for name in t.stage_names(self.aepo)]

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


def _batch_index(batch: TensorDictBase, what: str) -> Tensor:
    """The batch's ``"index"`` entry (its transitions' rows in the dataset), by which ``what``
    looked up; a clear error when the batch has none."""
    index = batch.get("index", None)
    if index is None:
        raise KeyError(
            f"{what} looked up by the batch's 'index' entry (a TensorDictReplayBuffer sample "
            "has it); this batch has none."
        )
    return index


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

    def optimizer_step(
        module: nn.Module, lr: float, steps: int, name: str, lr_schedule: str
    ) -> OptimizerStep:
        return adam_step(
            module,
            lr,
            steps,
            adam=train.adam,
            lr_schedule=lr_schedule,
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
