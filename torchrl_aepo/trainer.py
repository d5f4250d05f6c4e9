"""Generic offline trainer: stages, optimiser steps, hooks, checkpoints, resume.

:class:`OfflineTrainer` runs a list of :class:`Stage` objects one after the other on batches
sampled from a TorchRL replay buffer; each stage has a step budget, a step function that
performs one optimisation step, and the objects it checkpoints. Nothing here knows about
AEPO: :func:`torchrl_aepo.aepo.build_training_plan` builds AEPO's stages (staged
``diffusion -> critic -> gamma -> energy`` or one joint loop).

Why not :class:`torchrl.trainers.Trainer`: it is driven by a data collector (``for batch in
collector``; frames, ``init_random_frames``, policy-weight syncing) and steps one loss module
with one optimiser. Offline AEPO has no collector and trains several losses in sequence, some
with frozen copies of the networks of earlier stages. This module therefore keeps Trainer's
*hook style* (:meth:`OfflineTrainer.register_op` with named destinations such as
``"process_optim_batch"``, ``"post_optim"`` and ``"post_steps_log"``) and TorchRL's pieces
(replay-buffer sampling, ``LossModule``, ``SoftUpdate``, TorchRL loggers, ``timeit``), and
adds what an offline multi-stage run needs: per-stage budgets, per-stage checkpoints and
resume without redoing finished stages.

Stages in several processes: ``only_stages`` makes a trainer train a subset of the stages (the
others are neither set up, nor restored, nor required to be finished). Two trainers on the same
``run_dir`` can so train independent stages at once (e.g. one process trains the critic with
``only_stages=("critic",)`` while another trains the behaviour model); the full trainer then
restores the finished stage from its checkpoint like any finished stage, and
:meth:`OfflineTrainer.log_history` sends the scalars that stage recorded without a logger.

Checkpoints: ``<run_dir>/checkpoints/<stage>.pt`` is written every ``checkpoint_interval``
steps and when the stage finishes (atomically: temporary file + ``os.replace``), so a kill
loses at most one interval. On restart the trainer loads every stage checkpoint, skips the
finished stages and continues the unfinished one from its last saved step.

Reproducible resume: a checkpoint also holds every random state a step can read (torch's,
numpy's and Python's global generators, the replay buffer's ``torch.Generator`` and its
sampler's state, and the extra ``generators`` given to the trainer) and the partial sums of the
logging interval, so that on CPU a run killed and resumed mid-stage ends with exactly the
weights and logged history of the uninterrupted run. Steps already sent to the logger before
the kill are not sent again (``checkpoints/logged_steps.json`` records the last logged step of
each scalar), so CSV logs hold each step once.

Non-finite values: :class:`OptimizerStep` checks the loss and the gradients before every
update and raises :class:`NonFiniteError` (without applying the update); the trainer adds the
stage and step and stops, leaving the last good checkpoint untouched.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl._utils import timeit
from tqdm.auto import tqdm

from torchrl_aepo import distributed as _dist
from torchrl_aepo.atomic import save_torch_atomic, write_json_atomic
from torchrl_aepo.distributed import all_reduce_mean_, is_distributed

__all__ = [
    "CheckpointError",
    "NonFiniteError",
    "Stage",
    "OfflineTrainer",
    "OptimizerStep",
    "GeneratorState",
    "adam_step",
    "config_hash",
    "cosine_or_constant",
]
CHECKPOINT_FORMAT = "torchrl-aepo-stage-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint in the run directory is unreadable or belongs to a different configuration."""


class NonFiniteError(ValueError):
    """A loss or a gradient is NaN or infinite; the update was not applied.

    Attributes:
        loss_name: name of the loss (``None`` when the caller gave none).
        loss_value: the loss value (a float, possibly finite when only gradients are not).
        bad_gradients: ``"<param index> <shape>: <nan/inf counts>"`` of the non-finite gradients.
    """

    def __init__(
        self, message: str, loss_name: str | None, loss_value: float, bad_gradients: list[str]
    ) -> None:
        super().__init__(message)
        self.loss_name = loss_name
        self.loss_value = loss_value
        self.bad_gradients = bad_gradients


def config_hash(config: Mapping[str, Any]) -> str:
    """Short stable hash (sha1, 12 hex digits) of a JSON-serialisable mapping."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


@dataclass
class Stage:
    """One training stage.

    Args:
        name: stage name (also the checkpoint file name and the logging prefix).
        total_steps: number of calls of ``step`` that complete the stage.
        step: ``step(batch, step_index) -> metrics``; ``batch`` is a replay-buffer sample of
            ``batch_size`` transitions on the trainer's device, or ``None`` when
            ``batch_size`` is ``None``. ``metrics`` maps names to scalars (tensors or floats).
        stateful: ``() -> {name: object}``; every object has ``state_dict`` /
            ``load_state_dict`` (modules, optimisers, loss modules, statistics) and is saved
            in the stage's checkpoint.
        batch_size: replay-buffer batch size per step; ``None``: the step takes no batch.
        setup: called once before the stage's state is restored or it runs (e.g. to build a
            loss that needs the networks of earlier stages).
        finalize: called once the stage is complete, also when a finished stage is restored
            on resume (e.g. to copy EMA weights into the sampling network). Must be idempotent.
    """

    name: str
    total_steps: int
    step: Callable[[TensorDictBase | None, int], Mapping[str, Tensor | float]]
    stateful: Callable[[], Mapping[str, Any]]
    batch_size: int | None = 256
    setup: Callable[[], None] | None = None
    finalize: Callable[[], None] | None = None


@dataclass
class _StageRecord:
    steps: int = 0  # steps done in total (all runs)
    steps_this_run: int = 0
    seconds: float = 0.0  # wall time in total (all runs)
    seconds_this_run: float = 0.0
    done: bool = False
    skipped: bool = False  # restored as finished: not redone in this run
    resumed_from: int | None = None  # step the stage continued from, if it was resumed

    def summary(self) -> dict[str, Any]:
        ups = self.steps_this_run / self.seconds_this_run if self.seconds_this_run > 0 else None
        return {
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "steps_this_run": self.steps_this_run,
            "seconds_this_run": round(self.seconds_this_run, 3),
            "updates_per_s": None if ups is None else round(ups, 2),
            "done": self.done,
            "skipped": self.skipped,
            "resumed_from": self.resumed_from,
        }


@dataclass
class OptimizerStep:
    """``zero_grad`` / ``backward`` / finiteness check / grad clipping / ``step`` / lr schedule.

    Args:
        optimizer: the optimiser.
        params: the parameters to clip and check (defaults to the optimiser's).
        grad_clip: max global gradient norm, or ``None``.
        scheduler: an optional lr scheduler stepped after each optimiser step.
        check_finite: before stepping, check that the loss and every gradient are finite
            (one fused reduction and one host sync per step); a non-finite value raises
            :class:`NonFiniteError` and the parameters, optimiser and scheduler are left as they
            were. Defaults to ``True``.
        name: the loss name used in error messages (``__call__``'s ``name`` overrides it).
        distributed: average the gradients over the ranks of the process group before the
            check, clipping and update (:mod:`torchrl_aepo.distributed`); ``None`` (default):
            when a process group with more than one rank is initialised.
    """

    optimizer: torch.optim.Optimizer
    grad_clip: float | None = None
    scheduler: Any = None
    params: list[Tensor] = field(default_factory=list)
    check_finite: bool = True
    name: str | None = None
    distributed: bool | None = None

    def __post_init__(self) -> None:
        if not self.params:
            self.params = [p for g in self.optimizer.param_groups for p in g["params"]]

    def __call__(self, loss: Tensor, name: str | None = None) -> Tensor | None:
        """One update on ``loss`` (a scalar); returns the pre-clip gradient norm when clipping.

        Raises:
            NonFiniteError: the loss or a gradient is NaN/inf (nothing was updated).
        """
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.distributed or (self.distributed is None and is_distributed()):
            all_reduce_mean_([p.grad for p in self.params if p.grad is not None])
        if self.check_finite:
            self._check_finite(loss, name or self.name)
        norm = None
        if self.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return norm

    def _check_finite(self, loss: Tensor, name: str | None) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        total = loss.detach().reshape(()).float()
        if grads:
            total = total + torch.nn.utils.get_total_norm(grads).float()
        if bool(torch.isfinite(total)):
            return
        bad = []
        for i, p in enumerate(self.params):
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                g = p.grad
                bad.append(
                    f"param {i} {tuple(p.shape)}: {int(g.isnan().sum())} nan, "
                    f"{int(g.isinf().sum())} inf"
                )
        value = float(loss.detach().reshape(()))
        label = name or "loss"
        what = (
            f"{label} = {value}"
            if not math.isfinite(value)
            else f"{label} = {value} is finite but {len(bad)} gradient tensor(s) are not "
            f"({'; '.join(bad[:3])}{'; ...' if len(bad) > 3 else ''})"
        )
        self.optimizer.zero_grad(set_to_none=True)
        raise NonFiniteError(f"non-finite {what}; the update was not applied.", name, value, bad)

    def state_dict(self) -> dict[str, Any]:
        state = {"optimizer": self.optimizer.state_dict()}
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])


class GeneratorState:
    """``state_dict`` / ``load_state_dict`` of a ``torch.Generator``, to checkpoint it in a
    :class:`Stage`'s ``stateful``."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> dict[str, Tensor]:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.generator.set_state(state["state"])


_HOOK_DESTS = (
    "pre_train",  # op()   (train() checked resume, before the first stage)
    "pre_stage",  # op(stage_name)
    "process_optim_batch",  # op(batch) -> batch
    "post_optim",  # op(stage_name, step, metrics)   (step: 1-based count of finished steps)
    "post_steps_log",  # op(stage_name, step, logged_means)
    "post_stage",  # op(stage_name, record_summary)
)


class OfflineTrainer:
    """Runs :class:`Stage` objects in order on batches sampled from a TorchRL replay buffer.

    Args:
        stages: the stages, run in this order.
        replay_buffer: a TorchRL replay buffer; ``replay_buffer.sample(batch_size)`` gives a
            batch (TED keys).

    Keyword Args:
        run_dir: run directory; checkpoints go to ``run_dir/checkpoints``. ``None``: train in
            memory, without checkpoints or resume (studies, tests).
        logger: a TorchRL :class:`~torchrl.record.loggers.Logger` or ``None``. Scalars are
            also kept in :attr:`history` (and in the checkpoints) for plots and results.
        device: device of the batches.
        log_interval: steps between logged (interval-averaged) scalars.
        checkpoint_interval: steps between checkpoints.
        progress_bar: a tqdm bar per stage.
        config: the training configuration (JSON-serialisable). Its hash is stored in every
            checkpoint; resuming with a different configuration raises :class:`CheckpointError`.
        stop_after_stage: stop (after checkpointing) once this stage is complete.
        resume: load existing checkpoints of ``run_dir``; if ``False`` and checkpoints
            exist when :meth:`train` starts, raise :class:`CheckpointError` (a checkpoint
            written later, by another process training a stage of this run, is loaded).
        only_stages: train only these stages (names of ``stages``); the others are skipped:
            not set up, not restored and not required to be finished (another process trains
            them). ``None`` (default): every stage.
        stage_configs: per-stage configurations, by stage name (the settings a stage and the
            stages it reads depend on; default: the whole ``config``). Their hashes are stored
            in the checkpoints, so that a new run that differs only in later stages can reuse
            finished stages (:meth:`import_checkpoints`). Resuming in the same ``run_dir``
            always requires the whole ``config`` to match.
        generators: extra ``torch.Generator`` objects the steps draw from (e.g. the one of a
            periodic Gamma-table estimate), by name; their states are saved in every
            checkpoint and restored on resume, like the global generators and the replay
            buffer's.
        distributed: data-parallel over the ranks of the process group
            (:mod:`torchrl_aepo.distributed`): each rank trains on its slice of the global
            batch ``stage.batch_size``, the steps draw per-rank noise, and only rank 0 writes
            checkpoints and logs. ``None`` (default): when a process group with more than one
            rank is initialised (``torchrun``); a single process is unaffected.

    Hooks (:meth:`register_op`): ``"pre_train"`` ``op()`` (after the resume check, before the
    first stage); ``"pre_stage"`` ``op(stage)``; ``"process_optim_batch"``
    ``op(batch) -> batch``; ``"post_optim"`` ``op(stage, step, metrics)``;
    ``"post_steps_log"`` ``op(stage, step, means)``; ``"post_stage"`` ``op(stage, summary)``.
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        replay_buffer: Any,
        *,
        run_dir: str | os.PathLike | None,
        logger: Any = None,
        device: torch.device | str | None = None,
        log_interval: int = 1000,
        checkpoint_interval: int = 10000,
        progress_bar: bool = True,
        config: Mapping[str, Any] | None = None,
        stop_after_stage: str | None = None,
        resume: bool = True,
        generators: Mapping[str, torch.Generator] | None = None,
        stage_configs: Mapping[str, Mapping[str, Any]] | None = None,
        distributed: bool | None = None,
        only_stages: Sequence[str] | None = None,
    ) -> None:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"Stage names must be unique, got {names}.")
        self.only_stages = _check_only_stages(only_stages, names)
        runnable = names if self.only_stages is None else list(self.only_stages)
        if stop_after_stage is not None and stop_after_stage not in runnable:
            raise ValueError(
                f"stop_after_stage={stop_after_stage!r} is not a stage of this schedule; "
                f"choose one of {runnable}."
            )
        if log_interval < 1 or checkpoint_interval < 1:
            raise ValueError("log_interval and checkpoint_interval must be >= 1.")
        self.stages = list(stages)
        self.replay_buffer = replay_buffer
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.checkpoint_dir = None if run_dir is None else self.run_dir / "checkpoints"
        self.logger = logger
        self.device = torch.device(device) if device is not None else None
        self.log_interval = int(log_interval)
        self.checkpoint_interval = int(checkpoint_interval)
        self.progress_bar = progress_bar
        self.config = dict(config or {})
        self.config_hash = config_hash(self.config)
        unknown = set(stage_configs or {}) - set(names)
        if unknown:
            raise ValueError(
                f"stage_configs names {sorted(unknown)}, which are not stages {names}."
            )
        self.stage_configs = {k: dict(v) for k, v in (stage_configs or {}).items()}
        self.stop_after_stage = stop_after_stage
        self.resume = resume
        self.records = {s.name: _StageRecord() for s in self.stages}
        #: scalar history: ``{"<stage>/<name>": [[step, value], ...]}``
        self.history: dict[str, list[list[float]]] = {}
        self.stopped_after: str | None = None
        self.generators = dict(generators or {})
        self._restore_only = False
        self.distributed = is_distributed() if distributed is None else bool(distributed)
        self.rank = _dist.rank() if self.distributed else 0
        if self.distributed:  # each rank trains on its equal slice of the global batch
            world = _dist.world_size()
            uneven = [
                f"{s.name}: batch_size={s.batch_size}"
                for s in self.stages
                if s.batch_size is not None and s.batch_size % world
            ]
            if uneven:
                raise ValueError(
                    f"{', '.join(uneven)} is not divisible by the {world} ranks of the process "
                    f"group; use a multiple of {world}."
                )
        #: base of the per-rank, per-step seeds of a distributed run (equal on every rank)
        self._step_seed_base = torch.initial_seed() % (2**31)
        if self.rank != 0:  # rank 0 alone logs
            self.logger = None
        self._ops: dict[str, list[Callable]] = {d: [] for d in _HOOK_DESTS}
        # last step sent to the logger, per scalar (also in checkpoints/logged_steps.json)
        self._logged: dict[str, int] = {}
        self._log_sums: dict[str, Tensor | float] = {}
        self._log_count = 0

    # ------------------------------------------------------------------ hooks
    def register_op(self, dest: str, op: Callable) -> None:
        """Register ``op`` at hook destination ``dest`` (see the class docstring)."""
        if dest not in self._ops:
            raise ValueError(f"Unknown hook destination {dest!r}; choose one of {_HOOK_DESTS}.")
        self._ops[dest].append(op)

    def log_scalar(self, name: str, value: float, step: int, *, channel: str | None = None) -> None:
        """Log a scalar to the logger and keep it in :attr:`history`.

        ``name`` is ``"<stage>/<key>"``. After a resume, steps of that scalar that a previous
        run already sent to the logger (up to its last logged step) are kept in the history
        but not sent again, so the logs do not repeat steps. The last logged step is kept per
        scalar (``channel``, if given, names a sequence shared by several scalars), so every
        scalar logged at one step reaches the logger. Files written before this was per
        scalar hold one step per stage, which then bounds every scalar of that stage.
        """
        value = float(value)
        step = int(step)
        self.history.setdefault(name, []).append([step, value])
        self._send(name, value, step, channel)

    def log_history(self, stage: str) -> int:
        """Send to the logger the scalars of ``stage`` in :attr:`history` that it has not
        received yet; returns how many were sent.

        For a stage trained by another trainer without a logger (``only_stages``, e.g. in a
        child process) and restored here from its checkpoint, whose history the checkpoint
        holds: its scalars then reach this run's logger once (the logged steps are recorded
        as by :meth:`log_scalar`, so a re-run does not send them again).
        """
        sent = 0
        if self.logger is None:
            return sent
        for name, points in self._stage_history(stage).items():
            for step, value in sorted(points):
                sent += self._send(name, float(value), int(step))
        return sent

    def _send(self, name: str, value: float, step: int, channel: str | None = None) -> bool:
        """Send one scalar to the logger unless a previous run already did; ``True`` if sent."""
        if self.logger is None:
            return False
        key = name if channel is None else channel
        logged = max(self._logged.get(key, -1), self._logged.get(name.partition("/")[0], -1))
        if step <= logged:
            return False
        self._logged[key] = step
        # Recorded before the logger writes: a kill in between loses a row, never repeats one.
        if self.checkpoint_dir is not None and self.rank == 0:
            write_json_atomic(self._logged_path, self._logged)
        self.logger.log_scalar(name, value, step=step)
        return True

    @property
    def _logged_path(self) -> Path:
        return self.checkpoint_dir / "logged_steps.json"

    def _load_logged_steps(self) -> None:
        if self.checkpoint_dir is None:
            return
        path = self._logged_path
        if not path.exists():
            return
        try:
            data = json.loads(path.read_text())
            self._logged = {str(k): int(v) for k, v in data.items()}
        except (ValueError, AttributeError, TypeError) as err:
            raise CheckpointError(
                f"{path} is corrupt ({type(err).__name__}: {err}). It only records which steps "
                "were logged; delete it to resume (logged steps may then repeat)."
            ) from err

    # ------------------------------------------------------------ checkpoints
    def stage_config(self, stage: str) -> dict[str, Any]:
        """The configuration a stage's checkpoint is validated against: its ``stage_configs``
        entry (the keys the stage and the stages it reads depend on), else ``config``."""
        return self.stage_configs.get(stage, self.config)

    def stage_config_hash(self, stage: str) -> str:
        return config_hash(self.stage_config(stage))

    def import_checkpoints(self, source_run_dir: str | os.PathLike) -> list[str]:
        """Copy the finished stages of another run whose configuration matches this run's.

        A stage is imported when ``<source>/checkpoints/<stage>.pt`` is complete and was
        written with the same :meth:`stage_config` hash (so with per-stage ``stage_configs`` a run
        that changes only, say, the energy settings reuses the trained behaviour model and
        critic). Stages this run already has a checkpoint for are left alone. Returns the
        imported stage names; :meth:`train` then restores them instead of training.
        """
        if self.checkpoint_dir is None:
            raise ValueError("import_checkpoints needs a run_dir (this trainer keeps none).")
        source = Path(source_run_dir) / "checkpoints"
        if not source.is_dir():
            raise CheckpointError(f"init_from={source_run_dir!s}: no checkpoints directory there.")
        imported = []
        for stage in self.stages:
            src, dst = source / f"{stage.name}.pt", self.checkpoint_path(stage.name)
            if not src.exists() or dst.exists():
                continue
            try:
                state = torch.load(src, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - any unpickling/zip error means corrupt
                raise CheckpointError(f"{src} is corrupt or unreadable ({err}).") from err
            if state.get("done") and state.get("stage_config_hash") == self.stage_config_hash(
                stage.name
            ):
                # valid for this run's configuration: re-stamped with it, source recorded
                state.update(
                    config_hash=self.config_hash,
                    config=json.dumps(self.config, sort_keys=True, default=str),
                    imported_from=str(src),
                )
                save_torch_atomic(state, dst)
                imported.append(stage.name)
        return imported

    def checkpoint_path(self, stage: str) -> Path:
        return self.checkpoint_dir / f"{stage}.pt"

    def _stage_history(self, stage: str) -> dict[str, list[list[float]]]:
        prefix = f"{stage}/"
        return {k: v for k, v in self.history.items() if k.startswith(prefix)}

    def save_checkpoint(self, stage: Stage) -> Path | None:
        if self.checkpoint_dir is None or self.rank != 0:
            return None
        record = self.records[stage.name]
        state = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "stage": stage.name,
            "step": record.steps,
            "total_steps": stage.total_steps,
            "done": record.done,
            "seconds": record.seconds,
            "config_hash": self.config_hash,
            "config": json.dumps(self.config, sort_keys=True, default=str),
            "stage_config_hash": self.stage_config_hash(stage.name),
            "state": {k: v.state_dict() for k, v in stage.stateful().items()},
            "history": self._stage_history(stage.name),
            "rng": self._rng_state(),
            "log_accumulator": {
                "count": self._log_count,
                "sums": {k: _to_cpu(v) for k, v in self._log_sums.items()},
            },
        }
        path = self.checkpoint_path(stage.name)
        with timeit("train/checkpoint"):
            save_torch_atomic(state, path)
        return path

    def _rng_state(self) -> dict[str, Any]:
        """Every random state a step may read: global generators, replay buffer, extras."""
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": json.dumps(_numpy_state_to_json(np.random.get_state())),
            "python": json.dumps(random.getstate()),
            "generators": {k: g.get_state() for k, g in self.generators.items()},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        rb_rng = getattr(self.replay_buffer, "_rng", None)
        if isinstance(rb_rng, torch.Generator):
            state["replay_buffer"] = rb_rng.get_state()
        sampler = getattr(self.replay_buffer, "_sampler", None)
        if sampler is not None and hasattr(sampler, "state_dict"):
            state["sampler"] = sampler.state_dict()
        return state

    def _restore_rng(self, state: Mapping[str, Any], path: Path) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(_numpy_state_from_json(json.loads(state["numpy"])))
        random.setstate(_tuplify(json.loads(state["python"])))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        saved = state.get("generators", {})
        missing = set(self.generators) - set(saved)
        if missing:
            raise CheckpointError(
                f"The checkpoint {path} has no state for the generators {sorted(missing)}; it "
                "was written by another version. Use a new run_dir."
            )
        for key, generator in self.generators.items():
            generator.set_state(saved[key])
        rb_rng = getattr(self.replay_buffer, "_rng", None)
        if isinstance(rb_rng, torch.Generator) and "replay_buffer" in state:
            rb_rng.set_state(state["replay_buffer"])
        sampler = getattr(self.replay_buffer, "_sampler", None)
        if sampler is not None and "sampler" in state and hasattr(sampler, "load_state_dict"):
            sampler.load_state_dict(state["sampler"])

    def load_checkpoint(self, stage: str) -> dict[str, Any] | None:
        """Read and validate a stage checkpoint; ``None`` if there is none."""
        if self.checkpoint_dir is None:
            return None
        path = self.checkpoint_path(stage)
        if not path.exists():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling/zip error means corrupt
            raise CheckpointError(
                f"The checkpoint {path} is corrupt or unreadable ({type(err).__name__}: {err}). "
                f"Delete it to redo the '{stage}' stage from its start, or use a new run_dir."
            ) from err
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{path} is not a torchrl-aepo stage checkpoint (missing format tag). Delete it "
                f"or use a new run_dir."
            )
        missing = {"stage", "step", "done", "state", "config_hash"} - set(state)
        if missing:
            raise CheckpointError(f"The checkpoint {path} lacks {sorted(missing)}; it is corrupt.")
        if state["config_hash"] != self.config_hash:
            saved = json.loads(state.get("config", "{}"))
            changed = _diff_keys(saved, self.config)
            raise CheckpointError(
                f"The checkpoint {path} was written with a different training configuration "
                f"(changed: {changed or 'unknown'}). Resume with the original settings, or start "
                f"a new run (a new run_dir, or resume=false in an empty directory)."
            )
        return state

    def existing_checkpoints(self) -> list[Path]:
        if self.checkpoint_dir is None:
            return []
        return [
            self.checkpoint_path(s.name)
            for s in self.stages
            if self.checkpoint_path(s.name).exists()
        ]

    # --------------------------------------------------------------- training
    def restore(self) -> dict[str, Any]:
        """Load a finished run's stages from their checkpoints without training any step.

        Every stage must have a checkpoint marked done (else :class:`CheckpointError`); their
        ``setup`` / ``finalize`` run as on resume. Returns :meth:`summary`.
        """
        if self.checkpoint_dir is None or not self.existing_checkpoints():
            raise CheckpointError(
                f"nothing to restore: {self.checkpoint_dir} holds no stage checkpoints."
            )
        self._restore_only, self.resume = True, True
        try:
            return self.train()
        finally:
            self._restore_only = False

    def train(self) -> dict[str, Any]:
        """Run (or resume) every stage; returns :meth:`summary`."""
        if not self.resume and self.existing_checkpoints():
            raise CheckpointError(
                f"{self.checkpoint_dir} already holds checkpoints "
                f"({[p.name for p in self.existing_checkpoints()]}) and resume is off. Use a new "
                f"run_dir, or resume to continue that run."
            )
        if self.resume:
            self._load_logged_steps()
        for op in self._ops["pre_train"]:
            op()
        for stage in self.stages:
            if self.only_stages is not None and stage.name not in self.only_stages:
                continue
            self._run_stage(stage)
            if self.stop_after_stage == stage.name:
                self.stopped_after = stage.name
                break
        return self.summary()

    def summary(self) -> dict[str, Any]:
        only = self.only_stages
        return {
            "stages": {
                name: rec.summary()
                for name, rec in self.records.items()
                if only is None or name in only
            },
            "stopped_after": self.stopped_after,
            "config_hash": self.config_hash,
        }

    def _run_stage(self, stage: Stage) -> None:
        record = self.records[stage.name]
        if stage.setup is not None:
            stage.setup()
        # With resume=False, train() checked that no checkpoint existed when it started: one
        # found now was written during this run, by another process training this stage.
        saved = self.load_checkpoint(stage.name)
        if saved is not None:
            objects = stage.stateful()
            missing = set(objects) - set(saved["state"])
            if missing:
                raise CheckpointError(
                    f"The checkpoint {self.checkpoint_path(stage.name)} lacks the state of "
                    f"{sorted(missing)}; it is corrupt or from another version."
                )
            try:
                for key, obj in objects.items():
                    obj.load_state_dict(saved["state"][key])
            except (RuntimeError, KeyError, ValueError) as err:
                raise CheckpointError(
                    f"Could not restore '{stage.name}' from {self.checkpoint_path(stage.name)}: "
                    f"{err}. The networks of this configuration do not match the checkpoint."
                ) from err
            record.steps = int(saved["step"])
            record.seconds = float(saved.get("seconds", 0.0))
            record.done = bool(saved["done"])
            for key, values in saved.get("history", {}).items():
                self.history[key] = [list(v) for v in values]
            if "rng" in saved:
                self._restore_rng(saved["rng"], self.checkpoint_path(stage.name))
            accumulator = saved.get("log_accumulator", {})
            self._log_count = int(accumulator.get("count", 0))
            self._log_sums = dict(accumulator.get("sums", {}))
            if record.done:
                record.skipped = True
                print(
                    f"[trainer] stage '{stage.name}': finished in a previous run "
                    f"({record.steps} steps), restored from its checkpoint, not redone."
                )
            else:
                record.resumed_from = record.steps
                print(
                    f"[trainer] stage '{stage.name}': resuming at step {record.steps}/"
                    f"{stage.total_steps}."
                )
        if record.steps >= stage.total_steps:
            record.done = True
        if not record.done and self._restore_only:
            raise CheckpointError(
                f"stage '{stage.name}' of {self.run_dir} is not finished ({record.steps}/"
                f"{stage.total_steps} steps): only a finished run can be restored without "
                f"training. Resume its training first (same run_dir, without eval_only)."
            )
        if not record.done:
            self._loop(stage, record)
        if stage.finalize is not None:
            stage.finalize()
        for op in self._ops["post_stage"]:
            op(stage.name, record.summary())

    def _loop(self, stage: Stage, record: _StageRecord) -> None:
        for op in self._ops["pre_stage"]:
            op(stage.name)
        bar = tqdm(
            total=stage.total_steps,
            initial=record.steps,
            desc=f"{stage.name:>9s}",
            disable=not self.progress_bar,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        if record.resumed_from is None:
            self._log_sums, self._log_count = {}, 0
        # partial sums of the current logging interval (restored from the checkpoint on resume)
        sums, count = self._log_sums, self._log_count
        start = time.perf_counter()
        seconds_before = record.seconds
        try:
            while record.steps < stage.total_steps:
                batch = None
                if stage.batch_size is not None:
                    with timeit(f"train/{stage.name}/sample"):
                        batch = self.replay_buffer.sample(stage.batch_size)
                        if self.distributed:  # the same global batch on every rank: a slice
                            batch = _dist.local_slice(batch, stage.batch_size)
                        if self.device is not None:
                            batch = batch.to(self.device, non_blocking=True)
                        for op in self._ops["process_optim_batch"]:
                            batch = op(batch)
                with timeit(f"train/{stage.name}/update"):
                    try:
                        if self.distributed:
                            metrics = self._distributed_step(stage, batch, record.steps)
                        else:
                            metrics = stage.step(batch, record.steps)
                    except NonFiniteError as err:
                        raise self._non_finite(stage, record.steps + 1, err) from err
                record.steps += 1
                record.steps_this_run += 1
                for key, value in metrics.items():
                    value = value.detach() if isinstance(value, Tensor) else float(value)
                    sums[key] = sums[key] + value if key in sums else value
                count += 1
                self._log_sums, self._log_count = sums, count
                if self._ops["post_optim"]:
                    with timeit(f"train/{stage.name}/hooks"):
                        for op in self._ops["post_optim"]:
                            op(stage.name, record.steps, metrics)
                elapsed = time.perf_counter() - start
                record.seconds_this_run = elapsed
                record.seconds = seconds_before + elapsed
                last = record.steps >= stage.total_steps
                checkpoint = last or record.steps % self.checkpoint_interval == 0
                if count and (record.steps % self.log_interval == 0 or last or checkpoint):
                    self._check_losses(stage, record.steps, sums, count)
                if count and (record.steps % self.log_interval == 0 or last):
                    means = {k: float(v) / count for k, v in sums.items()}
                    for key, value in means.items():
                        self.log_scalar(f"{stage.name}/{key}", value, record.steps)
                    self.log_scalar(
                        f"{stage.name}/updates_per_s",
                        record.steps_this_run / max(elapsed, 1e-9),
                        record.steps,
                    )
                    for op in self._ops["post_steps_log"]:
                        op(stage.name, record.steps, means)
                    first = next(iter(means.items()), None)
                    if first is not None:
                        bar.set_postfix({first[0]: f"{first[1]:.4g}"}, refresh=False)
                    sums, count = {}, 0
                    self._log_sums, self._log_count = sums, count
                bar.update(1)
                if last:
                    record.done = True
                if checkpoint:
                    self.save_checkpoint(stage)
        except KeyboardInterrupt:
            bar.close()
            print(
                f"\n[trainer] interrupted in stage '{stage.name}' at step {record.steps}; "
                f"the last checkpoint is in {self.checkpoint_dir}. Re-run with the same run_dir "
                f"to resume."
            )
            raise
        bar.close()

    def _distributed_step(
        self, stage: Stage, batch: TensorDictBase | None, step: int
    ) -> Mapping[str, Tensor | float]:
        """``stage.step`` with the global RNG forked and seeded per (rank, stage, step): the
        ranks draw different noise, the generators outside the step stay equal on all ranks,
        and a resumed run draws what the uninterrupted one did."""
        index = [s.name for s in self.stages].index(stage.name)
        seed = hash((self._step_seed_base, self.rank, index, step)) % (2**63)
        devices = [self.device] if self.device is not None and self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return stage.step(batch, step)

    def _checkpoint_note(self, stage: Stage) -> str:
        if self.checkpoint_dir is None:
            return "this run keeps no checkpoints (run_dir=None)"
        path = self.checkpoint_path(stage.name)
        if not path.exists():
            return f"no checkpoint of stage '{stage.name}' was written yet"
        step = torch.load(path, map_location="cpu", weights_only=True).get("step")
        return f"the last good checkpoint {path} (step {step}) is kept"

    def _non_finite(self, stage: Stage, step: int, err: NonFiniteError) -> NonFiniteError:
        """``err`` with the stage, step, kept checkpoint and what to do."""
        message = (
            f"Training stopped in stage '{stage.name}' at step {step}/{stage.total_steps}: {err} "
            f"Nothing was saved after the bad step; {self._checkpoint_note(stage)}. Usual "
            f"causes: NaN/inf in the dataset (make_offline_data checks it), a learning rate that "
            f"is too high, or an empty batch (batch_size={stage.batch_size}). Fix the cause and "
            f"start a new run_dir (or lower the lr / set train.grad_clip)."
        )
        return NonFiniteError(message, err.loss_name, err.loss_value, err.bad_gradients)

    def _check_losses(
        self, stage: Stage, step: int, sums: Mapping[str, Tensor | float], count: int
    ) -> None:
        """Raise :class:`NonFiniteError` if a ``loss*`` metric of the last ``count`` steps
        (ending at ``step``) is NaN/inf: the check for steps that do not use
        :class:`OptimizerStep`. Runs before logging and before every checkpoint."""
        for key, value in sums.items():
            if key.startswith("loss") and not math.isfinite(float(value)):
                err = NonFiniteError(
                    f"non-finite {key} = {float(value) / count} (mean over steps "
                    f"{step - count + 1}..{step}).",
                    key,
                    float(value),
                    [],
                )
                raise self._non_finite(stage, step, err)


# ----------------------------------------------------------------------------- helpers
def _check_only_stages(only_stages: Sequence[str] | None, names: list[str]) -> tuple | None:
    """``only_stages`` as a tuple in schedule order, or ``None``; unknown names raise."""
    if only_stages is None:
        return None
    if isinstance(only_stages, str):
        only_stages = (only_stages,)
    unknown = [name for name in only_stages if name not in names]
    if unknown or not only_stages:
        what = f"names {unknown}, which are not stages" if unknown else "is empty"
        raise ValueError(
            f"only_stages={list(only_stages)!r} {what}; choose a non-empty subset of the "
            f"stages {names}."
        )
    return tuple(name for name in names if name in only_stages)


def _numpy_state_to_json(state: tuple) -> list:
    name, keys, pos, has_gauss, cached = state
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _numpy_state_from_json(state: list) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached


def _to_cpu(value: Tensor | float) -> Tensor | float:
    return value.detach().cpu() if isinstance(value, Tensor) else float(value)


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


def _diff_keys(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        name = f"{prefix}{key}"
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            keys.extend(_diff_keys(va, vb, name + "."))
        elif json.dumps(va, default=str) != json.dumps(vb, default=str):
            keys.append(f"{name}: {va!r} -> {vb!r}")
    return keys


def cosine_or_constant(optimizer: torch.optim.Optimizer, kind: str, total_steps: int) -> Any:
    """``None`` for a constant lr, or a cosine decay to 0 over ``total_steps``."""
    if kind == "constant":
        return None
    if kind == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total_steps) / max(total_steps, 1))),
        )
    raise ValueError(f"train.lr_schedule must be 'constant' or 'cosine', got {kind!r}.")


ADAM_IMPLEMENTATIONS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {}}


def adam_step(
    module: torch.nn.Module,
    lr: float,
    steps: int,
    *,
    adam: str = "fused",
    lr_schedule: str = "constant",
    grad_clip: float | None = None,
    name: str | None = None,
) -> OptimizerStep:
    """An :class:`OptimizerStep` with Adam over the trainable parameters of ``module``.

    Args:
        module: the module whose ``requires_grad`` parameters are optimised.
        lr: learning rate.
        steps: optimiser steps the lr schedule spans.
        adam: torch's Adam kernel (same update): ``"fused"`` (one kernel per step),
            ``"foreach"`` or ``"loop"``.
        lr_schedule: ``"constant"`` or ``"cosine"`` (to 0 at ``steps``).
        grad_clip: max global gradient norm, or ``None``.
        name: the loss name in :class:`NonFiniteError` messages.

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> step = adam_step(net, 1e-3, 100, adam="loop", name="loss_toy")
        >>> _ = step(net(torch.ones(1, 2)).sum())
    """
    if adam not in ADAM_IMPLEMENTATIONS:
        raise ValueError(f"train.adam must be one of {sorted(ADAM_IMPLEMENTATIONS)}, got {adam!r}.")
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=float(lr), **ADAM_IMPLEMENTATIONS[adam])
    return OptimizerStep(
        optimizer,
        grad_clip=None if grad_clip is None else float(grad_clip),
        scheduler=cosine_or_constant(optimizer, lr_schedule, int(steps)),
        name=name,
    )
