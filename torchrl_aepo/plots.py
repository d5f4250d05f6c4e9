"""PNG plots of an AEPO run (matplotlib, Agg backend; no display needed).

* :func:`plot_training_losses`: one panel per training stage, its ``loss_*`` curves.
* :func:`plot_eval_over_training`: evaluation score during training (when evaluated).
* :func:`plot_guidance_sweep`: normalized score (mean ± std over episodes) vs guidance degree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_training_losses", "plot_eval_over_training", "plot_guidance_sweep"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_training_losses(
    history: Mapping[str, Sequence[Sequence[float]]], path: str | Path, title: str = ""
) -> Path | None:
    """Plot every ``<stage>/loss_*`` series of ``history`` (``{name: [[step, value], ...]}``).

    Returns the path written, or ``None`` when there is nothing to plot.
    """
    stages: dict[str, dict[str, Sequence[Sequence[float]]]] = {}
    for name, series in history.items():
        stage, _, key = name.partition("/")
        if key.startswith("loss_") and series:
            stages.setdefault(stage, {})[key] = series
    if not stages:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.4), squeeze=False)
    for ax, (stage, curves) in zip(axes[0], stages.items(), strict=True):
        for key, series in sorted(curves.items()):
            steps, values = zip(*series, strict=True)
            ax.plot(steps, values, label=key)
        ax.set_title(stage)
        ax.set_xlabel("step")
        if all(v > 0 for c in curves.values() for _, v in c):
            ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_eval_over_training(
    points: Sequence[Sequence[float]],
    path: str | Path,
    *,
    final: float | None = None,
    behaviour: float | None = None,
    title: str = "",
) -> Path | None:
    """Plot ``[[step, normalized_score], ...]`` (plus the final and ``w = 0`` scores as lines)."""
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    steps, values = zip(*points, strict=True)
    ax.plot(steps, values, marker="o", label="during training")
    if final is not None:
        ax.axhline(final, color="C1", ls="--", label="final")
    if behaviour is not None:
        ax.axhline(behaviour, color="C2", ls=":", label="behaviour (w=0)")
    ax.set_xlabel("training step")
    ax.set_ylabel("normalized score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "evaluation during training")
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_guidance_sweep(
    sweep: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    chosen: float | None = None,
    title: str = "",
) -> Path | None:
    """Plot normalized score (mean ± std) against the guidance degree ``w``."""
    if not sweep:
        return None
    plt = _pyplot()
    rows = sorted(sweep, key=lambda r: r["guidance"])
    ws = [r["guidance"] for r in rows]
    means = [r["normalized_mean"] for r in rows]
    stds = [r["normalized_std"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.errorbar(ws, means, yerr=stds, marker="o", capsize=3)
    if chosen is not None:
        ax.axvline(chosen, color="C1", ls="--", label=f"chosen w={chosen:g}")
        ax.legend(fontsize=8)
    ax.set_xlabel("guidance degree w (w = 0: behaviour policy)")
    ax.set_ylabel("normalized score")
    ax.grid(alpha=0.3)
    ax.set_title(title or "score vs guidance degree")
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` atomically (a kill never leaves a truncated PNG)."""
    from torchrl_aepo.atomic import save_figure_atomic

    try:
        return save_figure_atomic(fig, path, dpi=110)
    finally:
        plt.close(fig)
