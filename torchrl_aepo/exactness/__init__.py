"""Exactness study of intermediate energies on 2-D toy problems (issue 7).

* :mod:`~torchrl_aepo.exactness.toy`: behaviour datasets, analytic critics, exact target samples.
* :mod:`~torchrl_aepo.exactness.exact`: importance-weighted exact (and MSE / DPS / AEPO-limit)
  intermediate energies and the exact noise prediction of a finite sample.
* :mod:`~torchrl_aepo.exactness.metrics`: sliced Wasserstein, MMD, noise floors.
* :mod:`~torchrl_aepo.exactness.study`: the study (learned and definitional parts).
* :mod:`~torchrl_aepo.exactness.report`: ``results.md`` / ``results.json`` / figures.
"""

from torchrl_aepo.exactness.exact import (
    ENERGY_KINDS,
    EmpiricalNoisePredictor,
    ImportanceWeightedPosterior,
    ReferenceEnergy,
)
from torchrl_aepo.exactness.metrics import mmd, noise_floor, sliced_wasserstein
from torchrl_aepo.exactness.study import StudyConfig, run_definitions, run_learned, run_study
from torchrl_aepo.exactness.toy import (
    CRITICS,
    DATASETS,
    make_critic,
    sample_dataset,
    sample_target,
)

__all__ = [
    "DATASETS",
    "CRITICS",
    "sample_dataset",
    "make_critic",
    "sample_target",
    "ENERGY_KINDS",
    "ImportanceWeightedPosterior",
    "ReferenceEnergy",
    "EmpiricalNoisePredictor",
    "sliced_wasserstein",
    "mmd",
    "noise_floor",
    "StudyConfig",
    "run_study",
    "run_learned",
    "run_definitions",
]
