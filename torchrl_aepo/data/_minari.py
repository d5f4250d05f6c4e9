"""Where Minari datasets live, and scoped access to Minari's global path setting."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

_ENV_VAR = "MINARI_DATASETS_PATH"


def resolve_minari_root(root: str | os.PathLike | None = None) -> Path:
    """Minari datasets root: ``root`` if given, else ``$MINARI_DATASETS_PATH``, else Minari's
    default ``~/.minari/datasets``."""
    if root is not None:
        return Path(root).expanduser().resolve()
    env = os.environ.get(_ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    return Path("~/.minari/datasets").expanduser()


@contextlib.contextmanager
def minari_root(root: str | os.PathLike | None = None) -> Iterator[Path]:
    """Point Minari (which reads ``$MINARI_DATASETS_PATH`` on every call) at ``root`` for the
    duration of the block; yields the resolved root. Not thread-safe (it sets an env var)."""
    path = resolve_minari_root(root)
    previous = os.environ.get(_ENV_VAR)
    os.environ[_ENV_VAR] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(_ENV_VAR, None)
        else:
            os.environ[_ENV_VAR] = previous


def hdf5_path(root: Path, dataset_id: str) -> Path:
    """Path of a Minari HDF5 dataset's data file (the only format torchrl can convert)."""
    return root / dataset_id / "data" / "main_data.hdf5"
