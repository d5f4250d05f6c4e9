"""Build D4RL-style offline datasets locally, from scripted experts on real gymnasium envs.

Each local family is one gymnasium env plus a scripted expert (:mod:`.experts`). A dataset
of a given quality is collected by a *behaviour policy* derived from the expert:

================  ==========================================================================
quality           behaviour
================  ==========================================================================
``random``        uniform random actions
``medium``        the expert, degraded (random action with probability ``epsilon``, else the
                  expert's action plus ``N(0, sigma^2)`` noise, clipped to the action box)
``expert``        the expert with a little Gaussian noise
``medium-replay`` a curriculum of improving policies: the degradation is interpolated per
                  episode from ``replay_start`` (random-like) to ``medium`` as data accrues
``medium-expert`` half ``medium`` steps, then half ``expert`` steps (as D4RL)
================  ==========================================================================

Every dataset records ``ref_min_score`` (mean return of the uniform random policy) and
``ref_max_score`` (mean return of the noise-free expert), both measured on ``ref_episodes``
episodes with fixed seeds, so normalized scores mean what they mean in D4RL.

Datasets are written with :func:`minari.create_dataset_from_buffers` (HDF5, no jax needed) to
``<root>/local/<family>/<quality>-v0`` where ``root`` is the argument, else
``$MINARI_DATASETS_PATH``, else ``~/.minari/datasets``. Building is idempotent: an existing
dataset is reused unless ``overwrite=True`` or an explicit ``num_steps``/``seed`` differs from
the one it was built with.

Example:
    >>> import tempfile
    >>> path = build_local_dataset(
    ...     "pendulum-medium", root=tempfile.mkdtemp(), num_steps=400, ref_episodes=5
    ... )
    >>> path.name
    'medium-v0'
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from torchrl_aepo.data._minari import minari_root

__all__ = [
    "LOCAL_FAMILIES",
    "BehaviourNoise",
    "LocalFamily",
    "QUALITIES",
    "build_local_dataset",
    "local_dataset_id",
    "reference_scores",
]

#: Dataset quality levels of the locally built datasets, in D4RL's naming.
QUALITIES: tuple[str, ...] = ("random", "medium", "expert", "medium-replay", "medium-expert")

# Bump when the collection logic changes, so cached datasets are rebuilt.
BUILDER_VERSION = 1
_BUILD_KEY = "torchrl_aepo_build"


@dataclass(frozen=True)
class BehaviourNoise:
    """Degradation of the expert: with probability ``epsilon`` a uniformly random action,
    otherwise the expert's action plus ``N(0, sigma^2)`` noise (action units), clipped."""

    epsilon: float = 0.0
    sigma: float = 0.0

    def lerp(self, other: BehaviourNoise, frac: float) -> BehaviourNoise:
        """Linear interpolation ``self -> other`` at ``frac`` in ``[0, 1]``."""
        return BehaviourNoise(
            epsilon=self.epsilon + frac * (other.epsilon - self.epsilon),
            sigma=self.sigma + frac * (other.sigma - self.sigma),
        )


def _pendulum_expert(env):
    from torchrl_aepo.data.experts import PendulumSwingUpExpert

    return PendulumSwingUpExpert()


def _double_pendulum_expert(env):
    from torchrl_aepo.data.experts import DoublePendulumLQRExpert

    return DoublePendulumLQRExpert(env)


@dataclass(frozen=True)
class LocalFamily:
    """A gymnasium env with a scripted expert and the noise levels of each dataset quality.

    Attributes:
        name: family name, the prefix of its task names (``"pendulum"``).
        env_id: gymnasium id used for collection and evaluation.
        max_episode_steps: the env's time limit.
        make_expert: ``env -> expert`` where ``expert(obs [obs_dim]) -> action [act_dim]``.
        levels: behaviour noise of ``random``, ``medium`` and ``expert``.
        replay_start: first policy of the ``medium-replay`` curriculum (ends at ``medium``).
        default_steps: transitions per dataset when ``num_steps`` is not given.
        random_steps: default size of the ``random`` dataset (its episodes can be very short,
            and Minari's HDF5 format costs ~10 ms per episode to convert).
        ref_episodes: episodes used to measure the reference scores.
        description: one line for ``list --verbose``.
    """

    name: str
    env_id: str
    max_episode_steps: int
    make_expert: Callable
    levels: dict[str, BehaviourNoise] = field(default_factory=dict)
    replay_start: BehaviourNoise = BehaviourNoise(epsilon=1.0)
    default_steps: int = 100_000
    random_steps: int = 100_000
    ref_episodes: int = 50
    description: str = ""


LOCAL_FAMILIES: dict[str, LocalFamily] = {
    "pendulum": LocalFamily(
        name="pendulum",
        env_id="Pendulum-v1",
        max_episode_steps=200,
        make_expert=_pendulum_expert,
        levels={
            "random": BehaviourNoise(epsilon=1.0),
            "medium": BehaviourNoise(epsilon=0.6, sigma=0.2),
            "expert": BehaviourNoise(sigma=0.2),
        },
        replay_start=BehaviourNoise(epsilon=1.0, sigma=0.2),
        default_steps=100_000,
        ref_episodes=100,
        description="Pendulum-v1, energy-shaping swing-up + PD expert; 200-step episodes, "
        "truncation only.",
    ),
    "inverted-double-pendulum": LocalFamily(
        name="inverted-double-pendulum",
        env_id="InvertedDoublePendulum-v5",
        max_episode_steps=1000,
        make_expert=_double_pendulum_expert,
        levels={
            "random": BehaviourNoise(epsilon=1.0),
            "medium": BehaviourNoise(sigma=0.21),
            "expert": BehaviourNoise(sigma=0.05),
        },
        replay_start=BehaviourNoise(sigma=0.35),
        default_steps=50_000,
        random_steps=5_000,
        ref_episodes=10,
        description="InvertedDoublePendulum-v5 (MuJoCo), LQR expert; falls terminate.",
    ),
}


def local_dataset_id(family: str, quality: str) -> str:
    """Minari id of a local dataset, e.g. ``local/pendulum/medium-replay-v0``."""
    return f"local/{family}/{quality}-v0"


def _parse_local_name(name: str) -> tuple[LocalFamily, str]:
    """``"<family>-<quality>"`` -> (family, quality), e.g. ``"pendulum-medium-replay"``."""
    for family in LOCAL_FAMILIES.values():
        quality = name.removeprefix(f"{family.name}-")
        if quality != name and quality in QUALITIES:
            return family, quality
    local = ", ".join(f"{f}-{q}" for f in LOCAL_FAMILIES for q in QUALITIES)
    raise ValueError(f"{name!r} is not a local task; local tasks are: {local}")


def _collect(
    env,
    expert,
    num_steps: int,
    noise_at: Callable[[float], BehaviourNoise],
    rng: np.random.Generator,
    seed: int,
    first_id: int = 0,
) -> list:
    """Roll out ``num_steps`` transitions; ``noise_at(progress)`` picks each episode's noise.

    The behaviour action is a uniformly random action with probability ``epsilon``, else the
    expert's action plus ``N(0, sigma^2)`` noise, clipped to the action box. Random numbers are
    drawn per episode in bulk. The last episode is cut at ``num_steps`` and marked truncated
    (its final observation is real, so the transition stays usable).
    """
    from minari.data_collector.episode_buffer import EpisodeBuffer

    low, high = env.action_space.low, env.action_space.high
    obs_dtype = env.observation_space.dtype
    horizon = env.spec.max_episode_steps
    episodes, steps = [], 0
    obs, _ = env.reset(seed=seed)
    while steps < num_steps:
        noise = noise_at(steps / num_steps)
        length = min(horizon, num_steps - steps)
        explore = rng.random(length) < noise.epsilon
        uniform = (low + (high - low) * rng.random((length, low.size))).astype(np.float32)
        gauss = (noise.sigma * rng.standard_normal((length, low.size))).astype(np.float32)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        for t in range(length):
            if explore[t]:
                action = uniform[t]
            else:
                action = np.minimum(np.maximum(expert(obs) + gauss[t], low), high)
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            terms.append(terminated)
            truncs.append(truncated)
            if terminated or truncated:
                break
        steps += len(actions)
        truncs[-1] = truncs[-1] or not terms[-1]
        episodes.append(
            EpisodeBuffer(
                id=first_id + len(episodes),
                seed=seed if not episodes else None,
                observations=np.asarray(observations, dtype=obs_dtype),
                actions=np.asarray(actions, dtype=np.float32),
                rewards=np.asarray(rewards, dtype=np.float64),
                terminations=np.asarray(terms, dtype=bool),
                truncations=np.asarray(truncs, dtype=bool),
                infos={},
            )
        )
        if steps < num_steps:
            obs, _ = env.reset()
    return episodes


def _average_return(env, policy: Callable, episodes: int, seed: int) -> float:
    total = 0.0
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += float(reward)
            done = terminated or truncated
    return total / episodes


@functools.lru_cache(maxsize=16)
def reference_scores(family: str, episodes: int | None = None) -> tuple[float, float]:
    """``(ref_min_score, ref_max_score)`` of a local family: mean returns of the uniform random
    policy and of the noise-free expert over ``episodes`` episodes (seeds 10000, 10001, ...).

    Example:
        >>> lo, hi = reference_scores("pendulum", 5)
        >>> lo < hi
        True
    """
    import gymnasium as gym

    fam = LOCAL_FAMILIES[family]
    episodes = episodes or fam.ref_episodes
    env = gym.make(fam.env_id, disable_env_checker=True)
    expert = fam.make_expert(env)
    env.action_space.seed(10_000)
    random_return = _average_return(env, lambda _: env.action_space.sample(), episodes, 10_000)
    expert_return = _average_return(env, expert, episodes, 10_000)
    env.close()
    return random_return, expert_return


def _collect_quality(fam: LocalFamily, quality: str, num_steps: int, seed: int) -> list:
    import gymnasium as gym

    env = gym.make(fam.env_id, disable_env_checker=True)
    expert = fam.make_expert(env)
    rng = np.random.default_rng(seed)
    levels = fam.levels
    if quality in levels:
        episodes = _collect(env, expert, num_steps, lambda _: levels[quality], rng, seed)
    elif quality == "medium-replay":
        schedule = functools.partial(fam.replay_start.lerp, levels["medium"])
        episodes = _collect(env, expert, num_steps, schedule, rng, seed)
    elif quality == "medium-expert":
        half = num_steps // 2
        episodes = _collect(env, expert, half, lambda _: levels["medium"], rng, seed)
        episodes += _collect(
            env, expert, num_steps - half, lambda _: levels["expert"], rng, seed + 1, len(episodes)
        )
    else:
        raise ValueError(f"unknown dataset quality {quality!r}")
    env.close()
    return episodes


def _read_build_info(dataset_dir: Path) -> dict | None:
    meta = dataset_dir / "data" / "metadata.json"
    if not meta.exists():
        return None
    with open(meta) as f:
        raw = json.load(f).get(_BUILD_KEY)
    return json.loads(raw) if raw else None


def build_local_dataset(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    num_steps: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    ref_episodes: int | None = None,
) -> Path:
    """Build (or reuse) the local Minari HDF5 dataset of task ``name``; return its directory.

    Args:
        name: a local task, ``"<family>-<quality>"`` (``"pendulum-medium-replay"``), or a
            locomotion task ``"<env>-<quality>-local"`` (built by
            :func:`torchrl_aepo.data.locomotion.build_locomotion_dataset`).
        root: Minari datasets root (default ``$MINARI_DATASETS_PATH``, else
            ``~/.minari/datasets``).
        num_steps: number of transitions (default: the family's ``default_steps``; an existing
            dataset of any size is reused when this is ``None``).
        seed: seed of the env resets and of the behaviour noise.
        overwrite: rebuild even if a matching dataset exists.
        ref_episodes: episodes for the reference scores (default: the family's).

    Returns:
        ``<root>/local/<family>/<quality>-v0``, the Minari dataset directory.

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> p = build_local_dataset("pendulum-random", root=root, num_steps=400, ref_episodes=5)
        >>> p == build_local_dataset("pendulum-random", root=root)  # reused, not rebuilt
        True
    """
    import minari

    if isinstance(name, str) and name.endswith("-local"):  # the SAC locomotion ladder
        from torchrl_aepo.data.locomotion import build_locomotion_dataset

        return build_locomotion_dataset(
            name, root=root, num_steps=num_steps, seed=seed, overwrite=overwrite
        )
    fam, quality = _parse_local_name(name)
    dataset_id = local_dataset_id(fam.name, quality)
    with minari_root(root) as base:
        path = base / dataset_id
        info = _read_build_info(path)
        if info is not None and not overwrite:
            wanted = {"version": BUILDER_VERSION, "seed": seed}
            if num_steps is not None:
                wanted["num_steps"] = num_steps
            if all(info.get(k) == v for k, v in wanted.items()):
                return path
        if path.exists():
            shutil.rmtree(path)
        steps = num_steps or (fam.random_steps if quality == "random" else fam.default_steps)
        if steps < 1:
            raise ValueError(f"num_steps must be positive, got {steps}")
        start = time.perf_counter()
        episodes = _collect_quality(fam, quality, steps, seed)
        ref_min, ref_max = reference_scores(fam.name, ref_episodes)
        dataset = minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=episodes,
            env=fam.env_id,
            eval_env=fam.env_id,
            algorithm_name=f"scripted expert, {quality}",
            author="torchrl-aepo",
            author_email="torchrl-aepo@localhost",
            code_permalink="torchrl_aepo/data/builders.py",
            description=f"{quality} dataset of {fam.description}",
            ref_min_score=ref_min,
            ref_max_score=ref_max,
        )
        build = {
            "version": BUILDER_VERSION,
            "seed": seed,
            "num_steps": steps,
            "build_seconds": round(time.perf_counter() - start, 3),
        }
        dataset.storage.update_metadata({_BUILD_KEY: json.dumps(build)})
    return path
