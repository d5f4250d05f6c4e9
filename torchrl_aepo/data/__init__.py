"""Offline datasets for AEPO: task table, loaders to TorchRL replay buffers, local builders.

Example:
    >>> from torchrl_aepo.data import get_task, normalized_score
    >>> get_task("walker2d-medium-replay-v2").dataset_id
    'walker2d-medium-replay-v2'
    >>> round(normalized_score("walker2d-medium-replay-v2", 4592.3), 3)
    100.0
"""

from torchrl_aepo.data.builders import LOCAL_FAMILIES, build_local_dataset, reference_scores
from torchrl_aepo.data.experts import DoublePendulumLQRExpert, PendulumSwingUpExpert
from torchrl_aepo.data.loading import (
    DatasetUnavailableError,
    OfflineMetadata,
    PatchedMinariExperienceReplay,
    make_offline_data,
)
from torchrl_aepo.data.locomotion import build_locomotion_dataset
from torchrl_aepo.data.preprocessing import (
    NonFiniteDataError,
    episode_returns,
    observation_stats,
    reward_transform_params,
)
from torchrl_aepo.data.scores import normalized_score
from torchrl_aepo.data.tasks import (
    PAPER_TASKS,
    QUALITIES,
    TASKS,
    TaskSpec,
    UnknownTaskError,
    get_task,
    import_eval_requirements,
    list_tasks,
)

__all__ = [
    "LOCAL_FAMILIES",
    "PAPER_TASKS",
    "QUALITIES",
    "TASKS",
    "DatasetUnavailableError",
    "DoublePendulumLQRExpert",
    "NonFiniteDataError",
    "OfflineMetadata",
    "PatchedMinariExperienceReplay",
    "PendulumSwingUpExpert",
    "TaskSpec",
    "UnknownTaskError",
    "build_local_dataset",
    "build_locomotion_dataset",
    "episode_returns",
    "get_task",
    "import_eval_requirements",
    "list_tasks",
    "make_offline_data",
    "normalized_score",
    "observation_stats",
    "reference_scores",
    "reward_transform_params",
]
