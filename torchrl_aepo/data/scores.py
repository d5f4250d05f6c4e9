"""D4RL-style normalized score: ``100 * (R - ref_min) / (ref_max - ref_min)``.

Reference returns come from the task table for the paper's D4RL tasks (D4RL's own constants),
from the Minari metadata of a loaded dataset (:class:`OfflineMetadata`), or, for local tasks,
from :func:`torchrl_aepo.data.builders.reference_scores` (the values stored in the dataset).

Example:
    >>> round(normalized_score("hopper-medium-v2", 3234.3), 6)
    100.0
    >>> normalized_score("hopper-medium-v2", [-20.272305, 3234.3]).round(6).tolist()
    [0.0, 100.0]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["normalized_score", "reference_range"]


def reference_range(task_or_metadata: Any) -> tuple[float, float]:
    """``(ref_min_score, ref_max_score)`` of a task name, ``TaskSpec``, ``OfflineMetadata`` or
    a mapping with those two keys.

    Raises:
        ValueError: when the reference scores are unknown (e.g. a Minari task before its
            dataset is loaded: pass the ``OfflineMetadata`` from ``make_offline_data``).
    """
    from torchrl_aepo.data.tasks import TaskSpec, get_task

    source = task_or_metadata
    if isinstance(source, str):
        source = get_task(source)
    if isinstance(source, Mapping):
        lo, hi, name = source.get("ref_min_score"), source.get("ref_max_score"), "mapping"
    else:
        lo, hi = source.ref_min_score, source.ref_max_score
        name = getattr(source, "name", None) or getattr(source, "task", "?")
        if (
            (lo is None or hi is None)
            and isinstance(source, TaskSpec)
            and source.backend == "local"
        ):
            from torchrl_aepo.data.builders import reference_scores

            lo, hi = reference_scores(source.family)
    if lo is None or hi is None:
        raise ValueError(
            f"no reference scores for {name!r}; pass the OfflineMetadata returned by "
            "make_offline_data (it reads them from the dataset's Minari metadata)."
        )
    if hi == lo:
        raise ValueError(f"reference scores of {name!r} are equal ({lo}); cannot normalize")
    return float(lo), float(hi)


def normalized_score(task_or_metadata: Any, returns: Any) -> float | np.ndarray:
    """Normalized score of undiscounted episode return(s): 0 = random policy, 100 = expert.

    Args:
        task_or_metadata: task name, ``TaskSpec``, ``OfflineMetadata`` or a mapping with
            ``ref_min_score`` and ``ref_max_score``.
        returns: a return or an array-like of returns.

    Returns:
        A float for a scalar ``returns``, else a float64 array of the same shape.
    """
    lo, hi = reference_range(task_or_metadata)
    scores = 100.0 * (np.asarray(returns, dtype=np.float64) - lo) / (hi - lo)
    return float(scores) if scores.ndim == 0 else scores
