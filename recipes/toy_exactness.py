"""Exactness study of AEPO's intermediate energy on 2-D toy problems (issue 7).

    python recipes/toy_exactness.py                       # the committed run -> docs/exactness/
    python recipes/toy_exactness.py study.datasets=[moons] study.energy_steps=300 out_dir=/tmp/x

Trains, per toy dataset, a behaviour diffusion model and one energy network per loss (AEPO
Posterior 1 and 2, MSE, DPS, CEP), measures their gradient error against the exact
importance-weighted energy and the distance of their guided samples to the exact target
policy (rescaling off and on, over guidance degrees), and evaluates the exact limit of each
energy definition. See :mod:`studies.exactness.study` for the protocol; the outputs are
written by :func:`studies.exactness.report.write_report`.

Configuration: ``configs/toy_exactness.yaml`` (``study.*`` are the fields of
:class:`~studies.exactness.study.StudyConfig`).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # studies/ lives in the checkout
from studies.exactness.report import write_report  # noqa: E402
from studies.exactness.study import StudyConfig, run_study  # noqa: E402


def regenerate_command() -> str:
    """The command line of this run, relative to the repository root."""
    return " ".join(["python", "recipes/toy_exactness.py", *map(shlex.quote, sys.argv[1:])])


@hydra.main(config_path="../configs", config_name="toy_exactness", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run the study with ``cfg.study`` and write the report into ``cfg.out_dir``."""
    study = StudyConfig(**OmegaConf.to_container(cfg.study, resolve=True))
    results = run_study(
        study,
        workers=int(cfg.workers),
        threads=None if cfg.threads is None else int(cfg.threads),
        log=lambda line: print(line, flush=True),
    )
    paths = write_report(results, Path(cfg.out_dir), command=regenerate_command())
    print(
        f"done in {results['seconds'] / 60:.1f} min; wrote {sorted(str(p) for p in paths.values())}"
    )


if __name__ == "__main__":
    main()
