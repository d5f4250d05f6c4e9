"""Exactness study of intermediate energies on 2-D toy problems (issue 7).

* :mod:`~studies.exactness.toy`: behaviour datasets, analytic critics, exact target samples.
* :mod:`~studies.exactness.exact`: importance-weighted exact (and MSE / DPS / AEPO-limit)
  intermediate energies and the exact noise prediction of a finite sample.
* :mod:`~studies.exactness.metrics`: sliced Wasserstein, MMD, noise floors.
* :mod:`~studies.exactness.study`: the study (learned and definitional parts).
* :mod:`~studies.exactness.report`: ``results.md`` / ``results.json`` / figures.
"""

from studies.exactness.exact import (
    ENERGY_KINDS,
    EmpiricalNoisePredictor,
    ImportanceWeightedPosterior,
    ReferenceEnergy,
)
from studies.exactness.metrics import mmd, noise_floor, sliced_wasserstein
from studies.exactness.study import StudyConfig, run_definitions, run_learned, run_study
from studies.exactness.toy import (
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
