"""Aggregate many runs' ``results.json`` into the paper's ablation table and figures.

    python -m torchrl_aepo.report multirun/fig1 multirun/fig2 --out docs/ablations/report

reads every ``results.json`` under the given directories (recursively; a file path is read as
is), groups the runs by task x method (``results["method"]``, else :func:`method_name` of the
run's config) and writes into ``--out``:

* ``table.md`` / ``table.csv``: per task and method, the number of runs (seeds) and the mean ±
  std (over seeds, ``ddof=0``) of the **final** normalised score (the configured guidance
  degree, the last policy) and, separately, of the **best** one: the maximum over the
  guidance sweep, which is selected on the evaluation episodes themselves and therefore
  optimistic;
* ``guidance.md`` / ``guidance.csv``: mean ± std of the normalised score at each guidance
  degree, per task, method and rescale setting;
* ``radar.png`` (Figure 1): one axis per task, one polygon per method, each task's mean final
  scores normalised across methods (:func:`normalise_across_methods`);
* ``guidance.png`` (Figure 2): score over the guidance degree, one panel per task, rescale on
  (solid) and off (dashed).

Library code: no hydra; writes are atomic (:mod:`torchrl_aepo.atomic`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchrl_aepo.atomic import save_figure_atomic, write_text_atomic

__all__ = [
    "RunRecord",
    "method_name",
    "find_results",
    "load_runs",
    "aggregate",
    "guidance_table",
    "normalise_across_methods",
    "write_report",
    "main",
]

_ENERGY_LABELS = {
    "mse": "MSE",
    "dps": "DPS",
    "cep": "CEP",
    "log_mean_exp": "LogMeanExp",
    "support_posterior": "SupportPosterior",
}


def method_name(config: Mapping[str, Any]) -> str:
    """The paper's name of the method a run's config trains.

    ``critic=isql, energy=cep`` is ``"QGPO"``; otherwise ``"AEPO"`` with a suffix per
    ablation: ``-Posterior-2``, ``-CQL`` / ``-ISQL``, ``-MSE`` / ``-DPS`` / ``-CEP``, and for the
    analytic energy ``-paper-energy`` (``energy_baseline=none`` with ``variance_weight=1``,
    Eq. 25 literally) or ``-variance-<w>`` (another non-zero ``variance_weight``; configs
    written before that key existed carry no suffix). The guidance degree and the rescale
    switch are evaluation settings and not part of the name.

    >>> method_name({"aepo": {"critic": "cql"}}), method_name({"aepo": {"posterior": 2}})
    ('AEPO-CQL', 'AEPO-Posterior-2')
    >>> method_name({"aepo": {"critic": "isql", "energy": "cep"}})
    'QGPO'
    >>> method_name({"aepo": {"energy_baseline": "none", "variance_weight": 1.0}})
    'AEPO-paper-energy'
    """
    aepo = dict(config.get("aepo") or {})
    critic = aepo.get("critic", "expectile")
    energy = aepo.get("energy", "analytic")
    if critic == "isql" and energy == "cep":
        return "QGPO"
    name = "AEPO"
    if int(aepo.get("posterior", 1)) == 2 and energy == "analytic":
        name += "-Posterior-2"
    if critic != "expectile":
        name += f"-{critic.upper()}"
    if energy != "analytic":
        name += f"-{_ENERGY_LABELS.get(energy, energy)}"
    elif aepo.get("variance_weight") is not None and float(aepo["variance_weight"]) != 0.0:
        weight = float(aepo["variance_weight"])
        paper = weight == 1.0 and aepo.get("energy_baseline") == "none"
        name += "-paper-energy" if paper else f"-variance-{weight:g}"
    return name


@dataclass
class RunRecord:
    """What the report uses of one ``results.json``."""

    path: Path
    task: str
    method: str
    seed: int | None
    final: float
    best: float
    rescale: bool | None
    base_method: str
    sweep: dict[float, float] = field(default_factory=dict)

    @classmethod
    def from_results(cls, results: Mapping[str, Any], path: Path) -> RunRecord:
        try:
            config = results.get("config") or {}
            sweep = {
                float(r["guidance"]): float(r["normalized_mean"])
                for r in results.get("guidance_sweep", [])
            }
            best = results["best"]["over_guidance_sweep"]["normalized_mean"]
            rescale = (config.get("aepo") or {}).get("rescale")
            return cls(
                path=path,
                task=str(results["task"]),
                method=str(results.get("method") or method_name(config)),
                seed=(results.get("seeds") or {}).get("train", config.get("seed")),
                final=float(results["final"]["normalized_mean"]),
                best=float(best),
                rescale=None if rescale is None else bool(rescale),
                base_method=method_name(config),
                sweep=sweep,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: not a complete results.json ({err!r}).") from None

    @classmethod
    def from_multi_seed_results(cls, results: Mapping[str, Any], path: Path) -> list[RunRecord]:
        """One record per seed of a ``train.num_seeds > 1`` results.json (its ``seeds`` list
        holds each seed's ``final`` and ``guidance_sweep``; ``best`` is the seed's best degree)."""
        try:
            config = results.get("config") or {}
            rescale = (config.get("aepo") or {}).get("rescale")
            records = []
            for entry in results["seeds"]:
                sweep = {
                    float(r["guidance"]): float(r["normalized_mean"])
                    for r in entry.get("guidance_sweep", [])
                }
                final = float(entry["final"]["normalized_mean"])
                records.append(
                    cls(
                        path=path,
                        task=str(results["task"]),
                        method=str(results.get("method") or method_name(config)),
                        seed=int(entry["seed"]),
                        final=final,
                        best=max(sweep.values(), default=final),
                        rescale=None if rescale is None else bool(rescale),
                        base_method=method_name(config),
                        sweep=sweep,
                    )
                )
            return records
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: not a complete multi-seed results.json ({err!r}).") from None


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """Every ``results.json`` under ``paths`` (directories searched recursively), sorted."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_file():
            found.add(p)
        elif p.is_dir():
            found.update(p.rglob("results.json"))
        else:
            raise FileNotFoundError(f"{p}: no such file or directory.")
    return sorted(found)


def load_runs(paths: Iterable[str | Path]) -> list[RunRecord]:
    """:class:`RunRecord` of every ``results.json`` under ``paths``."""
    files = find_results(paths)
    if not files:
        raise FileNotFoundError(f"no results.json under {[str(p) for p in paths]}.")
    runs = []
    for f in files:
        results = json.loads(f.read_text())
        if isinstance(results.get("seeds"), list):  # train.num_seeds > 1: one run per seed
            runs.extend(RunRecord.from_multi_seed_results(results, f))
        else:
            runs.append(RunRecord.from_results(results, f))
    return runs


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / n)


def aggregate(runs: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Rows ``{task, method, runs, seeds, final_mean, final_std, best_mean, best_std}``,
    sorted by task then method (std over runs, ``ddof=0``)."""
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for run in runs:
        groups[(run.task, run.method)].append(run)
    rows = []
    for (task, method), group in sorted(groups.items()):
        final_mean, final_std = _mean_std([r.final for r in group])
        best_mean, best_std = _mean_std([r.best for r in group])
        rows.append(
            {
                "task": task,
                "method": method,
                "runs": len(group),
                "seeds": sorted({r.seed for r in group if r.seed is not None}),
                "final_mean": final_mean,
                "final_std": final_std,
                "best_mean": best_mean,
                "best_std": best_std,
            }
        )
    return rows


def guidance_table(runs: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Rows ``{task, method, rescale, guidance, runs, mean, std}`` of the guidance sweeps;
    ``method`` is the config's method (:func:`method_name`), without a run's label."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for run in runs:
        for w, score in run.sweep.items():
            groups[(run.task, run.base_method, run.rescale, w)].append(score)
    rows = []
    for (task, method, rescale, w), scores in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], str(kv[0][2]), kv[0][3])
    ):
        mean, std = _mean_std(scores)
        rows.append(
            {
                "task": task,
                "method": method,
                "rescale": rescale,
                "guidance": w,
                "runs": len(scores),
                "mean": mean,
                "std": std,
            }
        )
    return rows


def normalise_across_methods(scores: Mapping[str, float]) -> dict[str, float]:
    """One task's scores by method, normalised as in the paper's radar plot.

    Each score is divided by the best method's (so the best is 1) when all are positive;
    otherwise (a negative or zero score) min-max scaled to ``[0, 1]``. Equal scores give 1.

    >>> normalise_across_methods({"a": 50.0, "b": 100.0})
    {'a': 0.5, 'b': 1.0}
    >>> normalise_across_methods({"a": -10.0, "b": 30.0, "c": 10.0})
    {'a': 0.0, 'b': 1.0, 'c': 0.5}
    """
    values = list(scores.values())
    hi, lo = max(values), min(values)
    if lo > 0:
        return {k: v / hi for k, v in scores.items()}
    if hi == lo:
        return {k: 1.0 for k in scores}
    return {k: (v - lo) / (hi - lo) for k, v in scores.items()}


# ------------------------------------------------------------------------------------ writers
def _pm(mean: float, std: float) -> str:
    return f"{mean:.1f} ± {std:.1f}"


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in row.items()}
        )
    return buffer.getvalue()


def _table_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "# Normalised scores by task and method",
        "",
        "Mean ± std over seeds (std with ddof=0). **final**: the policy at the configured "
        "guidance degree after training. **best**: the maximum over the evaluated guidance "
        "degrees, chosen on the evaluation episodes themselves, hence optimistic; report "
        "*final* as the result.",
        "",
        "| task | method | runs | final | best (max over guidance, on eval episodes) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['method']} | {r['runs']} | {_pm(r['final_mean'], r['final_std'])} "
            f"| {_pm(r['best_mean'], r['best_std'])} |"
        )
    return "\n".join(lines) + "\n"


def _guidance_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "# Normalised score over the guidance degree",
        "",
        "Mean ± std over seeds (ddof=0) at each guidance degree w, evaluated after training.",
        "",
        "| task | method | rescale | w | runs | score |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['method']} | {r['rescale']} | {r['guidance']:g} | {r['runs']} "
            f"| {_pm(r['mean'], r['std'])} |"
        )
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_radar(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Figure 1: per-task mean final scores normalised across methods, one polygon per method."""
    plt = _pyplot()
    tasks = sorted({r["task"] for r in rows})
    methods = sorted({r["method"] for r in rows})
    normalised = {}
    for task in tasks:
        scores = {r["method"]: r["final_mean"] for r in rows if r["task"] == task}
        normalised[task] = normalise_across_methods(scores)
    angles = [2 * math.pi * i / len(tasks) for i in range(len(tasks))]
    fig = plt.figure(figsize=(6, 6))
    ax = fig.add_subplot(projection="polar")
    for method in methods:
        values = [normalised[t].get(method, float("nan")) for t in tasks]
        ax.plot([*angles, angles[0]], [*values, values[0]], marker="o", label=method)
        ax.fill([*angles, angles[0]], [*values, values[0]], alpha=0.08)
    ax.set_xticks(angles)
    ax.set_xticklabels(tasks, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(title or "final normalised score (per task, relative across methods)", fontsize=9)
    ax.legend(loc="lower right", bbox_to_anchor=(1.3, -0.1), fontsize=8)
    try:
        return save_figure_atomic(fig, path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_guidance(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Figure 2: score over the guidance degree per task; solid: rescale on, dashed: off."""
    plt = _pyplot()
    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        lines: dict[tuple, list] = defaultdict(list)
        for r in rows:
            if r["task"] == task:
                lines[(r["method"], r["rescale"])].append(r)
        for (method, rescale), points in sorted(lines.items(), key=lambda kv: str(kv[0])):
            points.sort(key=lambda r: r["guidance"])
            w = [p["guidance"] for p in points]
            mean = [p["mean"] for p in points]
            std = [p["std"] for p in points]
            label = f"{method}, rescale {'on' if rescale else 'off'}"
            line = ax.plot(w, mean, marker="o", ls="-" if rescale else "--", label=label)[0]
            ax.fill_between(
                w,
                [m - s for m, s in zip(mean, std, strict=True)],
                [m + s for m, s in zip(mean, std, strict=True)],
                color=line.get_color(),
                alpha=0.15,
            )
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("guidance degree w")
        ax.set_ylabel("normalised score")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        return save_figure_atomic(fig, path, dpi=120)
    finally:
        plt.close(fig)


def write_report(paths: Iterable[str | Path], out: str | Path, title: str = "") -> dict[str, Path]:
    """Read the runs under ``paths`` and write the tables and figures into ``out``."""
    runs = load_runs(list(paths))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(runs)
    written = {
        "table.md": write_text_atomic(out / "table.md", _table_markdown(rows)),
        "table.csv": write_text_atomic(out / "table.csv", _csv(rows)),
        "radar.png": plot_radar(rows, out / "radar.png", title),
    }
    sweep = guidance_table(runs)
    if sweep:
        written["guidance.md"] = write_text_atomic(out / "guidance.md", _guidance_markdown(sweep))
        written["guidance.csv"] = write_text_atomic(out / "guidance.csv", _csv(sweep))
        written["guidance.png"] = plot_guidance(sweep, out / "guidance.png", title)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m torchrl_aepo.report",
        description="Aggregate results.json files into the ablation table and figures.",
    )
    parser.add_argument(
        "runs", nargs="+", help="run or multirun directories (or results.json files)"
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--title", default="", help="figure title")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.runs, args.out, args.title)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}")
        return 2
    for path in written.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
