"""D4RL-style MuJoCo locomotion datasets (HalfCheetah/Hopper/Walker2d-v5), built offline.

One job: roll out the committed SAC checkpoints (:mod:`.policies`) into the D4RL quality
ladder and write each dataset as a Minari HDF5 dataset. The 15 tasks are named
``<family>-<quality>-local`` (``hopper-medium-replay-local``) with family in ``halfcheetah,
hopper, walker2d`` and the Minari id ``local/<family>/<quality>-v0``.

================  =========================================================================
quality           behaviour (``a = clip(policy(obs) + N(0, sigma^2), -1, 1)``)
================  =========================================================================
``random``        uniform random actions
``medium``        the checkpoint at about a third of the expert's return, ``sigma = 0.1``
``expert``        the best checkpoint, ``sigma = 0.1``
``medium-replay`` a training run's replay buffer up to the medium checkpoint: uniform random
                  steps for the SAC warm-up, then the checkpoints in training order (each for
                  the env steps it stands for), ``sigma = 0.2``
``medium-expert`` the ``medium`` steps, then as many ``expert`` steps (D4RL: half and half)
================  =========================================================================

Episodes follow D4RL: ``terminations`` where the env terminates (a fall), ``truncations``
(D4RL's ``timeouts``) at the 1000-step limit and on the episodes cut by the step budget; the two
are never both set. Observations are float64 as the env returns them, actions float32.

Collection runs ``num_envs`` gymnasium envs in one ``SyncVectorEnv`` (same-step autoreset)
with one batched policy forward per step; each env makes exactly its share of the steps. A
segment ``k`` of a build resets its envs with seeds ``seed + 1000 k + i`` and draws its noise
from ``np.random.default_rng([seed, k])``: one ``[num_envs, act_dim]`` draw per vector step
(standard normal, or uniform in ``[0, 1)`` for random actions). A build is deterministic; its
content fingerprint (:func:`episodes_fingerprint`, sha256 over every array) is stored in the
dataset metadata. Reference scores are D4RL's (normalized scores read like D4RL's).

Checkpoints live in ``torchrl_aepo/data/checkpoints/<family>/`` with a ``ladder.json`` that
names the medium and expert checkpoints and the replay sequence (written by
:func:`select_checkpoints` from a training run of :func:`.policies.train_policy`).

Example:
    >>> import tempfile
    >>> path = build_locomotion_dataset(
    ...     "hopper-medium-local", root=tempfile.mkdtemp(), num_steps=2_000
    ... )
    >>> path.name
    'medium-v0'
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchrl_aepo.data._minari import minari_root
from torchrl_aepo.data.policies import LOCOMOTION_ENV_IDS, PolicyNet, load_policy

__all__ = [
    "CHECKPOINT_DIR",
    "D4RL_REF_SCORES",
    "LADDER_VERSION",
    "LOCOMOTION_QUALITIES",
    "RolloutEpisode",
    "Segment",
    "behaviour_summary",
    "build_locomotion_dataset",
    "collect_segment",
    "episodes_fingerprint",
    "ladder_plan",
    "load_ladder",
    "locomotion_task_name",
    "parse_locomotion_task",
    "record_dataset_stats",
    "select_checkpoints",
]

#: Bump when the collection logic changes: cached datasets are rebuilt.
LADDER_VERSION = 1
_BUILD_KEY = "torchrl_aepo_build"

#: Committed checkpoints, one folder per family.
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"

#: D4RL's reference returns (random, expert) of the three envs (d4rl/infos.py).
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
}

LOCOMOTION_QUALITIES: tuple[str, ...] = (
    "random",
    "medium",
    "expert",
    "medium-replay",
    "medium-expert",
)
#: Gaussian exploration noise (action units) per quality.
SIGMA = {"medium": 0.1, "expert": 0.1, "medium-replay": 0.2}
DEFAULT_STEPS = 200_000
#: Random episodes of hopper/walker2d last ~20 steps; Minari's HDF5 writer costs ~10 ms per
#: episode, so their random datasets are smaller by default.
DEFAULT_RANDOM_STEPS = {"halfcheetah": 200_000, "hopper": 50_000, "walker2d": 50_000}
NUM_ENVS = 10
HORIZON = 1000


def locomotion_task_name(family: str, quality: str) -> str:
    """``("hopper", "medium-replay") -> "hopper-medium-replay-local"``."""
    return f"{family}-{quality}-local"


def parse_locomotion_task(name: str) -> tuple[str, str]:
    """``"hopper-medium-replay-local" -> ("hopper", "medium-replay")``.

    Raises:
        KeyError: ``name`` is not one of the 15 locomotion tasks.
    """
    if name.endswith("-local"):
        family, _, quality = name[: -len("-local")].partition("-")
        if family in LOCOMOTION_ENV_IDS and quality in LOCOMOTION_QUALITIES:
            return family, quality
    names = [locomotion_task_name(f, q) for f in LOCOMOTION_ENV_IDS for q in LOCOMOTION_QUALITIES]
    raise KeyError(f"{name!r} is not a local locomotion task; one of {', '.join(names)}")


# --------------------------------------------------------------------------- checkpoints


def _ladder_path(family: str, policy_dir: str | os.PathLike | None) -> Path:
    return Path(policy_dir) if policy_dir is not None else CHECKPOINT_DIR / family


def load_ladder(family: str, policy_dir: str | os.PathLike | None = None) -> dict:
    """The ``ladder.json`` manifest of ``family`` (default: the committed checkpoints).

    Raises:
        FileNotFoundError: no manifest; the message says how to train and select policies.
    """
    path = _ladder_path(family, policy_dir) / "ladder.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no policy checkpoints for {family!r}: {path} is missing. Train them with "
            f"`OMP_NUM_THREADS=1 python -m torchrl_aepo.data train-policies {family}` "
            f"(writes runs/policies/{family}), then pick the ladder's checkpoints with "
            f"`python -m torchrl_aepo.data select-policies {family}`"
        )
    return json.loads(path.read_text())


@dataclass(frozen=True)
class Segment:
    """A stretch of a dataset rolled out by one behaviour policy.

    Attributes:
        steps: transitions of the segment.
        checkpoint: checkpoint file name, ``None`` for uniform random actions.
        sigma: Gaussian action noise (ignored for random actions).
    """

    steps: int
    checkpoint: str | None
    sigma: float = 0.0


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def ladder_plan(quality: str, num_steps: int, ladder: dict) -> list[Segment]:
    """The segments of a dataset of ``quality`` with ``num_steps`` transitions.

    ``medium-replay`` follows a SAC run's replay buffer up to the medium checkpoint: the
    warm-up share ``warmup_steps / medium_env_steps`` of uniform random steps, then the replay
    checkpoints in training order, in equal shares.

    Example:
        >>> ladder = {"medium": "m.pt", "expert": "e.pt", "replay": ["a.pt", "m.pt"],
        ...           "warmup_steps": 5000, "medium_env_steps": 50000}
        >>> [(s.steps, s.checkpoint) for s in ladder_plan("medium-replay", 1000, ladder)]
        [(100, None), (450, 'a.pt'), (450, 'm.pt')]
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    if quality == "random":
        return [Segment(num_steps, None)]
    if quality in ("medium", "expert"):
        return [Segment(num_steps, ladder[quality], SIGMA[quality])]
    if quality == "medium-expert":
        half = num_steps // 2
        return [
            Segment(half, ladder["medium"], SIGMA["medium"]),
            Segment(num_steps - half, ladder["expert"], SIGMA["expert"]),
        ]
    if quality == "medium-replay":
        frac = ladder["warmup_steps"] / ladder["medium_env_steps"]
        warm = min(num_steps, round(num_steps * frac))
        shares = _split(num_steps - warm, len(ladder["replay"]))
        sigma = SIGMA["medium-replay"]
        plan = [Segment(warm, None)] + [
            Segment(n, ckpt, sigma) for n, ckpt in zip(shares, ladder["replay"], strict=True)
        ]
        return [s for s in plan if s.steps > 0]
    raise ValueError(f"unknown quality {quality!r}; one of {LOCOMOTION_QUALITIES}")


# ----------------------------------------------------------------------------- collection


@dataclass
class RolloutEpisode:
    """One collected episode (the fields of a Minari ``EpisodeBuffer``)."""

    observations: np.ndarray  # [T + 1, obs_dim] float64
    actions: np.ndarray  # [T, act_dim] float32
    rewards: np.ndarray  # [T] float64
    terminations: np.ndarray  # [T] bool
    truncations: np.ndarray  # [T] bool
    seed: int | None


def collect_segment(
    env_id: str,
    policy: PolicyNet | None,
    steps: int,
    sigma: float,
    seed: int,
    segment: int = 0,
    num_envs: int = NUM_ENVS,
) -> list[RolloutEpisode]:
    """Roll out ``steps`` transitions of ``policy`` (``None``: uniform random) with noise.

    Runs ``min(num_envs, steps)`` envs of a ``SyncVectorEnv``; env ``i`` resets with seed
    ``seed + 1000 * segment + i`` and makes exactly its share of ``steps``. Its last episode is
    cut there and marked truncated. Episodes are returned in the order they started (ties by
    env index), each with its observations ``[T + 1, obs_dim]`` (the true final observation
    last, also where the vector env auto-reset).

    Example:
        >>> eps = collect_segment("Hopper-v5", None, 100, 0.0, seed=0, num_envs=2)
        >>> sum(len(e.actions) for e in eps)
        100
    """
    import gymnasium as gym
    import torch

    n = min(num_envs, steps)
    quota = np.array(_split(steps, n))
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make(env_id, disable_env_checker=True)] * n,
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    low, high = envs.single_action_space.low, envs.single_action_space.high
    act_dim = low.size
    rng = np.random.default_rng([seed, segment])
    first_seed = seed + 1000 * segment
    obs, _ = envs.reset(seed=[first_seed + i for i in range(n)])
    length = int(quota.max())
    obs_buf = np.empty((length, n, obs.shape[-1]))
    next_buf = np.empty_like(obs_buf)
    act_buf = np.empty((length, n, act_dim), dtype=np.float32)
    rew_buf = np.empty((length, n))
    term_buf = np.empty((length, n), dtype=bool)
    trunc_buf = np.empty((length, n), dtype=bool)
    for t in range(length):
        if policy is None:
            action = (low + (high - low) * rng.random((n, act_dim))).astype(np.float32)
        else:
            noise = sigma * rng.standard_normal((n, act_dim))
            mean = policy.act(torch.as_tensor(obs, dtype=torch.float32)).numpy()
            action = np.clip(mean + noise, low, high).astype(np.float32)
        obs_buf[t] = obs
        obs, reward, term, trunc, info = envs.step(action)
        done = term | trunc
        next_buf[t] = obs
        if done.any():
            next_buf[t, done] = np.stack(info["final_obs"][done])
        act_buf[t], rew_buf[t], term_buf[t], trunc_buf[t] = action, reward, term, trunc
    envs.close()

    episodes: list[tuple[int, int, RolloutEpisode]] = []
    for i in range(n):
        end = int(quota[i])
        trunc_i = trunc_buf[:end, i] & ~term_buf[:end, i]
        trunc_i[end - 1] = not term_buf[end - 1, i]  # the budget cuts the last episode
        stops = np.flatnonzero(term_buf[:end, i] | trunc_i) + 1
        start = 0
        for stop in stops:
            sl = slice(start, stop)
            ep = RolloutEpisode(
                observations=np.concatenate([obs_buf[sl, i], next_buf[stop - 1 : stop, i]]),
                actions=act_buf[sl, i].copy(),
                rewards=rew_buf[sl, i].copy(),
                terminations=term_buf[sl, i].copy(),
                truncations=trunc_i[sl].copy(),
                seed=first_seed + i if start == 0 else None,
            )
            episodes.append((start, i, ep))
            start = stop
    episodes.sort(key=lambda e: (e[0], e[1]))
    return [e for _, _, e in episodes]


def episodes_fingerprint(episodes) -> str:
    """sha256 (hex) over every episode's observations, actions, rewards, terminations and
    truncations, in order, as float64/float32/float64/bool/bool bytes.

    Accepts this module's episodes, Minari ``EpisodeBuffer``s or Minari ``EpisodeData``
    (``minari.load_dataset(...).iterate_episodes()``), so a loaded dataset can be checked
    against the fingerprint in its metadata.
    """
    h = hashlib.sha256()
    for ep in episodes:
        for arr, dtype in (
            (ep.observations, np.float64),
            (ep.actions, np.float32),
            (ep.rewards, np.float64),
            (ep.terminations, np.bool_),
            (ep.truncations, np.bool_),
        ):
            a = np.ascontiguousarray(np.asarray(arr, dtype=dtype))
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------ building


def _read_build_info(dataset_dir: Path) -> dict | None:
    meta = dataset_dir / "data" / "metadata.json"
    if not meta.exists():
        return None
    raw = json.loads(meta.read_text()).get(_BUILD_KEY)
    return json.loads(raw) if raw else None


def _normalized(family: str, value: float) -> float:
    lo, hi = D4RL_REF_SCORES[family]
    return 100.0 * (value - lo) / (hi - lo)


def build_locomotion_dataset(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    num_steps: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    policy_dir: str | os.PathLike | None = None,
    num_envs: int = NUM_ENVS,
) -> Path:
    """Build (or reuse) the Minari dataset of a locomotion task; return its directory.

    Args:
        name: ``"<family>-<quality>-local"``, e.g. ``"walker2d-medium-expert-local"``.
        root: Minari datasets root (default ``$MINARI_DATASETS_PATH``, else
            ``~/.minari/datasets``).
        num_steps: transitions (default 200k; random hopper/walker2d: 50k). ``None`` reuses
            an existing dataset of any size.
        seed: seed of the env resets and of the noise.
        overwrite: rebuild even if a matching dataset exists.
        policy_dir: folder with ``ladder.json`` and the checkpoints (default: the committed
            ``torchrl_aepo/data/checkpoints/<family>``).
        num_envs: envs stepped side by side (part of what makes a build reproducible).

    Returns:
        ``<root>/local/<family>/<quality>-v0``.

    Raises:
        KeyError: unknown task name.
        FileNotFoundError: missing checkpoints (the message says how to train them).
    """
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    family, quality = parse_locomotion_task(name)
    env_id = LOCOMOTION_ENV_IDS[family]
    dataset_id = f"local/{family}/{quality}-v0"
    ladder = load_ladder(family, policy_dir) if quality != "random" else {}
    with minari_root(root) as base:
        path = base / dataset_id
        info = _read_build_info(path)
        if info is not None and not overwrite:
            wanted = {"version": LADDER_VERSION, "seed": seed, "num_envs": num_envs}
            wanted["policies"] = ladder.get("fingerprint")
            if num_steps is not None:
                wanted["num_steps"] = num_steps
            if all(info.get(k) == v for k, v in wanted.items()):
                return path
        steps = num_steps or (
            DEFAULT_RANDOM_STEPS[family] if quality == "random" else DEFAULT_STEPS
        )
        plan = ladder_plan(quality, steps, ladder)
        start = time.perf_counter()
        folder = _ladder_path(family, policy_dir)
        policies = {s.checkpoint: load_policy(folder / s.checkpoint) for s in plan if s.checkpoint}
        episodes: list[RolloutEpisode] = []
        for k, seg in enumerate(plan):
            net = policies[seg.checkpoint][0] if seg.checkpoint else None
            episodes += collect_segment(env_id, net, seg.steps, seg.sigma, seed, k, num_envs)
        fingerprint = episodes_fingerprint(episodes)
        collect_s = time.perf_counter() - start
        returns = np.array([ep.rewards.sum() for ep in episodes])
        buffers = [
            EpisodeBuffer(
                id=j,
                seed=ep.seed,
                observations=ep.observations,
                actions=ep.actions,
                rewards=ep.rewards,
                terminations=ep.terminations,
                truncations=ep.truncations,
                infos={},
            )
            for j, ep in enumerate(episodes)
        ]
        if path.exists():
            shutil.rmtree(path)
        lo, hi = D4RL_REF_SCORES[family]
        segments = [
            {
                "steps": s.steps,
                "checkpoint": s.checkpoint,
                "sigma": s.sigma if s.checkpoint else None,
                "policy_env_steps": policies[s.checkpoint][1].get("env_steps")
                if s.checkpoint
                else None,
                "policy_eval_return": policies[s.checkpoint][1].get("eval_return")
                if s.checkpoint
                else None,
            }
            for s in plan
        ]
        dataset = minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=buffers,
            env=env_id,
            eval_env=env_id,
            algorithm_name=f"SAC (torchrl) checkpoints, {quality}",
            author="torchrl-aepo",
            author_email="torchrl-aepo@localhost",
            code_permalink="torchrl_aepo/data/locomotion.py",
            description=(
                f"D4RL-style {quality} dataset of {env_id} from SAC policies trained with "
                f"TorchRL; reference scores are D4RL's."
            ),
            ref_min_score=lo,
            ref_max_score=hi,
        )
        build = {
            "version": LADDER_VERSION,
            "seed": seed,
            "num_steps": steps,
            "num_envs": num_envs,
            "fingerprint": fingerprint,
            "policies": ladder.get("fingerprint"),
            "segments": segments,
            "behaviour_return_mean": float(returns.mean()),
            "behaviour_return_std": float(returns.std()),
            "behaviour_normalized": _normalized(family, float(returns.mean())),
            "policy_returns": ladder.get("returns", {}),
            "collect_seconds": round(collect_s, 3),
            "build_seconds": round(time.perf_counter() - start, 3),
        }
        dataset.storage.update_metadata({_BUILD_KEY: json.dumps(build)})
    return path


# ------------------------------------------------------------------------- selection


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def select_checkpoints(
    family: str,
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    max_replay: int = 6,
    eval_episodes: int = 10,
    top: int = 3,
) -> dict:
    """Pick the ladder's checkpoints from a training run and copy them to ``out_dir``.

    The expert is the best of the ``top`` checkpoints with the highest logged eval return,
    re-evaluated on ``eval_episodes`` episodes. The medium checkpoint is the one whose logged
    eval return is closest to a third of the expert's, among those up to the expert. The replay sequence is at most
    ``max_replay`` checkpoints evenly spaced in training order, ending at the medium one.
    Writes ``out_dir/ladder.json`` (default ``out_dir``: the committed folder) and returns it.
    """
    from torchrl_aepo.data.policies import evaluate_policy

    run = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else CHECKPOINT_DIR / family
    with open(run / "log.csv") as f:
        rows = [r for r in csv.DictReader(f)]
    if not rows:
        raise ValueError(f"{run / 'log.csv'} has no checkpoints yet")
    env_id = LOCOMOTION_ENV_IDS[family]
    config = json.loads((run / "config.json").read_text())
    by_return = sorted(rows, key=lambda r: -float(r["eval_return"]))[:top]
    evals = {}
    for r in by_return:
        net, _ = load_policy(run / f"step_{r['env_steps']}.pt")
        evals[r["env_steps"]] = evaluate_policy(net, env_id, eval_episodes, seed=20_000)
    expert_row = max(by_return, key=lambda r: evals[r["env_steps"]].mean())
    expert_return = float(evals[expert_row["env_steps"]].mean())
    target = expert_return / 3
    early = rows[: rows.index(expert_row) + 1]  # D4RL: an early-stopped run, not a collapse
    medium_row = min(early, key=lambda r: abs(float(r["eval_return"]) - target))
    medium_idx = rows.index(medium_row)
    idx = np.unique(np.linspace(0, medium_idx, min(max_replay, medium_idx + 1)).round())
    replay_rows = [rows[int(i)] for i in idx]
    med_ret = evaluate_policy(
        load_policy(run / f"step_{medium_row['env_steps']}.pt")[0],
        env_id,
        eval_episodes,
        seed=20_000,
    )

    def name(row):
        return f"step_{row['env_steps']}.pt"

    out.mkdir(parents=True, exist_ok=True)
    keep = {name(r) for r in [*replay_rows, medium_row, expert_row]}
    for old in out.glob("step_*.pt"):
        if old.name not in keep:
            old.unlink()
    for f in keep:
        shutil.copy2(run / f, out / f)
    returns = {}
    for r in rows:
        if name(r) in keep:
            returns[name(r)] = {
                "env_steps": int(r["env_steps"]),
                "eval_return": float(r["eval_return"]),
                "eval_return_std": float(r["eval_return_std"]),
                "normalized": round(_normalized(family, float(r["eval_return"])), 2),
            }
    for row, rets in ((expert_row, evals[expert_row["env_steps"]]), (medium_row, med_ret)):
        returns[name(row)].update(
            reeval_return=round(float(rets.mean()), 2),
            reeval_return_std=round(float(rets.std()), 2),
            reeval_episodes=eval_episodes,
            reeval_normalized=round(_normalized(family, float(rets.mean())), 2),
        )
    last = rows[-1]
    ladder = {
        "env_id": env_id,
        "algorithm": "SAC (torchrl.objectives.SACLoss, Collector, TensorDictReplayBuffer)",
        "medium": name(medium_row),
        "expert": name(expert_row),
        "replay": [name(r) for r in replay_rows],
        "warmup_steps": int(config["warmup_steps"]),
        "medium_env_steps": int(medium_row["env_steps"]),
        "training": {
            "env_steps": int(last["env_steps"]),
            "updates": int(last["updates"]),
            "wall_s": float(last["wall_s"]),
            "config": config,
            "log": [
                {k: r[k] for k in ("env_steps", "wall_s", "eval_return", "eval_return_std")}
                for r in rows
            ],
        },
        "returns": returns,
        "fingerprint": hashlib.sha256(
            "".join(sorted(_file_sha(out / f) for f in keep)).encode()
        ).hexdigest()[:16],
    }
    (out / "ladder.json").write_text(json.dumps(ladder, indent=1) + "\n")
    return ladder


# ------------------------------------------------------------------------ dataset stats


def record_dataset_stats(name: str, dataset_dir: str | os.PathLike) -> Path:
    """Store a built dataset's size and behaviour return in the committed ``ladder.json``
    (``datasets[quality]``), which ``python -m torchrl_aepo.data list`` shows."""
    family, quality = parse_locomotion_task(name)
    import minari

    dataset_dir = Path(dataset_dir)
    info = _read_build_info(dataset_dir)
    with minari_root(dataset_dir.parents[2]):
        ds = minari.load_dataset(f"local/{family}/{quality}-v0")
        episodes, steps = ds.total_episodes, ds.total_steps
    path = CHECKPOINT_DIR / family / "ladder.json"
    ladder = json.loads(path.read_text())
    ladder.setdefault("datasets", {})[quality] = {
        "transitions": int(steps),
        "episodes": int(episodes),
        "return_mean": round(info["behaviour_return_mean"], 1),
        "return_std": round(info["behaviour_return_std"], 1),
        "normalized": round(info["behaviour_normalized"], 1),
        "seed": info["seed"],
        "fingerprint": info["fingerprint"],
        "build_seconds": info["build_seconds"],
    }
    path.write_text(json.dumps(ladder, indent=1) + "\n")
    return path


def behaviour_summary(name: str) -> str:
    """``"return +- std (normalized)"`` of a locomotion task's default dataset, as recorded in
    the committed ``ladder.json``; ``""`` for other tasks or when nothing is recorded."""
    try:
        family, quality = parse_locomotion_task(name)
        stats = load_ladder(family)["datasets"][quality]
    except (KeyError, FileNotFoundError):
        return ""
    return f"{stats['return_mean']:.0f} +- {stats['return_std']:.0f} ({stats['normalized']:.1f})"
