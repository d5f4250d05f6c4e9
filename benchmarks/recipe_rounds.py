"""Shared by the benchmarks that time ``recipes/aepo_offline.py`` in-process in two modes
(``benchmarks.eval_overlap``, ``benchmarks.overlap_stages``): the recipe module, the rounds
loop over a local Pendulum dataset, the ``--cells`` overrides and the JSON record."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import platform
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
TASK = "pendulum-medium-expert"


def load_recipe() -> ModuleType:
    """``recipes/aepo_offline.py`` as a module (its ``run(cfg)`` is called in-process)."""
    spec = importlib.util.spec_from_file_location(
        "aepo_offline", ROOT / "recipes" / "aepo_offline.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cells_overrides(cells: Sequence[int] | None) -> list[str]:
    """``--cells``: every network an MLP of these hidden widths (none: the config's)."""
    if not cells:
        return []
    widths = "[" + ",".join(str(c) for c in cells) + "]"
    out = [f"model.{n}_num_cells={widths}" for n in ("noise", "qvalue", "value", "energy")]
    return out + ["model.noise_network=mlp"]


def run_quietly(recipe: ModuleType, cfg: Any) -> dict:
    """``recipe.run(cfg)`` with its report kept off stdout; returns the results."""
    with contextlib.redirect_stdout(io.StringIO()):
        return recipe.run(cfg)


def best_rounds(
    modes: Iterable[str],
    repeats: int,
    overrides: Callable[[Path, Path, str], list[str]],
    measure: Callable[[ModuleType, Any, str], dict],
    key: str,
    report: Callable[[int, dict], None],
) -> dict[str, dict]:
    """Run the recipe ``repeats`` rounds, each mode once per round (interleaved, so both see
    the same machine load), on a local Pendulum dataset built once in a temporary directory.

    ``overrides(data_root, run_dir, mode)`` gives the hydra overrides of a run,
    ``measure(recipe, cfg, mode)`` its row, ``report(round, row)`` prints it. Returns the
    best row (smallest ``row[key]``) per mode.
    """
    from hydra import compose, initialize_config_dir

    from torchrl_aepo.data import build_local_dataset

    recipe, modes = load_recipe(), list(modes)
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_root = Path(tmp) / "minari"
        build_local_dataset(TASK, root=data_root, num_steps=5000, ref_episodes=2)
        for r in range(repeats):
            for mode in modes:
                run_dir = Path(tmp) / f"{mode}{r}"
                with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
                    cfg = compose(
                        config_name="config", overrides=overrides(data_root, run_dir, mode)
                    )
                row = measure(recipe, cfg, mode)
                report(r, row)
                if mode not in best or row[key] < best[mode][key]:
                    best[mode] = row
    return best


def machine() -> dict[str, Any]:
    """The machine a record was measured on."""
    return {
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_1min": os.getloadavg()[0],
    }


def write_record(record: dict, path: str | None) -> None:
    """Write ``record`` as JSON to ``path`` (its folder made), if a path is given."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(record, indent=2) + "\n")
