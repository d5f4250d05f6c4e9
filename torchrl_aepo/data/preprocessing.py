"""Dataset preprocessing, applied once to the whole storage (never per batch).

All functions take and return TED-format TensorDicts with batch size ``[N]``:
``observation [N, obs_dim]``, ``action [N, act_dim]``, ``("next", "observation")``,
``("next", "reward") [N, 1]``, ``("next", "terminated"|"truncated"|"done") [N, 1]`` and
``episode [N]`` (int64 episode index).

* Reward transforms (:func:`reward_transform_params`), as in IQL / QGPO:
  ``"iql_locomotion"``: ``r <- r * 1000 / (max_return - min_return)`` where the returns are the
  undiscounted returns of the dataset's episodes; ``"antmaze"``: ``r <- r - 1``;
  ``"none"``: unchanged. Each is ``r <- r * scale + shift``.
* Observation normalisation (:func:`observation_stats`): ``loc = mean``,
  ``scale = std + eps`` (``eps = 1e-3``, population std) over the dataset's observations; the same
  ``(obs - loc) / scale`` is applied to ``observation`` and ``("next", "observation")`` here, and
  to eval observations by ``torchrl.envs.ObservationNorm(loc, scale, standard_normal=True)``.

Example:
    >>> import torch
    >>> from tensordict import TensorDict
    >>> td = TensorDict({"episode": torch.tensor([0, 0, 1]),
    ...                  "next": {"reward": torch.tensor([[1.0], [2.0], [-1.0]])}}, [3])
    >>> episode_returns(td)
    tensor([ 3., -1.], dtype=torch.float64)
    >>> reward_transform_params("iql_locomotion", episode_returns(td))
    (250.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase

__all__ = [
    "OBS_NORM_EPS",
    "REWARD_TRANSFORMS",
    "apply_reward_transform",
    "episode_ids_from_dones",
    "episode_returns",
    "normalize_observations",
    "observation_stats",
    "reward_transform_params",
]

#: Added to the per-dimension std of the observations (avoids blowing up constant dimensions).
OBS_NORM_EPS = 1e-3
#: Known reward transforms.
REWARD_TRANSFORMS = ("iql_locomotion", "antmaze", "none")


def episode_ids_from_dones(td: TensorDictBase) -> torch.Tensor:
    """Episode index ``[N]`` (int64) of each transition of a flat, time-ordered dataset.

    A new episode starts after a ``("next", "done")`` transition and wherever the data is not
    contiguous (``("next", "observation")[t] != observation[t + 1]``), e.g. after a dropped
    time-out transition or an episode cut without a flag.
    """
    done = td.get(("next", "done")).reshape(-1)
    obs, next_obs = td.get("observation"), td.get(("next", "observation"))
    jump = (next_obs[:-1] != obs[1:]).reshape(len(td) - 1, -1).any(-1)
    starts = torch.zeros(len(td), dtype=torch.int64, device=done.device)
    starts[1:] = (done[:-1] | jump).long()
    return starts.cumsum(0)


def episode_returns(td: TensorDictBase) -> torch.Tensor:
    """Undiscounted return ``[E]`` (float64) of each episode, in order of episode index.

    Uses ``td["episode"]``; rewards are ``("next", "reward") [N, 1]`` before any transform.
    """
    _, inverse = torch.unique(td.get("episode"), return_inverse=True)
    reward = td.get(("next", "reward")).reshape(-1).to(torch.float64)
    out = torch.zeros(int(inverse.max()) + 1, dtype=torch.float64, device=reward.device)
    return out.index_add_(0, inverse, reward)


def reward_transform_params(kind: str, returns: torch.Tensor) -> tuple[float, float]:
    """``(scale, shift)`` of the reward transform ``r <- r * scale + shift``.

    Args:
        kind: ``"iql_locomotion"``, ``"antmaze"`` or ``"none"``.
        returns: episode returns ``[E]`` of the dataset (used by ``"iql_locomotion"``).

    Raises:
        ValueError: unknown ``kind``, or ``"iql_locomotion"`` on a dataset whose episodes all
            have the same return (the scale would be infinite).
    """
    if kind == "iql_locomotion":
        spread = float(returns.max() - returns.min())
        if not spread > 0:
            raise ValueError(
                "reward_transform='iql_locomotion' needs episodes with different returns "
                f"(max - min = {spread}); use reward_transform='none' for this dataset."
            )
        return 1000.0 / spread, 0.0
    if kind == "antmaze":
        return 1.0, -1.0
    if kind == "none":
        return 1.0, 0.0
    raise ValueError(f"unknown reward_transform {kind!r}; expected one of {REWARD_TRANSFORMS}")


def apply_reward_transform(td: TensorDictBase, scale: float, shift: float) -> TensorDictBase:
    """In place: ``("next", "reward") <- reward * scale + shift``; returns ``td``."""
    reward = td.get(("next", "reward"))
    td.set_(("next", "reward"), reward * scale + shift)
    return td


def observation_stats(
    obs: torch.Tensor, eps: float = OBS_NORM_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loc, scale)``, each ``[obs_dim]`` float32: mean and ``std + eps`` of ``obs [N, obs_dim]``.

    The std is the population std (``unbiased=False``), computed in float64.

    Example:
        >>> loc, scale = observation_stats(torch.tensor([[0.0], [2.0]]))
        >>> loc.tolist(), scale.tolist()
        ([1.0], [1.0010000467300415])
    """
    obs64 = obs.to(torch.float64)
    loc = obs64.mean(0)
    scale = obs64.std(0, unbiased=False) + eps
    return loc.to(torch.float32), scale.to(torch.float32)


def normalize_observations(
    td: TensorDictBase, loc: torch.Tensor, scale: torch.Tensor
) -> TensorDictBase:
    """In place: ``(obs - loc) / scale`` for ``observation`` and ``("next", "observation")``."""
    for key in ("observation", ("next", "observation")):
        td.set_(key, (td.get(key) - loc) / scale)
    return td


def action_box(low: Sequence[float], high: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loc, scale)``, each ``[action_dim]`` float32, of the affine map of ``[low, high]``
    onto ``[-1, 1]``: ``a_unit = (a - loc) / scale`` with ``loc = (high + low) / 2``,
    ``scale = (high - low) / 2`` (TorchRL's ``ActionScaling`` convention).

    Example:
        >>> loc, scale = action_box([-2.0], [2.0])
        >>> loc.tolist(), scale.tolist()
        ([0.0], [2.0])
    """
    low_t = torch.as_tensor(low, dtype=torch.float32).reshape(-1)
    high_t = torch.as_tensor(high, dtype=torch.float32).reshape(-1)
    if low_t.shape != high_t.shape or not bool((high_t > low_t).all()):
        raise ValueError(
            f"action box needs low < high per dimension, got low={low_t.tolist()}, "
            f"high={high_t.tolist()}."
        )
    return (high_t + low_t) / 2, (high_t - low_t) / 2


def is_unit_box(low: Sequence[float], high: Sequence[float]) -> bool:
    """Whether ``[low, high]`` is already ``[-1, 1]`` in every dimension."""
    low_t = torch.as_tensor(low, dtype=torch.float32)
    high_t = torch.as_tensor(high, dtype=torch.float32)
    return bool((low_t == -1).all() and (high_t == 1).all())


def normalize_actions(td: TensorDictBase, loc: torch.Tensor, scale: torch.Tensor) -> TensorDictBase:
    """In place: ``action <- (action - loc) / scale`` (the dataset's box onto ``[-1, 1]``)."""
    td.set_("action", (td.get("action") - loc) / scale)
    return td
