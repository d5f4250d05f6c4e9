"""Task table: which dataset to load, which env to evaluate on, how to preprocess.

Three kinds of tasks live in :data:`TASKS`:

* the 33 tasks of the AEPO paper under their D4RL names (``backend="d4rl"``), loaded through
  ``torchrl.data.datasets.D4RLExperienceReplay(direct_download=True)``: 9 Gym-MuJoCo v2,
  6 maze2d v1, 6 antmaze v2, 12 adroit v1. Reference scores are D4RL's own (hard-coded below);
* their Minari counterparts (``backend="minari"``), named by their Minari id
  (``"D4RL/antmaze/umaze-v1"``, ``"mujoco/hopper/medium-v0"``, ...). Reference scores and the
  exact eval env come from the dataset's Minari metadata when it is loaded;
* locally built datasets (``backend="local"``) from scripted experts on real gymnasium envs
  (see :mod:`torchrl_aepo.data.builders`), e.g. ``"pendulum-medium-replay"``.

D4RL v2 locomotion data was collected on mujoco-py ``-v3`` envs; we evaluate on gymnasium
``-v4`` (same model XML, no mujoco-py). Maze, antmaze and adroit eval envs are the
gymnasium-robotics ports (optional extra ``gymnasium-robotics``); their observation layout
can differ from the D4RL files (e.g. goal-conditioned dict observations), which the evaluation
code must adapt. The Minari ports of these datasets were recorded on those gymnasium-robotics
envs, so they are the consistent choice when a D4RL file is not required.

Example:
    >>> from torchrl_aepo.data import get_task
    >>> spec = get_task("hopper-medium-v2")
    >>> spec.eval_env_id, spec.reward_transform, spec.ref_max_score
    ('Hopper-v4', 'iql_locomotion', 3234.3)
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Literal

from torchrl_aepo.data.builders import LOCAL_FAMILIES, QUALITIES, local_dataset_id

__all__ = [
    "PAPER_TASKS",
    "QUALITIES",
    "TASKS",
    "TaskSpec",
    "UnknownTaskError",
    "get_task",
    "import_eval_requirements",
    "list_tasks",
]

Backend = Literal["d4rl", "minari", "local"]
RewardTransform = Literal["iql_locomotion", "antmaze", "none"]


_ROBOTICS = ("gymnasium-robotics",)
# pip name -> import name, for packages whose import registers gymnasium envs.
_IMPORT_NAMES = {"gymnasium-robotics": "gymnasium_robotics"}
_EXTRAS = {"gymnasium-robotics": "robotics"}


class UnknownTaskError(KeyError):
    """Raised by :func:`get_task` for a name that is not a known task (lists close names)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


@dataclass(frozen=True)
class TaskSpec:
    """Everything needed to load one offline dataset and evaluate a policy trained on it.

    Attributes:
        name: task name used in configs (``"hopper-medium-v2"``, ``"pendulum-medium-replay"``).
        backend: ``"d4rl"`` (torchrl direct download), ``"minari"`` (Minari id, local cache or
            remote hub) or ``"local"`` (built here from a scripted expert).
        dataset_id: id passed to the backend (D4RL name or Minari id).
        eval_env_id: gymnasium id of the evaluation env.
        eval_env_kwargs: keyword arguments for ``gymnasium.make(eval_env_id, **kwargs)``.
        reward_transform: default reward preprocessing (``"iql_locomotion"``: ``r * 1000 /
            (max_return - min_return)``; ``"antmaze"``: ``r - 1``; ``"none"``).
        max_episode_steps: evaluation horizon.
        ref_min_score: return of a random policy (normalized score 0); ``None`` when it comes
            from the Minari metadata at load time.
        ref_max_score: return of the reference expert (normalized score 100); may be ``None``.
        requires: extra pip packages the eval env needs (the dataset itself never does).
        family: task family (``"locomotion"``, ``"maze2d"``, ``"antmaze"``, ``"adroit"``,
            ``"pendulum"``, ...).
        quality: dataset quality (``"medium-replay"``, ``"human"``, ...).
        alternative: name of a task with the same data from another backend (e.g. the Minari
            port of a D4RL task), suggested when the primary backend is unavailable.
        notes: caveats shown by ``python -m torchrl_aepo.data list --verbose``.
    """

    name: str
    backend: Backend
    dataset_id: str
    eval_env_id: str
    eval_env_kwargs: dict[str, Any] = field(default_factory=dict)
    reward_transform: RewardTransform = "none"
    max_episode_steps: int = 1000
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    requires: tuple[str, ...] = ()
    family: str = ""
    quality: str = ""
    alternative: str | None = None
    notes: str = ""


# D4RL reference returns (random policy, expert policy), identical across dataset qualities
# and versions of one env (d4rl/infos.py and the env registrations in d4rl/*/__init__.py).
_D4RL_REF: dict[str, tuple[float, float]] = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "maze2d-umaze": (23.85, 161.86),
    "maze2d-medium": (13.13, 277.39),
    "maze2d-large": (6.7, 273.99),
    "maze2d-umaze-dense": (68.537689, 193.66285642381482),
    "maze2d-medium-dense": (44.264742, 297.4552547777125),
    "maze2d-large-dense": (30.569041, 303.4857382709002),
    "antmaze": (0.0, 1.0),
    "pen": (96.262799, 3076.8331017826877),
    "hammer": (-274.856578, 12794.134825156867),
    "door": (-56.512833, 2880.5693087298737),
    "relocate": (-6.425911, 4233.877797728884),
}

_LOCOMOTION_ENVS = {"halfcheetah": "HalfCheetah", "hopper": "Hopper", "walker2d": "Walker2d"}
_MAZE_SIZES = {"umaze": ("UMaze", 300), "medium": ("Medium", 600), "large": ("Large", 800)}
# D4RL's antmaze evaluation mazes (U_MAZE_TEST, BIG_MAZE_TEST, HARDEST_MAZE_TEST): fixed
# start "r" and goal "g", in gymnasium-robotics' maze_map notation (same 4.0 cell size).
_R, _G = "r", "g"
_ANTMAZE_MAPS = {
    "umaze": [
        [1, 1, 1, 1, 1],
        [1, _R, 0, 0, 1],
        [1, 1, 1, 0, 1],
        [1, _G, 0, 0, 1],
        [1, 1, 1, 1, 1],
    ],
    "medium": [
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, _R, 0, 1, 1, 0, 0, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 1, 0, 0, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 0, 0, 1, 0, 1],
        [1, 0, 0, 0, 1, 0, _G, 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ],
    "large": [
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, _R, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1],
        [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1],
        [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1, 0, _G, 0, 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    ],
}
_ANTMAZE = {
    # D4RL name: (gymnasium-robotics env, maze, horizon)
    "umaze": ("UMaze", "umaze", 700),
    "umaze-diverse": ("UMaze", "umaze", 700),
    "medium-play": ("Medium", "medium", 1000),
    "medium-diverse": ("Medium", "medium", 1000),
    "large-play": ("Large", "large", 1000),
    "large-diverse": ("Large", "large", 1000),
}
_ADROIT = {
    "pen": ("Pen", 100),
    "hammer": ("Hammer", 200),
    "door": ("Door", 200),
    "relocate": ("Relocate", 200),
}
_MAZE_EVAL_KWARGS = {"continuing_task": True, "reset_target": False}


def _d4rl_and_minari(
    d4rl_name: str, minari_name: str, ref: tuple[float, float], notes: str = "", **common: Any
) -> list[TaskSpec]:
    """A paper task under its D4RL name and its Minari port (same data, same eval env).

    The D4RL entry carries D4RL's reference scores and names the port as its alternative;
    the Minari entry takes its reference scores from the dataset's metadata at load time.
    """
    return [
        TaskSpec(
            name=d4rl_name,
            backend="d4rl",
            dataset_id=d4rl_name,
            ref_min_score=ref[0],
            ref_max_score=ref[1],
            alternative=minari_name,
            notes=notes,
            **common,
        ),
        TaskSpec(name=minari_name, backend="minari", dataset_id=minari_name, **common),
    ]


def _locomotion_tasks() -> list[TaskSpec]:
    # D4RL v2 (mujoco-py -v3 data, evaluated on -v4) and Minari's re-collection on -v5: not
    # the same data, so not each other's alternative.
    tasks = []
    for env, gym_name in _LOCOMOTION_ENVS.items():
        lo, hi = _D4RL_REF[env]
        for backend, qualities, name, version, notes in (
            ("d4rl", ("medium", "medium-replay", "medium-expert"), "{env}-{q}-v2", "v4",
             "D4RL v2 data came from mujoco-py -v3 envs; -v4 has the same XML."),
            ("minari", ("simple", "medium", "expert"), "mujoco/{env}/{q}-v0", "v5",
             "Minari re-collection on gymnasium v5 envs; not D4RL v2 data."),
        ):  # fmt: skip
            for quality in qualities:
                task = name.format(env=env, q=quality)
                tasks.append(
                    TaskSpec(
                        name=task,
                        backend=backend,
                        dataset_id=task,
                        eval_env_id=f"{gym_name}-{version}",
                        reward_transform="iql_locomotion",
                        ref_min_score=lo if backend == "d4rl" else None,
                        ref_max_score=hi if backend == "d4rl" else None,
                        family="locomotion",
                        quality=quality,
                        notes=notes,
                    )
                )
    return tasks


def _maze2d_tasks() -> list[TaskSpec]:
    tasks = []
    for size, (maze, horizon) in _MAZE_SIZES.items():
        for dense in (False, True):
            suffix = "-dense" if dense else ""
            tasks += _d4rl_and_minari(
                f"maze2d-{size}{suffix}-v1",
                f"D4RL/pointmaze/{size}{suffix}-v2",
                _D4RL_REF[f"maze2d-{size}{suffix}"],
                notes="PointMaze observations are dicts (observation, desired_goal, ...).",
                eval_env_id=f"PointMaze_{maze}{'Dense' if dense else ''}-v3",
                eval_env_kwargs=dict(_MAZE_EVAL_KWARGS),
                max_episode_steps=horizon,
                requires=_ROBOTICS,
                family="maze2d",
                quality="dense" if dense else "sparse",
            )
    return tasks


def _antmaze_tasks() -> list[TaskSpec]:
    tasks = []
    for quality, (env, maze, horizon) in _ANTMAZE.items():
        tasks += _d4rl_and_minari(
            f"antmaze-{quality}-v2",
            f"D4RL/antmaze/{quality}-v1",
            _D4RL_REF["antmaze"],
            notes="Eval maze = D4RL's test maze (fixed start/goal); gymnasium-robotics "
            "observations are (observation, achieved_goal, desired_goal) dicts.",
            eval_env_id=f"AntMaze_{env}-v4",
            eval_env_kwargs={"maze_map": _ANTMAZE_MAPS[maze], **_MAZE_EVAL_KWARGS},
            reward_transform="antmaze",
            max_episode_steps=horizon,
            requires=_ROBOTICS,
            family="antmaze",
            quality=quality,
        )
    return tasks


def _adroit_tasks() -> list[TaskSpec]:
    tasks = []
    for hand, (gym_name, horizon) in _ADROIT.items():
        for quality in ("human", "cloned", "expert"):
            tasks += _d4rl_and_minari(
                f"{hand}-{quality}-v1",
                f"D4RL/{hand}/{quality}-v2",
                _D4RL_REF[hand],
                eval_env_id=f"AdroitHand{gym_name}-v1",
                max_episode_steps=horizon,
                requires=_ROBOTICS,
                family="adroit",
                quality=quality,
            )
    return tasks


def _local_tasks() -> list[TaskSpec]:
    return [
        TaskSpec(
            name=f"{family.name}-{quality}",
            backend="local",
            dataset_id=local_dataset_id(family.name, quality),
            eval_env_id=family.env_id,
            reward_transform="iql_locomotion",
            max_episode_steps=family.max_episode_steps,
            family=family.name,
            quality=quality,
            notes=family.description,
        )
        for family in LOCAL_FAMILIES.values()
        for quality in QUALITIES
    ]


def _local_locomotion_tasks() -> list[TaskSpec]:
    # The D4RL ladder on gymnasium v5 envs, built from committed SAC checkpoints
    # (torchrl_aepo.data.locomotion); D4RL's reference scores.
    tasks = []
    for env, gym_name in _LOCOMOTION_ENVS.items():
        lo, hi = _D4RL_REF[env]
        for quality in QUALITIES:
            tasks.append(
                TaskSpec(
                    name=f"{env}-{quality}-local",
                    backend="local",
                    dataset_id=f"local/{env}/{quality}-v0",
                    eval_env_id=f"{gym_name}-v5",
                    reward_transform="iql_locomotion",
                    max_episode_steps=1000,
                    ref_min_score=lo,
                    ref_max_score=hi,
                    family=env,
                    quality=quality,
                    notes=f"{gym_name}-v5, SAC policies trained here with TorchRL; D4RL-style "
                    "ladder, falls terminate, 1000-step time-outs.",
                )
            )
    return tasks


def _build_table() -> dict[str, TaskSpec]:
    table: dict[str, TaskSpec] = {}
    specs = [*_locomotion_tasks(), *_maze2d_tasks(), *_antmaze_tasks(), *_adroit_tasks()]
    order = {"d4rl": 0, "minari": 1}  # the paper's tasks first, in the paper's order
    for spec in (*sorted(specs, key=lambda s: order[s.backend]), *_local_tasks(),
                 *_local_locomotion_tasks()):  # fmt: skip
        if spec.name in table:
            raise RuntimeError(f"duplicate task name {spec.name!r} in the task table")
        table[spec.name] = spec
    return table


#: All known tasks by name: 33 paper tasks (D4RL), their Minari counterparts, local tasks.
TASKS: dict[str, TaskSpec] = _build_table()

#: The 33 tasks of the AEPO paper, in the paper's order.
PAPER_TASKS: tuple[str, ...] = tuple(name for name, s in TASKS.items() if s.backend == "d4rl")


def get_task(name: str) -> TaskSpec:
    """Return the :class:`TaskSpec` registered under ``name``.

    Any Minari id that is not in the table (``"namespace/env/name-vN"``) is accepted too and
    gets a generic spec whose eval env and reference scores come from the Minari metadata.

    Raises:
        UnknownTaskError: (a ``KeyError``) for an unknown name; the message lists the closest
            known names.

    Example:
        >>> get_task("pendulum-medium-replay").backend
        'local'
    """
    if isinstance(name, TaskSpec):
        return name
    try:
        return TASKS[name]
    except KeyError:
        pass
    if name.count("/") >= 1 and "-v" in name.rsplit("/", 1)[-1]:
        return TaskSpec(name=name, backend="minari", dataset_id=name, eval_env_id="")
    close = difflib.get_close_matches(name, list(TASKS), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownTaskError(
        f"Unknown task {name!r}.{hint} Run `python -m torchrl_aepo.data list` for all "
        f"{len(TASKS)} tasks, or pass a Minari id such as 'D4RL/door/human-v2'."
    )


def list_tasks(backend: str | None = None, family: str | None = None) -> list[str]:
    """Names of the known tasks, optionally filtered by backend and/or family.

    Example:
        >>> len(list_tasks(backend="d4rl"))
        33
    """
    return [
        name
        for name, spec in TASKS.items()
        if (backend is None or spec.backend == backend)
        and (family is None or spec.family == family)
    ]


def import_eval_requirements(task: Any) -> None:
    """Import the extra packages a task's eval env needs, which registers it with gymnasium.

    Call before ``gymnasium.make(spec.eval_env_id)``: gymnasium-robotics envs (maze, antmaze,
    adroit) exist only after ``import gymnasium_robotics``.

    Args:
        task: task name, :class:`TaskSpec`, or anything with a ``requires`` attribute (such as
            ``OfflineMetadata``).

    Raises:
        ImportError: a required package is missing; the message says what to install.

    Example:
        >>> import_eval_requirements("pendulum-medium")  # nothing extra needed
    """
    import importlib

    requires = get_task(task).requires if isinstance(task, str) else task.requires
    name = getattr(task, "name", None) or getattr(task, "task", task)
    for package in requires:
        try:
            importlib.import_module(_IMPORT_NAMES.get(package, package.replace("-", "_")))
        except ImportError as err:
            extra = _EXTRAS.get(package)
            hint = f"pip install 'torchrl-aepo[{extra}]' or " if extra else ""
            raise ImportError(
                f"the eval env of task {name!r} needs the package {package!r}: "
                f"{hint}pip install {package}"
            ) from err
