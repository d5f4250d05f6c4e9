"""Periodic evaluations in a background thread, with TorchRL's :class:`~torchrl.collectors.Evaluator`.

:class:`BackgroundEvaluation` evaluates *snapshots* of an actor while training continues
(``train.eval_mode=background`` of ``recipes/aepo_offline.py``):

* :meth:`~BackgroundEvaluation.submit` hands the actor to ``Evaluator.trigger_eval``, which
  copies its parameters and buffers (``TensorDict.from_module(actor).data.detach().clone()``)
  on the calling thread, so later training does not change what is evaluated; the
  evaluator's thread loads them into a private deep copy of the actor and runs the rollout.
* the rollout is this package's :func:`~torchrl_aepo.evaluation.evaluate_policy`, the one the
  synchronous evaluation runs (same env seeds, same episodes, same scores). It is plugged in
  through the evaluator's ``collector_cls`` hook (:class:`_EvaluationRunner`), because the
  stock :class:`~torchrl.collectors.Collector` the evaluator otherwise builds cannot reproduce
  that protocol: it never seeds the env per round, counts the first ``num_trajectories``
  trajectories to *finish* (not each env's first episode) and draws the policy noise from
  the thread's unseeded global RNG.
* the policy noise comes from a private ``torch.Generator`` seeded with the evaluation seed,
  not from the global RNG (process-wide, shared with the training thread): under
  ``exploration="random"`` it gives the same draws as the synchronous evaluation's
  ``torch.manual_seed(seed)``, and the training RNG is never touched.
* at most one evaluation is in flight; :meth:`~BackgroundEvaluation.submit` while one runs
  first waits for it (so every due step is evaluated, as in the synchronous mode; the wait is
  counted in :attr:`~BackgroundEvaluation.wait_seconds`).
* :meth:`~BackgroundEvaluation.poll` (non-blocking) and :meth:`~BackgroundEvaluation.drain`
  (blocking) return the finished ``(step, EvalResult)`` pairs in submission order; an
  exception raised in the background is re-raised there.

Thread safety: the background rollout shares the process with training. It uses only its own
actor copy and generator; TorchRL's exploration type (``set_exploration_type``) is
process-global, which is harmless here because training never reads it. Keep the eval env
for this object while an evaluation is in flight (:meth:`drain` before reusing it).
"""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.envs.utils import ExplorationType

from torchrl_aepo.evaluation import EvalResult, evaluate_policy

__all__ = ["BackgroundEvaluation"]

_EXPLORATION = {"random": ExplorationType.RANDOM, "deterministic": ExplorationType.DETERMINISTIC}


class _EvaluationRunner:
    """Stands in for the evaluator's collector (``Evaluator(collector_cls=...)``).

    The evaluator builds it once (in its thread) with the env and its policy copy, then per
    evaluation calls :meth:`reset` and takes ``next(iter(runner))``: one
    :func:`evaluate_policy` of the policy as it is then (the evaluator has just loaded the
    snapshot's weights). The :class:`EvalResult` (or the exception) goes to ``outbox``; the
    yielded batch holds one row per episode in the keys the evaluator reads (``("next",
    "episode_reward")``, ``("next", "step_count")``, ``("collector", "traj_ids")``).
    """

    def __init__(
        self,
        create_env_fn: Any,
        policy: Any,
        *,
        guidance: float,
        eval_kwargs: dict[str, Any],
        outbox: deque,
        **_collector_kwargs: Any,  # frames_per_batch, trajs_per_batch, ...: unused
    ) -> None:
        self.env = create_env_fn
        self.actor = policy
        self.guidance = float(guidance)
        self.eval_kwargs = dict(eval_kwargs)
        self.outbox = outbox

    def reset(self) -> None:
        pass

    def shutdown(self) -> None:
        pass  # the env belongs to the caller

    def __iter__(self):
        yield self._run()

    def _run(self) -> TensorDict:
        try:
            result = self._evaluate()
        except Exception as err:  # noqa: BLE001  re-raised by BackgroundEvaluation.poll
            self.outbox.append(err)
            result = EvalResult(None, [float("nan")], [float("nan")], [0], [-1], 0.0, 0)
        else:
            self.outbox.append(result)
        n = len(result.returns)
        return TensorDict(
            {
                ("next", "episode_reward"): torch.tensor(result.returns).view(n, 1),
                ("next", "step_count"): torch.tensor(result.episode_lengths).view(n, 1),
                ("collector", "traj_ids"): torch.arange(n),
            },
            batch_size=[n],
        )

    def _evaluate(self) -> EvalResult:
        kwargs = dict(self.eval_kwargs)
        seed = int(kwargs.get("seed", 0))
        exploration = kwargs.get("exploration", "random")
        actor = self.actor
        actor.guidance_scale = self.guidance
        policy: Callable = actor
        if exploration == "random":  # the actor draws its noise from this generator
            device = next(actor.parameters()).device
            generator = torch.Generator(device=device).manual_seed(seed)
            policy = TensorDictModule(
                lambda observation: actor.sample(observation, generator=generator),
                in_keys=list(actor.in_keys),
                out_keys=list(actor.out_keys),
            )
        # (deterministic: the actor reseeds its own generator at every call)
        return evaluate_policy(policy, self.env, guidance=self.guidance, global_rng=False, **kwargs)


class BackgroundEvaluation:
    """Evaluate snapshots of ``actor`` on ``env`` in a background thread.

    Args:
        actor: the (live, training) actor, e.g. :class:`~torchrl_aepo.actor.AEPOActor`. It is
            deep-copied once here; each :meth:`submit` snapshots its current weights.
        env: the batched eval env (:func:`~torchrl_aepo.evaluation.make_eval_env`). Do not
            use it elsewhere while an evaluation is in flight.
        guidance: the guidance degree evaluated (set on the copy).
        on_result: called as ``on_result(step, result)`` (on the caller's thread) for each
            finished evaluation, in submission order, by :meth:`submit` / :meth:`poll` /
            :meth:`drain`, which also return them.
        **eval_kwargs: those of :func:`~torchrl_aepo.evaluation.evaluate_policy`
            (``episodes``, ``max_steps``, ``seed``, ``normalize``, ``exploration``).
    """

    def __init__(
        self,
        actor: Any,
        env: Any,
        *,
        guidance: float,
        on_result: Callable[[int, EvalResult], None] | None = None,
        **eval_kwargs: Any,
    ) -> None:
        from torchrl.collectors import Evaluator

        self.on_result = on_result

        exploration = eval_kwargs.get("exploration", "random")
        if exploration not in _EXPLORATION:
            raise ValueError(
                f"exploration must be one of {list(_EXPLORATION)}, got {exploration!r}."
            )
        self._outbox: deque = deque()
        self._copy = copy.deepcopy(actor)
        self.evaluator = Evaluator(
            env,
            self._copy,
            num_trajectories=int(eval_kwargs.get("episodes", 1)),
            max_steps=eval_kwargs.get("max_steps"),
            collector_cls=_EvaluationRunner,
            collector_kwargs={
                "guidance": float(guidance),
                "eval_kwargs": eval_kwargs,
                "outbox": self._outbox,
            },
            exploration_type=_EXPLORATION[exploration],
            dump_video=False,
            busy_policy="error",  # submit() waits first: never two in flight
        )
        #: steps submitted and not yet returned by poll/drain, oldest first
        self.in_flight: deque[int] = deque()
        #: seconds the caller spent snapshotting/submitting, and waiting for results
        self.submit_seconds = 0.0
        self.wait_seconds = 0.0
        #: how many submits found the previous evaluation still running (and waited)
        self.waits = 0
        #: finished evaluations, and their rollout seconds (in the background thread)
        self.evaluations = 0
        self.eval_seconds = 0.0

    @property
    def pending(self) -> bool:
        """Whether an evaluation is running or finished but not yet returned."""
        return bool(self.in_flight)

    def submit(self, actor: Any, step: int) -> list[tuple[int, EvalResult]]:
        """Snapshot ``actor``'s weights and start evaluating them; returns what finished before.

        If the previous evaluation is still running, waits for it first (one in flight).
        """
        done = self.poll()
        if self.in_flight:
            self.waits += 1
            print(
                f"[eval] step {step}: the background evaluation of step {self.in_flight[0]} "
                f"is still running; waiting for it (train.eval_mode=background)"
            )
            done += self.drain()
        start = time.perf_counter()
        self.evaluator.trigger_eval(actor, step=int(step))
        self.in_flight.append(int(step))
        self.submit_seconds += time.perf_counter() - start
        return done

    def poll(self) -> list[tuple[int, EvalResult]]:
        """The finished evaluations, without waiting."""
        return self._collect(block=False)

    def drain(self) -> list[tuple[int, EvalResult]]:
        """Wait for every submitted evaluation and return them."""
        start = time.perf_counter()
        try:
            return self._collect(block=True)
        finally:
            self.wait_seconds += time.perf_counter() - start

    def stats(self) -> dict[str, Any]:
        """Counts and seconds: ``eval_seconds`` ran in the background; ``submit_seconds``
        (snapshots) and ``wait_seconds`` (waiting for results) are the caller's."""
        return {
            "mode": "background",
            "evaluations": self.evaluations,
            "eval_seconds": round(self.eval_seconds, 3),
            "submit_seconds": round(self.submit_seconds, 3),
            "wait_seconds": round(self.wait_seconds, 3),
            "waits": self.waits,
        }

    def close(self) -> None:
        """Stop the evaluator's thread (after :meth:`drain`; the env stays open)."""
        self.evaluator.shutdown()

    def _wait_one(self) -> dict[str, Any]:
        while True:
            raw = self.evaluator.wait(timeout=1.0)
            if raw is not None:
                return raw
            # private attributes, guarded: a dead evaluator thread is an error, not a hang
            threads = (
                getattr(self.evaluator, "_async_thread", None),
                getattr(getattr(self.evaluator, "_backend", None), "_thread", None),
            )
            if any(t is not None and not t.is_alive() for t in threads):
                raw = self.evaluator.poll()
                if raw is not None:
                    return raw
                raise RuntimeError(
                    f"the Evaluator's thread stopped before returning the evaluation of step "
                    f"{self.in_flight[0]} (its traceback was printed above)"
                )

    def _collect(self, block: bool) -> list[tuple[int, EvalResult]]:
        out = []
        while self.in_flight:
            raw = self._wait_one() if block else self.evaluator.poll()
            if raw is None:
                break
            step = int(raw["eval/step"])
            expected = self.in_flight.popleft()
            if step != expected:  # cannot happen with one in flight
                raise RuntimeError(f"background evaluation of step {step}, expected {expected}")
            item = self._outbox.popleft()
            if isinstance(item, BaseException):
                raise RuntimeError(
                    f"the background evaluation of step {step} failed: "
                    f"{type(item).__name__}: {item}"
                ) from item
            out.append((step, item))
            self.evaluations += 1
            self.eval_seconds += item.seconds
            if self.on_result is not None:
                self.on_result(step, item)
        return out
