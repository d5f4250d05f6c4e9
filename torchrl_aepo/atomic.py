"""Atomic file writes: every artifact is either the old file or the complete new one.

A write goes to a temporary file in the destination's directory (same file system), is
flushed and ``fsync``-ed, and then replaces the destination with :func:`os.replace`, which is
atomic on POSIX and Windows. A crash or kill mid-write leaves the previous file (or no file)
and, at worst, a stray ``.<name>.*.tmp`` file, never a truncated artifact.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "results.json"
    >>> _ = write_json_atomic(path, {"score": 1.5})
    >>> path.read_text()
    '{\\n  "score": 1.5\\n}'
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_path",
    "atomic_open",
    "save_figure_atomic",
    "save_torch_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    The temporary name keeps ``path``'s suffix (``.<name>.<random>.tmp<suffix>``), so writers
    that infer a format from the extension (``matplotlib.savefig``) still work. On an
    exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the writer may have closed its handle without fsync
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """``open(path, mode)`` (``"w"`` or ``"wb"``) whose content appears only once complete."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports mode 'w' or 'wb', got {mode!r}.")
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def save_torch_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj, path)``, atomically; returns ``path``."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def write_json_atomic(
    path: str | os.PathLike[str],
    obj: Any,
    *,
    indent: int | None = 2,
    default: Callable[[Any], Any] | None = None,
) -> Path:
    """``json.dump(obj, path)`` atomically, refusing NaN/inf (``allow_nan=False``).

    Raises:
        ValueError: ``obj`` holds a non-finite float (JSON has no NaN/inf; Python would write
            the non-standard ``NaN`` token). Convert such values explicitly before writing.
    """
    return write_text_atomic(path, json.dumps(obj, indent=indent, default=default, allow_nan=False))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """``Path(path).write_text(text)``, atomically; returns ``path``."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def save_figure_atomic(fig: Any, path: str | os.PathLike[str], **savefig_kwargs: Any) -> Path:
    """``fig.savefig(path, **savefig_kwargs)`` (matplotlib), atomically; the format comes from
    ``path``'s suffix (``png`` when it has none). Returns ``path``."""
    path = Path(path)
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **savefig_kwargs)
    return path
