"""Batched evaluation of an AEPO policy in TorchRL rollouts (``aepo-math.md`` §12).

Episodes run ``num_envs`` at a time in one gymnasium ``SyncVectorEnv`` wrapped by TorchRL's
``GymWrapper`` (``autoreset_mode=SAME_STEP``; the wrapper that scales best on CPU, see
``stack-notes.md`` §2) with ``DoubleToFloat`` (and the dataset's ``ObservationNorm`` when the
policy was trained on normalised observations). One ``env.rollout(max_steps, policy,
break_when_any_done=False)`` steps all environments together, so the policy is called once per
time step for the whole batch. Each environment contributes its *first* episode of a round;
rounds are repeated until ``episodes`` episodes are collected. Environment ``i`` of round
``r`` is seeded with ``seed + r * num_envs + i`` (recorded in the result), and the policy's
noise comes from ``torch.manual_seed(seed)`` inside a forked RNG, so an evaluation is
reproducible and does not disturb the training RNG.

The D4RL normalized score is ``100 * (R - R_random) / (R_expert - R_random)``
(:func:`torchrl_aepo.data.normalized_score`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torchrl.envs import Compose, DoubleToFloat, TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type

__all__ = ["EVAL_BACKENDS", "EvalResult", "make_eval_env", "evaluate_policy", "guidance_sweep"]

#: ``make_eval_env(backend=...)``: gymnasium ``SyncVectorEnv`` or ``AsyncVectorEnv``.
EVAL_BACKENDS = ("sync", "async")


@dataclass
class EvalResult:
    """Returns and normalized scores of ``len(returns)`` evaluation episodes."""

    guidance: float | None
    returns: list[float]
    normalized_scores: list[float]
    episode_lengths: list[int]
    seeds: list[int]
    seconds: float
    env_steps: int
    normalized_mean: float = field(init=False)
    normalized_std: float = field(init=False)
    return_mean: float = field(init=False)
    return_std: float = field(init=False)

    def __post_init__(self) -> None:
        self.normalized_mean = float(np.mean(self.normalized_scores)) if self.returns else math.nan
        self.normalized_std = float(np.std(self.normalized_scores)) if self.returns else math.nan
        self.return_mean = float(np.mean(self.returns)) if self.returns else math.nan
        self.return_std = float(np.std(self.returns)) if self.returns else math.nan

    @property
    def steps_per_s(self) -> float:
        return self.env_steps / self.seconds if self.seconds > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["steps_per_s"] = round(self.steps_per_s, 2)
        return out

    def __str__(self) -> str:
        w = "" if self.guidance is None else f"w={self.guidance:g}: "
        return (
            f"{w}normalized score {self.normalized_mean:.1f} ± {self.normalized_std:.1f}, return "
            f"{self.return_mean:.1f} ± {self.return_std:.1f} ({len(self.returns)} episodes)"
        )


def make_eval_env(
    env_id: str,
    num_envs: int,
    *,
    env_kwargs: dict[str, Any] | None = None,
    max_episode_steps: int | None = None,
    transforms: Sequence[Any] = (),
    device: torch.device | str = "cpu",
    backend: str = "sync",
    async_context: str | None = "fork",
) -> TransformedEnv:
    """``num_envs`` copies of a gymnasium env stepped together, as a TorchRL env.

    The gymnasium envs always step on the CPU (numpy); ``device`` is where TorchRL puts the
    tensors, i.e. the policy's (training) device, as TorchRL's GPU collectors do.

    Args:
        env_id: gymnasium id (``"Pendulum-v1"``, ``"Hopper-v4"``, ...).
        num_envs: number of environments (batch size ``[num_envs]``).
        env_kwargs: keyword arguments for ``gymnasium.make``.
        max_episode_steps: time limit; ``None`` keeps the registered one.
        transforms: extra TorchRL transforms appended after ``DoubleToFloat``, e.g. the
            dataset's ``ObservationNorm`` or an ``ActionScaling`` that exposes a ``[-1, 1]``
            action box to the policy.
        device: device of the env's tensors (the policy's device; ``cuda`` when training there).
        backend: ``"sync"``: gymnasium ``SyncVectorEnv``, all envs in this process (the
            default; fastest on 2 cores, ``stack-notes.md`` §2); ``"async"``: gymnasium
            ``AsyncVectorEnv``, one subprocess per env (``spawn``: the calling script needs an
            ``if __name__ == "__main__":`` guard). Same seeds give the same episodes with both.
            Close the env (``env.close()``) to stop the subprocesses.
        async_context: multiprocessing start method of the ``async`` subprocesses: ``"fork"``
            (default; 0.4 s to start 10 Pendulum workers here), ``"spawn"`` / ``"forkserver"``
            (every worker re-imports the main script, i.e. torch and torchrl: 18-45 s to start
            10 workers on this loaded 2-core machine, measured), or
            ``None`` for the multiprocessing default (``spawn`` once torchrl is imported). The
            workers only run gymnasium (numpy) code, never torch or CUDA.

    Raises:
        RuntimeError: if the env cannot be created (missing optional package, unknown id);
            the message names the env and the original error.
    """
    import gymnasium as gym
    from torchrl.envs.libs.gym import GymWrapper

    kwargs = dict(env_kwargs or {})
    if max_episode_steps is not None:
        kwargs.setdefault("max_episode_steps", int(max_episode_steps))

    def make_one():
        return gym.make(env_id, **kwargs)

    try:
        make_one().close()  # fail early with a clear message
    except Exception as err:  # noqa: BLE001
        raise RuntimeError(
            f"Cannot create the evaluation env {env_id!r} with {kwargs}: "
            f"{type(err).__name__}: {err}. Maze/antmaze/adroit envs need "
            f"`pip install gymnasium-robotics`."
        ) from err
    if backend not in EVAL_BACKENDS:
        raise ValueError(f"eval backend must be one of {EVAL_BACKENDS}, got {backend!r}.")
    fns, autoreset = [make_one] * int(num_envs), gym.vector.AutoresetMode.SAME_STEP
    if backend == "sync":
        vector_env = gym.vector.SyncVectorEnv(fns, autoreset_mode=autoreset)
    else:
        vector_env = gym.vector.AsyncVectorEnv(fns, autoreset_mode=autoreset, context=async_context)
    env = GymWrapper(vector_env, device=device)
    compose = Compose(DoubleToFloat(), *transforms)
    if isinstance(env, TransformedEnv):  # GymWrapper may already add its own transforms
        env.append_transform(compose)
        return env
    return TransformedEnv(env, compose)


def evaluate_policy(
    policy: Callable,
    env: Any,
    *,
    episodes: int,
    max_steps: int,
    seed: int = 0,
    normalize: Callable[[Sequence[float]], Sequence[float]] | None = None,
    exploration: str = "random",
    guidance: float | None = None,
    global_rng: bool = True,
) -> EvalResult:
    """Run ``episodes`` episodes of ``policy`` on the batched ``env`` and score them.

    Args:
        policy: a TensorDict policy (e.g. :class:`~torchrl_aepo.actor.AEPOActor`).
        env: a batched TorchRL env from :func:`make_eval_env` (batch size ``[N]``).
        episodes: number of episodes to collect.
        max_steps: rollout length per round; use the env's time limit so that every env
            finishes at least one episode.
        seed: base seed (envs get ``seed + k``; the policy noise ``torch.manual_seed(seed)``).
        normalize: maps returns to normalized scores (identity when ``None``).
        exploration: ``"random"`` or ``"deterministic"`` (TorchRL exploration type).
        guidance: recorded in the result (the guidance degree used), not applied here.
        global_rng: ``True`` (default): the policy's noise is the global torch RNG, seeded
            with ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng`` (restored after).
            ``False``: the global RNG is left alone, for a policy that draws from its own
            generator (seeded by the caller), e.g. in a background thread, where the global
            RNG is shared with training (:mod:`torchrl_aepo.background_eval`).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}.")
    exploration_types = {
        "random": ExplorationType.RANDOM,
        "deterministic": ExplorationType.DETERMINISTIC,
    }
    if exploration not in exploration_types:
        raise ValueError(
            f"exploration must be one of {list(exploration_types)}, got {exploration!r}."
        )
    num_envs = int(env.batch_size[0]) if len(env.batch_size) else 1
    returns: list[float] = []
    lengths: list[int] = []
    seeds: list[int] = []
    env_steps = 0
    start = time.perf_counter()
    with (
        torch.random.fork_rng(devices=[]) if global_rng else contextlib.nullcontext(),
        torch.no_grad(),
        set_exploration_type(exploration_types[exploration]),
    ):
        if global_rng:
            torch.manual_seed(seed)
        round_index = 0
        while len(returns) < episodes:
            round_seed = seed + round_index * num_envs
            env.set_seed(round_seed)
            rollout = env.rollout(
                max_steps, policy=policy, break_when_any_done=False, auto_reset=True
            )
            env_steps += rollout.numel()
            reward = rollout.get(("next", "reward")).reshape(num_envs, -1)
            done = rollout.get(("next", "done")).reshape(num_envs, -1)
            for i in range(num_envs):
                if len(returns) >= episodes:
                    break
                ends = torch.nonzero(done[i]).flatten()
                end = int(ends[0]) + 1 if len(ends) else reward.shape[1]
                returns.append(float(reward[i, :end].sum()))
                lengths.append(end)
                seeds.append(round_seed + i)
            round_index += 1
    seconds = time.perf_counter() - start
    scores = list(normalize(returns)) if normalize is not None else list(returns)
    return EvalResult(
        guidance=guidance,
        returns=returns,
        normalized_scores=[float(s) for s in scores],
        episode_lengths=lengths,
        seeds=seeds,
        seconds=seconds,
        env_steps=env_steps,
    )


def guidance_sweep(
    actor: Any,
    env: Any,
    guidances: Sequence[float],
    **kwargs: Any,
) -> list[EvalResult]:
    """Evaluate ``actor`` at each guidance degree (``actor.guidance_scale = w``), same seeds.

    ``kwargs`` are those of :func:`evaluate_policy`. The actor's guidance degree is restored.
    """
    original = actor.guidance_scale
    results = []
    try:
        for w in guidances:
            actor.guidance_scale = float(w)
            results.append(evaluate_policy(actor, env, guidance=float(w), **kwargs))
    finally:
        actor.guidance_scale = original
    return results


def sweep_table(results: Sequence[EvalResult], chosen: float | None = None) -> str:
    """A plain-text table of a guidance sweep (one row per guidance degree)."""
    lines = [
        "   w | normalized score      | return               | episodes",
        "-----+-----------------------+----------------------+---------",
    ]
    for r in results:
        mark = " *" if chosen is not None and r.guidance == chosen else "  "
        lines.append(
            f"{r.guidance:4g}{mark[1]}| {r.normalized_mean:8.2f} ± {r.normalized_std:7.2f}    "
            f"| {r.return_mean:9.2f} ± {r.return_std:8.2f} | {len(r.returns)}"
        )
    return "\n".join(lines)
