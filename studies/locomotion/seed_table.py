"""One dataset over seeds: AEPO's runs and IQL's runs side by side, and their seed means.

    python -m studies.locomotion.seed_table --aepo s0/results.json s1/results.json ... \\
        --iql iql_s0/results.json ... [--copy-to DIR --name DATASET] [--out FILE.md]

Per seed, from each AEPO run's results file: the behaviour model (``w = 0``), the reported
guidance degree, the faithful policy and the deployed policy; from each IQL run its final
policy. The last row is the mean over seeds of the per-seed means, ± their standard deviation
(over seeds, ``n - 1``). The deployed column is the first AEPO file's deployed policy (as
:func:`~studies.locomotion.ladder_table.deployed_name` names it); a file whose deployed
policy differs shows its score marked with its name and is left out of that column's mean.
Every number is read from the files; nothing is chosen here.
``--copy-to`` copies every file read (renamed ``<name>.aepo<i>.json`` / ``<name>.iql<i>.json``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from studies.locomotion.ladder_table import deployed_name

_AEPO_COLUMNS = ("behaviour", "final", "deployed")


def _mean(entry: dict | None) -> float | None:
    return None if not entry else float(entry["normalized_mean"])


def _cell(value: float | None, spread: float | None = None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if spread is None else f"{value:.1f} ± {spread:.1f}"


def build_seed_table(aepo: list[dict], iql: list[dict]) -> str:
    """The markdown table of ``aepo`` and ``iql`` results dicts (one per seed, same order).

    >>> run = lambda s, b, f, d: {"config": {"seed": s}, "behaviour": {"normalized_mean": b},
    ...     "final": {"normalized_mean": f, "guidance": 0.5}, "deployed": {"normalized_mean": d}}
    >>> iql = lambda s, f: {"config": {"seed": s}, "final": {"normalized_mean": f}}
    >>> print(build_seed_table([run(0, 1, 2, 3), run(1, 3, 4, 5)], [iql(0, 2), iql(1, 4)]))
    | seed | BC (w = 0) | w chosen | AEPO faithful | AEPO deployed | IQL |
    |---|---|---|---|---|---|
    | 0 | 1.0 | 0.5 | 2.0 | 3.0 | 2.0 |
    | 1 | 3.0 | 0.5 | 4.0 | 5.0 | 4.0 |
    | mean ± std (2 seeds) | 2.0 ± 1.4 | – | 3.0 ± 1.4 | 4.0 ± 1.4 | 3.0 ± 1.4 |
    """
    seeds = max(len(aepo), len(iql))
    rows = [
        "| seed | BC (w = 0) | w chosen | AEPO faithful | AEPO deployed | IQL |",
        "|---|---|---|---|---|---|",
    ]
    columns: dict[str, list[float]] = {key: [] for key in (*_AEPO_COLUMNS, "iql")}
    policy = next(filter(None, map(deployed_name, aepo)), None)
    for i in range(seeds):
        run = aepo[i] if i < len(aepo) else {}
        base = iql[i] if i < len(iql) else {}
        seed = (run or base)["config"]["seed"]
        values = {key: _mean(run.get(key)) for key in _AEPO_COLUMNS}
        values["iql"] = _mean(base.get("final"))
        deployed = _cell(values["deployed"])
        if values["deployed"] is not None and deployed_name(run) != policy:
            deployed += f" (other deployed policy: {deployed_name(run)}; not in the mean)"
            values["deployed"] = None
        for key, value in values.items():
            if value is not None:
                columns[key].append(value)
        chosen = run.get("final", {}).get("guidance")
        rows.append(
            f"| {seed} | {_cell(values['behaviour'])} | "
            f"{'–' if chosen is None else f'{chosen:g}'} | {_cell(values['final'])} | "
            f"{deployed} | {_cell(values['iql'])} |"
        )

    def summary(key: str) -> str:
        values = columns[key]
        if not values:
            return "–"
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        cell = _cell(statistics.fmean(values), spread)
        return cell if len(values) == seeds else f"{cell} ({len(values)} seeds)"

    rows.append(
        f"| mean ± std ({seeds} seeds) | {summary('behaviour')} | – | {summary('final')} | "
        f"{summary('deployed')} | {summary('iql')} |"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aepo", type=Path, nargs="+", required=True)
    parser.add_argument("--iql", type=Path, nargs="*", default=[])
    parser.add_argument("--copy-to", type=Path)
    parser.add_argument("--name", default="dataset", help="file-name prefix of the copies")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    loaded = {"aepo": [], "iql": []}
    for kind in loaded:
        for i, path in enumerate(getattr(args, kind)):
            loaded[kind].append(json.loads(path.read_text()))
            if args.copy_to is not None:
                args.copy_to.mkdir(parents=True, exist_ok=True)
                copy = args.copy_to / f"{args.name}.{kind}{i}.json"
                if not (copy.exists() and copy.samefile(path)):  # re-run on its own copies
                    shutil.copyfile(path, copy)
    table = build_seed_table(loaded["aepo"], loaded["iql"])
    if args.out is not None:
        args.out.write_text(table + "\n")
    print(table)
    return table


if __name__ == "__main__":
    main()
