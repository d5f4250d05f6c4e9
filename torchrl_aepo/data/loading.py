"""One entry point from a task name to a TorchRL replay buffer of TED transitions.

:func:`make_offline_data` loads a dataset through TorchRL's dataset classes, preprocesses it
once (float32, reward transform, optional observation normalisation) and returns an in-memory
``TensorDictReplayBuffer`` plus :class:`OfflineMetadata`:

* ``backend="d4rl"``: ``torchrl.data.datasets.D4RLExperienceReplay(direct_download=True)``
  (``d4rl`` is never imported), cached in ``<root or ~/.cache/torchrl/d4rl>/<id>``. Time-out
  transitions (``truncated`` and not ``terminated``, whose next observation D4RL does not
  store) are dropped, as ``d4rl.qlearning_dataset`` does.
* ``backend="minari"``: the Minari HDF5 dataset in the Minari root (``root`` >
  ``$MINARI_DATASETS_PATH`` > ``~/.minari/datasets``) is converted by
  ``torchrl.data.datasets.MinariExperienceReplay(load_from_local_minari=True)`` into a memmap
  cache at ``<minari root>/.torchrl/<id>`` (reused while the HDF5 file is unchanged). A missing
  dataset is first downloaded into the Minari root with ``minari.download_dataset``, which
  keeps the Minari metadata (reference scores, eval env) that TorchRL's own download discards.
* ``backend="local"``: as ``"minari"``, after building the dataset if it is missing
  (:func:`torchrl_aepo.data.builders.build_local_dataset`).

TorchRL 0.14.1's ``MinariExperienceReplay`` writes an all-zero memmap (it calls
``memmap_like`` after filling the data); :class:`PatchedMinariExperienceReplay` fixes that step.

Downloads that cannot happen (no network, hub offline, server error, missing
``huggingface_hub``) raise :class:`DatasetUnavailableError` within seconds, naming the dataset,
the places looked and how to use a local dataset instead.

Example:
    >>> import tempfile
    >>> from torchrl_aepo.data import build_local_dataset
    >>> root = tempfile.mkdtemp()
    >>> _ = build_local_dataset("pendulum-medium", root=root, num_steps=400, ref_episodes=5)
    >>> rb, meta = make_offline_data("pendulum-medium", root=root, batch_size=4)
    >>> rb.sample()["next", "reward"].shape
    torch.Size([4, 1])
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import TensorDictReplayBuffer, TensorStorage
from torchrl.data.datasets import D4RLExperienceReplay, MinariExperienceReplay
from torchrl.data.replay_buffers import ImmutableDatasetWriter, RandomSampler

from torchrl_aepo.atomic import write_json_atomic
from torchrl_aepo.data import preprocessing as pre
from torchrl_aepo.data._minari import hdf5_path, minari_root
from torchrl_aepo.data.tasks import TaskSpec, get_task

__all__ = [
    "DatasetUnavailableError",
    "OfflineMetadata",
    "PatchedMinariExperienceReplay",
    "make_offline_data",
]

_PREFLIGHT_TIMEOUT_S = 5.0
_LOCAL_HINT = (
    "To train without a download, use a locally built dataset, e.g. "
    "task='pendulum-medium-replay' (built on first use; or run "
    "`python -m torchrl_aepo.data build pendulum-medium-replay`), or place the data where it "
    "is looked for (paths above)."
)


class DatasetUnavailableError(RuntimeError):
    """A dataset is neither cached locally nor downloadable right now."""


@dataclass
class OfflineMetadata:
    """What the rest of the pipeline needs to know about a loaded dataset.

    JSON-serialisable (:meth:`to_dict` / :meth:`from_dict`) so it can be stored in checkpoints.

    Attributes:
        task: task name. backend / dataset_id: where the data came from.
        obs_dim / action_dim: feature sizes of ``observation`` / ``action``.
        action_low / action_high: action box, ``[action_dim]`` each.
        eval_env_id / eval_env_kwargs / max_episode_steps: evaluation env
            (``gymnasium.make(eval_env_id, **eval_env_kwargs)``, horizon).
        ref_min_score / ref_max_score: returns mapped to normalized scores 0 and 100.
        num_transitions / num_episodes: dataset size (after dropping time-out transitions).
        return_min / return_max / return_mean: undiscounted episode returns of the dataset,
            before the reward transform.
        reward_transform / reward_scale / reward_shift: the stored rewards are
            ``r * reward_scale + reward_shift``.
        obs_loc / obs_scale: ``[obs_dim]`` observation normalisation, ``None`` if not normalized.
        action_loc / action_scale: ``[action_dim]``: the stored actions are
            ``(a - action_loc) / action_scale`` in ``[-1, 1]``; ``None`` if they are raw.
        observation_keys: for datasets with dict observations, the sub-keys concatenated (in this
            order) into ``observation``; ``None`` for flat observations.
        requires: extra pip packages the eval env needs.
        num_dropped_nonfinite: transitions dropped because a field held NaN/inf
            (``drop_nonfinite=True``; ``num_transitions`` counts the ones kept).
    """

    task: str
    backend: str
    dataset_id: str
    obs_dim: int
    action_dim: int
    action_low: list[float]
    action_high: list[float]
    eval_env_id: str
    eval_env_kwargs: dict[str, Any]
    max_episode_steps: int
    ref_min_score: float | None
    ref_max_score: float | None
    num_transitions: int
    num_episodes: int
    return_min: float
    return_max: float
    return_mean: float
    reward_transform: str
    reward_scale: float
    reward_shift: float
    obs_loc: list[float] | None = None
    obs_scale: list[float] | None = None
    action_loc: list[float] | None = None
    action_scale: list[float] | None = None
    observation_keys: list[str] | None = None
    requires: list[str] = field(default_factory=list)
    num_dropped_nonfinite: int = 0

    @property
    def observations_normalized(self) -> bool:
        """Whether the stored observations were normalized (then so must eval observations be)."""
        return self.obs_loc is not None

    @property
    def actions_normalized(self) -> bool:
        """Whether the stored actions were mapped to ``[-1, 1]`` (then the eval env needs
        :meth:`action_scaling_transform` to map the policy's actions back)."""
        return self.action_loc is not None

    @property
    def policy_action_box(self) -> tuple[list[float], list[float]]:
        """``(low, high)`` of the actions a policy trained on this data outputs."""
        if self.actions_normalized:
            return [-1.0] * self.action_dim, [1.0] * self.action_dim
        return list(self.action_low), list(self.action_high)

    def action_scaling_transform(self):
        """A TorchRL ``ActionScaling`` that maps ``[-1, 1]`` policy actions to the env's box.

        Raises:
            ValueError: if the dataset was loaded with raw actions.
        """
        from torchrl.envs.transforms import ActionScaling

        if not self.actions_normalized:
            raise ValueError(
                f"task {self.task!r} was loaded with raw actions (normalize_actions=False or a "
                "[-1, 1] box); there is no action scaling to apply."
            )
        return ActionScaling()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict of all fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OfflineMetadata:
        """Inverse of :meth:`to_dict`; unknown keys raise a ``ValueError``."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown OfflineMetadata fields: {sorted(unknown)}")
        return cls(**data)

    def observation_norm_transform(self, in_keys: Sequence = ("observation",)):
        """A TorchRL ``ObservationNorm`` that applies the dataset's normalisation to an env.

        Fixed ``loc``/``scale`` and ``standard_normal=True``: ``obs <- (obs - loc) / scale``.
        Append it after ``DoubleToFloat`` (gymnasium MuJoCo observations are float64).

        Raises:
            ValueError: if the dataset was loaded without ``normalize_observations=True``.
        """
        from torchrl.envs import ObservationNorm

        if self.obs_loc is None or self.obs_scale is None:
            raise ValueError(
                f"task {self.task!r} was loaded with normalize_observations=False; there is no "
                "observation normalisation to apply."
            )
        return ObservationNorm(
            loc=torch.tensor(self.obs_loc, dtype=torch.float32),
            scale=torch.tensor(self.obs_scale, dtype=torch.float32),
            in_keys=list(in_keys),
            standard_normal=True,
        )

    def normalized_score(self, returns: float | np.ndarray) -> float | np.ndarray:
        """``100 * (R - ref_min_score) / (ref_max_score - ref_min_score)``."""
        from torchrl_aepo.data.scores import normalized_score

        return normalized_score(self, returns)


# --------------------------------------------------------------------------------------
# TorchRL MinariExperienceReplay fix


@contextlib.contextmanager
def _memmap_like_writes_data() -> Iterator[None]:
    """Make ``TensorDict.memmap_like`` copy the data (as ``memmap`` does) inside the block.

    torchrl 0.14.1 fills an in-memory TensorDict with the whole dataset and then calls
    ``memmap_like`` on it, which allocates an empty (zero) memmap. Copying instead is correct
    both for that order and for the older fill-after-``memmap_like`` order. The patch is
    process-wide while the block runs (not thread-safe).
    """
    had_own = "memmap_like" in TensorDict.__dict__
    original = TensorDict.__dict__.get("memmap_like")

    def memmap_like(self, prefix=None, copy_existing=False, *, existsok=True, num_threads=0, **_):
        return self.memmap(
            prefix, copy_existing=copy_existing, num_threads=num_threads, existsok=existsok
        )

    TensorDict.memmap_like = memmap_like
    try:
        yield
    finally:
        if had_own:
            TensorDict.memmap_like = original
        else:
            del TensorDict.memmap_like


class PatchedMinariExperienceReplay(MinariExperienceReplay):
    """``MinariExperienceReplay`` whose conversion writes the actual data to its memmap.

    Only the conversion step (``_download_and_preproc``) differs: it runs under
    :func:`_memmap_like_writes_data` (without TorchRL's per-episode progress bar) and then
    checks the result is not blank. Loading an existing memmap (``download=False``) is
    unchanged, so the plain class can do that.
    """

    def _download_and_preproc(self):
        from torchrl.data.datasets import minari_data

        had_tqdm = getattr(minari_data, "_has_tqdm", False)
        minari_data._has_tqdm = False
        try:
            with _memmap_like_writes_data():
                data = super()._download_and_preproc()
        finally:
            minari_data._has_tqdm = had_tqdm
        if len(data) and not bool(data.get(("next", "done")).any()):
            raise RuntimeError(
                f"converted Minari dataset {self.dataset_id!r} has no episode end: the TorchRL "
                "conversion changed; check torchrl_aepo.data.loading._memmap_like_writes_data."
            )
        return data


@contextlib.contextmanager
def _quiet_torchrl() -> Iterator[None]:
    """Silence TorchRL's INFO logging (it prints the whole TensorDict structure) in the block."""
    log = logging.getLogger("torchrl")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


# --------------------------------------------------------------------------------------
# Backends: each returns (raw TED TensorDict in memory, dict of metadata overrides)


def _unavailable(spec: TaskSpec, looked: list[str], cause: str) -> DatasetUnavailableError:
    lines = [
        f"Dataset {spec.dataset_id!r} (task {spec.name!r}, backend {spec.backend!r}) is not "
        f"available: {cause}",
        "Looked in:",
        *(f"  - {place}" for place in looked),
        _LOCAL_HINT,
    ]
    if spec.alternative:
        lines.append(f"The same data is also published as task {spec.alternative!r}.")
    return DatasetUnavailableError("\n".join(lines))


def _preflight(url: str) -> str | None:
    """``None`` if ``url``'s server answers within a few seconds, else the reason.

    Uses urllib, so it honours ``http(s)_proxy``; an HTTP error status still means reachable
    unless it is a server error (5xx).
    """
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=_PREFLIGHT_TIMEOUT_S):
            return None
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code} from {url}" if err.code >= 500 else None
    except (urllib.error.URLError, OSError) as err:
        return f"{url} is unreachable ({type(err).__name__}: {getattr(err, 'reason', err)})"


def _load_d4rl(spec: TaskSpec, root: str | os.PathLike | None):
    from torchrl.data.datasets.d4rl_infos import D4RL_DATASETS

    cache = Path(root).expanduser() if root else Path("~/.cache/torchrl/d4rl").expanduser()
    cached = cache / spec.dataset_id
    url = D4RL_DATASETS.get(spec.dataset_id)
    if url is None:
        raise ValueError(f"{spec.dataset_id!r} is not a D4RL dataset known to torchrl")
    looked = [f"{cached} (torchrl D4RL cache): not found", url]
    if not cached.exists():
        reason = _preflight(url)
        if reason is not None:
            raise _unavailable(spec, looked, reason)
    try:
        with _quiet_torchrl():
            rb = D4RLExperienceReplay(
                spec.dataset_id,
                batch_size=1,
                root=cache,
                direct_download=True,
                use_truncated_as_done=False,
                download=True,
            )
    except (urllib.error.URLError, OSError) as err:
        raise _unavailable(spec, looked, f"download failed ({err})") from err
    data = rb[:]
    terminated = data.get(("next", "terminated")).reshape(-1).bool()
    if ("next", "truncated") in data.keys(True):
        truncated = data.get(("next", "truncated")).reshape(-1).bool()
        data = data[~(truncated & ~terminated)]  # time-outs: next observation unknown
    td = _ted(
        observation=data.get("observation"),
        action=data.get("action"),
        next_observation=data.get(("next", "observation")),
        reward=data.get(("next", "reward")),
        terminated=data.get(("next", "terminated")),
        truncated=None,
        episode=None,
    )
    bound = [1.0] * td["action"].shape[-1]  # every D4RL task has actions in [-1, 1]
    return td, {"action_low": [-b for b in bound], "action_high": bound}


def _minari_cache_is_fresh(h5: Path, stamp: Path, memmap: Path) -> bool:
    if not (stamp.exists() and memmap.exists()):
        return False
    st = h5.stat()
    try:
        saved = json.loads(stamp.read_text())
    except (OSError, ValueError):  # a damaged stamp: convert the HDF5 file again
        return False
    return saved == {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _download_minari(spec: TaskSpec, base: Path, looked: list[str]) -> None:
    import minari

    remote = os.environ.get("MINARI_REMOTE", "hf://farama-minari")
    looked.append(f"Minari remote {remote}")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        raise _unavailable(spec, looked, "HF_HUB_OFFLINE is set, so nothing can be downloaded")
    hub = remote.startswith("hf://")
    if hub:
        url = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    else:
        url = "https://storage.googleapis.com"
    try:
        import huggingface_hub  # noqa: F401

        missing_hub = False
    except ImportError:
        missing_hub = hub
    # The network first: without it, installing huggingface_hub would not help.
    reason = _preflight(url)
    if reason is not None:
        also = " (and `huggingface_hub`, needed for the download, is not installed)"
        raise _unavailable(
            spec,
            looked,
            f"no network connection to the Minari remote: {reason}{also * missing_hub}",
        )
    if missing_hub:
        raise _unavailable(
            spec, looked, "downloading Minari datasets needs `pip install huggingface_hub`"
        )
    try:
        minari.download_dataset(spec.dataset_id)
    except Exception as err:  # network/hub/version errors of any library along the way
        raise _unavailable(spec, looked, f"download failed ({type(err).__name__}: {err})") from err
    if not hdf5_path(base, spec.dataset_id).exists():
        raise _unavailable(spec, looked, "the downloaded dataset is not in HDF5 format")


def _load_minari(spec: TaskSpec, root: str | os.PathLike | None, build_if_missing: bool):
    import minari

    from torchrl_aepo.data.builders import build_local_dataset

    with minari_root(root) as base:
        h5 = hdf5_path(base, spec.dataset_id)
        looked = [f"{h5} (Minari HDF5): not found"]
        if not h5.exists():
            if spec.backend == "local":
                if not build_if_missing:
                    raise _unavailable(spec, looked, "not built yet and build_if_missing=False")
                build_local_dataset(spec.name, root=base)
            else:
                _download_minari(spec, base, looked)
        cache_root = base / ".torchrl"
        memmap = cache_root / spec.dataset_id
        stamp = cache_root / f"{spec.dataset_id}.source.json"
        with _quiet_torchrl():
            if _minari_cache_is_fresh(h5, stamp, memmap):
                rb = MinariExperienceReplay(
                    spec.dataset_id, batch_size=1, root=cache_root, download=False
                )
            else:
                shutil.rmtree(memmap, ignore_errors=True)
                rb = PatchedMinariExperienceReplay(
                    spec.dataset_id, batch_size=1, root=cache_root, load_from_local_minari=True
                )
                st = h5.stat()
                write_json_atomic(stamp, {"size": st.st_size, "mtime_ns": st.st_mtime_ns})
        meta = minari.load_dataset(spec.dataset_id).storage.metadata
    data = rb[:]
    obs, next_obs, obs_keys = _flat_observation(data)
    td = _ted(
        observation=obs,
        action=data.get("action"),
        next_observation=next_obs,
        reward=data.get(("next", "reward")),
        terminated=data.get(("next", "terminated")),
        truncated=data.get(("next", "truncated")),
        episode=data.get("episode"),
    )
    return td, _minari_overrides(meta, obs_keys)


def _flat_observation(data: TensorDictBase):
    """``observation`` as a tensor; dict observations are concatenated in sorted key order (as
    ``gymnasium.wrappers.FlattenObservation`` does for a ``Dict`` space)."""
    obs = data.get("observation")
    if isinstance(obs, torch.Tensor):
        return obs, data.get(("next", "observation")), None
    keys = sorted(obs.keys())
    nxt = data.get(("next", "observation"))

    def cat(td):
        return torch.cat([td.get(k).reshape(len(td), -1).to(torch.float32) for k in keys], -1)

    return cat(obs), cat(nxt), keys


def _minari_overrides(meta: dict, obs_keys: list[str] | None) -> dict[str, Any]:
    from gymnasium.envs.registration import EnvSpec

    space = meta["action_space"]
    out: dict[str, Any] = {
        "action_low": np.broadcast_to(space.low, space.shape).astype(float).tolist(),
        "action_high": np.broadcast_to(space.high, space.shape).astype(float).tolist(),
        "observation_keys": obs_keys,
        "ref_min_score": meta.get("ref_min_score"),
        "ref_max_score": meta.get("ref_max_score"),
    }
    env_json = meta.get("eval_env_spec") or meta.get("env_spec")
    if env_json:
        env_spec = EnvSpec.from_json(env_json)
        out["eval_env_id"] = env_spec.id
        out["eval_env_kwargs"] = dict(env_spec.kwargs)
        if env_spec.max_episode_steps:
            out["max_episode_steps"] = int(env_spec.max_episode_steps)
    return out


def _ted(*, observation, action, next_observation, reward, terminated, truncated, episode):
    """Fresh in-memory TED TensorDict: floats as float32, flags as ``[N, 1]`` bool."""
    n = observation.shape[0]

    def flag(x):
        if x is None:
            return torch.zeros(n, 1, dtype=torch.bool)
        return torch.as_tensor(x).reshape(n, 1).to(torch.bool, copy=True)

    def f32(x, width=None):
        x = torch.as_tensor(x).to(torch.float32, copy=True)
        return x.reshape(n, -1) if width is None else x.reshape(n, width)

    terminated, truncated = flag(terminated), flag(truncated)
    td = TensorDict(
        {
            "observation": f32(observation),
            "action": f32(action),
            "next": {
                "observation": f32(next_observation),
                "reward": f32(reward, 1),
                "terminated": terminated,
                "truncated": truncated,
                "done": terminated | truncated,
            },
        },
        batch_size=[n],
    )
    if episode is None:
        episode = pre.episode_ids_from_dones(td)
    td.set("episode", torch.as_tensor(episode).reshape(n).to(torch.int64, copy=True))
    return td


# --------------------------------------------------------------------------------------


def make_offline_data(
    task: str | TaskSpec,
    *,
    batch_size: int = 256,
    root: str | os.PathLike | None = None,
    build_if_missing: bool = True,
    normalize_observations: bool = False,
    normalize_actions: bool = False,
    reward_transform: str | None = None,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    drop_nonfinite: bool = False,
) -> tuple[TensorDictReplayBuffer, OfflineMetadata]:
    """Load an offline dataset as an in-memory TorchRL replay buffer of TED transitions.

    Args:
        task: task name (see :data:`~torchrl_aepo.data.TASKS`), a Minari id, or a
            :class:`TaskSpec`.
        batch_size: transitions per ``rb.sample()``.
        root: data root. Minari/local backends: the Minari datasets root (default
            ``$MINARI_DATASETS_PATH``, else ``~/.minari/datasets``); d4rl backend: torchrl's
            D4RL cache (default ``~/.cache/torchrl/d4rl``).
        build_if_missing: build a missing local dataset (default size) instead of raising.
        normalize_observations: store ``(obs - loc) / scale`` with dataset statistics
            (``metadata.obs_loc``/``obs_scale``; apply ``metadata.observation_norm_transform()``
            to the eval env).
        normalize_actions: when the dataset's action box is not ``[-1, 1]``, store actions
            mapped onto it (``metadata.action_loc``/``action_scale``; apply
            ``metadata.action_scaling_transform()`` to the eval env). The diffusion prior and
            the posterior-mean clip of AEPO assume ``[-1, 1]`` (D4RL's convention).
        reward_transform: ``"iql_locomotion"``, ``"antmaze"`` or ``"none"``; ``None`` uses the
            task's default.
        device: device of the storage (and of the sampled batches).
        seed: seed of the sampler's random generator (``None``: torch's global generator).
        drop_nonfinite: every floating field (observations, actions, next observations,
            rewards) must be finite. ``False`` (default): a NaN/inf raises
            :class:`~torchrl_aepo.data.preprocessing.NonFiniteDataError` naming the field, the
            count and the first bad episode/step. ``True``: the affected transitions are
            dropped, with a warning saying how many (``metadata.num_dropped_nonfinite``).

    Returns:
        ``(rb, metadata)``. ``rb.sample()`` returns ``batch_size`` transitions:
        ``observation [B, obs_dim]``, ``action [B, act_dim]``, ``("next", "observation")``,
        ``("next", "reward") [B, 1]`` (float32), ``("next", "terminated"|"truncated"|"done")
        [B, 1]`` (bool), ``episode [B]`` and ``index [B]`` (int64). Use ``terminated`` (never
        ``done``) to mask bootstrapping.

    Raises:
        DatasetUnavailableError: the data is not cached and cannot be downloaded/built.
        UnknownTaskError: unknown task name (lists close names).
        NonFiniteDataError: NaN/inf in the data and ``drop_nonfinite=False`` (a ``ValueError``).
        ValueError: a reward transform that cannot apply to the data (e.g. equal returns).

    Example:
        >>> import tempfile
        >>> from torchrl_aepo.data import build_local_dataset
        >>> root = tempfile.mkdtemp()
        >>> _ = build_local_dataset("pendulum-random", root=root, num_steps=400, ref_episodes=5)
        >>> rb, meta = make_offline_data("pendulum-random", root=root, batch_size=8, seed=0)
        >>> rb.sample()["observation"].shape, meta.obs_dim, meta.num_episodes
        (torch.Size([8, 3]), 3, 2)
    """
    spec = get_task(task) if isinstance(task, str) else task
    if spec.backend == "d4rl":
        td, overrides = _load_d4rl(spec, root)
    elif spec.backend in ("minari", "local"):
        td, overrides = _load_minari(spec, root, build_if_missing)
    else:
        raise ValueError(f"unknown backend {spec.backend!r} of task {spec.name!r}")

    source = f"dataset {spec.dataset_id!r} (task {spec.name!r})"
    td, report = pre.check_finite(td, drop=drop_nonfinite, source=source)
    if report.num_dropped:
        warnings.warn(
            f"{source}: dropped {report.num_dropped} of {report.num_transitions} transitions "
            f"with NaN/inf values (drop_nonfinite=True):\n{report.describe()}",
            stacklevel=2,
        )
    returns = pre.episode_returns(td)
    kind = spec.reward_transform if reward_transform is None else reward_transform
    scale, shift = pre.reward_transform_params(kind, returns)
    pre.apply_reward_transform(td, scale, shift)
    loc = obs_scale = None
    if normalize_observations:
        loc, obs_scale = pre.observation_stats(td.get("observation"))
        pre.normalize_observations(td, loc, obs_scale)
    action_loc = action_scale = None
    action_low, action_high = overrides.get("action_low"), overrides.get("action_high")
    if normalize_actions and not pre.is_unit_box(action_low, action_high):
        action_loc, action_scale = pre.action_box(action_low, action_high)
        pre.normalize_actions(td, action_loc, action_scale)

    info: dict[str, Any] = {
        "eval_env_id": spec.eval_env_id,
        "eval_env_kwargs": dict(spec.eval_env_kwargs),
        "max_episode_steps": spec.max_episode_steps,
        "ref_min_score": spec.ref_min_score,
        "ref_max_score": spec.ref_max_score,
        "observation_keys": None,
    }
    info.update({k: v for k, v in overrides.items() if v is not None})
    metadata = OfflineMetadata(
        task=spec.name,
        backend=spec.backend,
        dataset_id=spec.dataset_id,
        obs_dim=int(td.get("observation").shape[-1]),
        action_dim=int(td.get("action").shape[-1]),
        num_transitions=len(td),
        num_episodes=int(returns.numel()),
        return_min=float(returns.min()),
        return_max=float(returns.max()),
        return_mean=float(returns.mean()),
        reward_transform=kind,
        reward_scale=scale,
        reward_shift=shift,
        obs_loc=None if loc is None else loc.tolist(),
        obs_scale=None if obs_scale is None else obs_scale.tolist(),
        action_loc=None if action_loc is None else action_loc.tolist(),
        action_scale=None if action_scale is None else action_scale.tolist(),
        requires=list(spec.requires),
        num_dropped_nonfinite=report.num_dropped,
        **info,
    )
    device = torch.device(device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    rb = TensorDictReplayBuffer(
        storage=TensorStorage(td.to(device)),
        sampler=RandomSampler(),
        writer=ImmutableDatasetWriter(),
        batch_size=batch_size,
        generator=generator,
    )
    return rb, metadata
