"""Test-wide settings.

The suite runs many small networks; on a 2-core CI box one intra-op thread per process is
faster for them than two threads contending, and it keeps timings stable under load.
"""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
#: the dataset of the recipe tests' ``data_root`` (files that need another one define their own)
TASK = "pendulum-medium-expert"


@pytest.fixture(scope="module")
def recipe():
    """``recipes/aepo_offline.py`` imported as a module (its ``run`` and ``RecipeError``)."""
    spec = importlib.util.spec_from_file_location(
        "aepo_offline", ROOT / "recipes" / "aepo_offline.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A tiny local copy of ``TASK`` (1200 transitions) for the recipe tests."""
    from torchrl_aepo.data import build_local_dataset

    root = tmp_path_factory.mktemp("minari")
    build_local_dataset(TASK, root=root, num_steps=1200, ref_episodes=2)
    return root
