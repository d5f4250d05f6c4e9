"""``train.overlap_stages=true`` of ``recipes/aepo_offline.py``: the critic trains in a child process.

With ``aepo.critic=expectile`` the critic stage never reads the behaviour model, so it can train
while this process trains the stages before it (``diffusion``, and ``supports`` when the plan
has it). :class:`OverlappedStage` plugs that into the run's
:class:`~torchrl_aepo.trainer.OfflineTrainer` through its hooks, and reuses its checkpoints
and resume rather than any new channel:

* ``pre_train``: unless ``checkpoints/critic.pt`` is already finished, start a child process
  (``torch.multiprocessing``, ``spawn``) that rebuilds the run from the same resolved config and
  trains ONLY the critic stage (``OfflineTrainer(only_stages=("critic",))``) into the same
  ``run_dir``, with ``threads`` torch threads and no logger;
* ``post_steps_log``: a child that already failed stops this process's training at once;
* ``post_stage`` of the stage before the critic: wait for the child (its failure, exception,
  non-finite loss or kill, raises a :class:`~utils.RecipeError` naming the stage and the
  child's message or exit code). The trainer then restores the finished critic from its
  checkpoint, like any finished stage, and goes on with ``gamma`` and ``energy``;
* ``post_stage`` of the critic: send the critic's recorded scalars (in its checkpoint) to this
  run's logger, once (:meth:`OfflineTrainer.log_history`).

Random streams: the child seeds torch / numpy / random and its replay-buffer sampler with
``seed + SEED_OFFSET`` (the ``Gamma`` generator stays ``seed + 1``), instead of continuing the
random state the diffusion stage left. An overlapped run is reproducible, but it is a different
random stream from the sequential run of the same config (``train.overlap_stages`` is hashed
into the training config, see ``utils.LATER_TRAIN_DEFAULTS``).

Killing the whole run (the child stops at its next step once its parent is gone) and running it
again resumes both stages from their last checkpoints. With ``train.stop_after_stage=diffusion``
the run stops once both overlapped stages are finished. As with any ``spawn`` start method, the
child imports the main module again: a script that calls the recipe's ``run()`` needs the
``if __name__ == "__main__":`` guard (the hydra entry point has it).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
import utils
from omegaconf import DictConfig, OmegaConf

#: the stage trained in the child process
CHILD_STAGE = "critic"
#: the child's global generators and replay-buffer sampler are seeded with ``seed + SEED_OFFSET``
SEED_OFFSET = 100_003
#: longest error message sent back by the child (characters)
MAX_MESSAGE = 4000


class OverlappedStage:
    """The critic stage of ``trainer``'s run, trained in a child process while ``trainer``
    trains the stages before it.

    Args:
        cfg: the run's config (resolved and sent to the child).
        run_dir: the run directory (the one ``trainer`` writes to).
        trainer: the run's trainer, with every stage of the staged plan; the ops are
            registered on it.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, trainer: Any) -> None:
        names = [stage.name for stage in trainer.stages]
        if CHILD_STAGE not in names or names.index(CHILD_STAGE) == 0:
            raise ValueError(
                f"train.overlap_stages needs a plan with stages before {CHILD_STAGE!r}"
            )
        self.config = OmegaConf.to_container(cfg, resolve=True)
        self.run_dir, self.trainer = Path(run_dir), trainer
        self.overlapped = names[: names.index(CHILD_STAGE)]  # trained here meanwhile
        self.process: Any = None
        self._conn: Any = None
        self._started_at = 0.0
        self.wall_seconds: float | None = None
        self.child_summary: dict[str, Any] | None = None
        trainer.register_op("pre_train", self.start)
        trainer.register_op("post_steps_log", self._fail_fast)
        trainer.register_op("post_stage", self._after_stage)

    # ------------------------------------------------------------------ the child process
    def start(self) -> None:
        """Start the child, unless the critic stage is finished already (then nothing to do)."""
        saved = self.trainer.load_checkpoint(CHILD_STAGE)
        if saved is not None and saved["done"]:
            print(f"[aepo] train.overlap_stages: stage '{CHILD_STAGE}' is finished already")
            return
        self.launch(_child_main, (self.config, str(self.run_dir), os.getpid()))
        print(
            f"[aepo] train.overlap_stages: stage '{CHILD_STAGE}' trains in child process "
            f"{self.process.pid} while this one trains {self.overlapped}"
        )

    def launch(self, target: Any, args: tuple) -> None:
        """Start ``target(*args, conn)`` in a spawned process; ``conn`` is the write end of the
        pipe that :meth:`wait` reads its result (``{"summary": ...}`` or ``{"error": ...}``)
        from."""
        context = mp.get_context("spawn")
        self._conn, child_conn = context.Pipe(duplex=False)
        self.process = context.Process(
            target=target, args=(*args, child_conn), name=f"aepo-{CHILD_STAGE}"
        )
        self._started_at = time.perf_counter()
        self.process.start()
        child_conn.close()  # the child's end: closed here, so its exit reads as EOF

    def wait(self) -> dict[str, Any] | None:
        """Wait for the child to end; its trainer summary (``None`` if none was started).

        Raises:
            utils.RecipeError: the child failed (its message), or ended without a result
                (its exit code or signal).
        """
        if self.process is None or self.child_summary is not None:
            return self.child_summary
        while not self._conn.poll(1.0):  # data or EOF (the child exited)
            if not self.process.is_alive():
                break
        message = self._receive()
        self.process.join(60)
        if self.process.is_alive():  # sent its result but does not exit
            self.process.terminate()
            self.process.join()
        self.wall_seconds = time.perf_counter() - self._started_at
        code, pid = self.process.exitcode, self.process.pid
        self.process = None
        if message is not None and "summary" in message:
            self.child_summary = message["summary"]
            record = self.child_summary["stages"][CHILD_STAGE]
            print(
                f"[aepo] train.overlap_stages: child process {pid} finished stage "
                f"'{CHILD_STAGE}' ({record['steps_this_run']} steps in "
                f"{record['seconds_this_run']:.1f} s; {self.wall_seconds:.1f} s since its start)"
            )
            return self.child_summary
        why = (
            f"failed: {message['error']}"
            if message is not None
            else f"ended without a result ({_describe_exit(code)})"
        )
        raise utils.RecipeError(
            f"train.overlap_stages: stage '{CHILD_STAGE}', trained in child process {pid}, "
            f"{why}. Its last checkpoint in {self.run_dir / 'checkpoints'} is kept: fix the "
            f"cause and re-run with run_dir={self.run_dir} to resume (or train.overlap_stages="
            f"false to train it in this process)."
        )

    def close(self) -> None:
        """Stop a child that is still running (this process failed or was interrupted)."""
        if self.process is not None and self.process.is_alive():
            self.process.terminate()
            self.process.join()
        self.process = None

    def _receive(self) -> dict[str, Any] | None:
        try:
            return self._conn.recv() if self._conn.poll(0) else None
        except EOFError:
            return None
        finally:
            self._conn.close()

    # ------------------------------------------------------------------ trainer ops
    def _fail_fast(self, _stage: str, _step: int, _means: Any) -> None:
        """Stop this process's training as soon as the child has failed."""
        if self.process is not None and self.process.exitcode not in (None, 0):
            self.wait()

    def _after_stage(self, stage: str, _summary: Any) -> None:
        if stage == self.overlapped[-1]:
            self.wait()
        elif stage == CHILD_STAGE:
            self.trainer.log_history(CHILD_STAGE)  # the child had no logger

    # ------------------------------------------------------------------ report
    def merge_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """``summary`` with the critic's record of the child's trainer (the run's trainer only
        restored the critic the child trained)."""
        if self.child_summary is None or CHILD_STAGE not in summary["stages"]:
            return summary
        record = {**self.child_summary["stages"][CHILD_STAGE], "child_process": True}
        return {**summary, "stages": {**summary["stages"], CHILD_STAGE: record}}

    def timings(self, summary: dict[str, Any]) -> dict[str, Any] | None:
        """results.json ``timings.overlap``: each overlapped stage's seconds in this run, their
        sum (the sequential time) and the wall time from the child's start to its end (with
        the child's start-up: imports, data). ``None`` when no child was started."""
        if self.wall_seconds is None:
            return None
        stages = summary["stages"]
        seconds = {
            name: stages[name]["seconds_this_run"] for name in [*self.overlapped, CHILD_STAGE]
        }
        total = sum(seconds.values())
        return {
            "stage_seconds": seconds,
            "sequential_seconds": round(total, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "saved_seconds": round(total - self.wall_seconds, 3),
        }


def _describe_exit(code: int | None) -> str:
    """``"exit code 3"`` / ``"killed by signal SIGKILL"``."""
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# ---------------------------------------------------------------------- in the child process
def _child_main(config: dict, run_dir: str, parent_pid: int, conn: Any) -> None:
    """The child's entry point: train the critic stage, send its summary or its error."""
    from torchrl_aepo.trainer import CheckpointError, NonFiniteError

    expected = (utils.RecipeError, CheckpointError, NonFiniteError, ParentGoneError)
    try:
        summary = train_child_stage(OmegaConf.create(config), Path(run_dir), parent_pid)
    except BaseException as err:
        _send(conn, {"error": f"{type(err).__name__}: {err}"[:MAX_MESSAGE]})
        if isinstance(err, (*expected, KeyboardInterrupt)):  # the message says it all
            print(f"[aepo] child {os.getpid()}: {type(err).__name__}: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        raise  # unexpected: its traceback is printed here too
    _send(conn, {"summary": summary})


def _send(conn: Any, message: dict[str, Any]) -> None:
    """Send ``message`` to the parent, if it is still there to read it."""
    try:
        conn.send(message)
        conn.close()
    except OSError:  # BrokenPipeError: the parent is gone
        pass


class ParentGoneError(RuntimeError):
    """The child's parent process is gone (killed): the child stops."""


def train_child_stage(cfg: DictConfig, run_dir: Path, parent_pid: int | None = None) -> dict:
    """Train only the critic stage of the run in ``run_dir``, as the recipe builds it, seeded
    with ``seed + SEED_OFFSET``; returns the trainer's summary.

    ``parent_pid``: stop (at the next step, keeping the last checkpoint) once that process is
    gone, so that a killed run leaves no stray writer of the checkpoint.
    """
    from torchrl_aepo import aepo

    model_cfg, aepo_cfg, train_cfg = utils.algorithm_config(cfg)
    seed = int(cfg.seed) + SEED_OFFSET
    device = utils.setup_runtime(seed, cfg.threads, str(cfg.device))
    task = utils.make_task(cfg.task)
    replay_buffer, metadata = utils.make_data(
        cfg.data, task, cfg.task.get("eval_env_id"), device, seed
    )
    compile_options = utils.compile_options(cfg.compile)
    nets = aepo.build_networks(model_cfg, metadata.obs_dim, metadata.action_dim, device)
    losses = aepo.build_losses(nets, aepo_cfg, train_cfg, compile=compile_options)
    plan = aepo.build_training_plan(
        nets, losses, replay_buffer[:], aepo=aepo_cfg, train=train_cfg, seed=int(cfg.seed),
        compile=compile_options,
    )  # fmt: skip
    trainer = utils.make_trainer(
        cfg, train_cfg, plan, replay_buffer, run_dir, only_stages=(CHILD_STAGE,),
        stop_after_stage=None, progress_bar=False, resume=True, distributed=False,
    )  # fmt: skip
    if parent_pid is not None:
        trainer.register_op("post_optim", _stop_when_orphaned(parent_pid))
    print(f"[aepo] child {os.getpid()}: stage '{CHILD_STAGE}', threads {torch.get_num_threads()}")
    return trainer.train()


def _stop_when_orphaned(parent_pid: int):
    """A ``post_optim`` op raising once the parent process is gone."""

    def op(stage: str, step: int, _metrics: Any) -> None:
        if os.getppid() != parent_pid:
            raise ParentGoneError(
                f"the parent process {parent_pid} is gone; stage '{stage}' stopped at step "
                f"{step} (its last checkpoint is kept)"
            )

    return op
