"""One sampling option, before and after, on the same trained runs: a paired table.

    python -m studies.locomotion.paired_eval NAME=RUN/results.json,RUN/results.eval-HASH.json ... \\
        [--out FILE.md]

Each pair is a run's ``results.json`` and the ``results.eval-<hash>.json`` that
``eval_only=true`` wrote for it with the option (same weights, same evaluation episodes). Per
pair: the reported guidance degree, the faithful and the deployed policy's normalized scores
before and after, and the deployed difference; the last row is the mean over pairs. Every
number is read from the files; nothing is chosen here.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _scores(path: Path) -> tuple[float, float, float]:
    """``(w, faithful, deployed)`` of one results file."""
    results = json.loads(path.read_text())
    final, deployed = results["final"], results.get("deployed")
    if not deployed:
        raise ValueError(f"{path}: no 'deployed' policy; evaluate with deploy.num_candidates set.")
    return (
        float(final["guidance"]),
        float(final["normalized_mean"]),
        float(deployed["normalized_mean"]),
    )


def paired_rows(pairs: dict[str, tuple[Path, Path]]) -> list[str]:
    """The markdown table of ``{name: (before, after)}``."""
    rows = [
        "| run | w before / after | faithful before / after | deployed before / after | deployed change |",
        "|---|---|---|---|---|",
    ]
    changes, before_all, after_all = [], [], []
    for name, (before, after) in pairs.items():
        (wb, fb, db), (wa, fa, da) = _scores(before), _scores(after)
        changes.append(da - db)
        before_all.append(db)
        after_all.append(da)
        rows.append(
            f"| {name} | {wb:g} / {wa:g} | {fb:.1f} / {fa:.1f} | {db:.1f} / {da:.1f} | "
            f"{da - db:+.1f} |"
        )
    rows.append(
        f"| mean over {len(pairs)} | – | – | {statistics.mean(before_all):.1f} / "
        f"{statistics.mean(after_all):.1f} | {statistics.mean(changes):+.1f} |"
    )
    return rows


def _pair(spec: str) -> tuple[str, tuple[Path, Path]]:
    name, _, files = spec.partition("=")
    before, _, after = files.partition(",")
    if not (name and before and after):
        raise argparse.ArgumentTypeError(f"{spec!r}: expected NAME=BEFORE.json,AFTER.json")
    return name, (Path(before), Path(after))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", type=_pair, help="NAME=BEFORE.json,AFTER.json")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    table = "\n".join(paired_rows(dict(args.pairs)))
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
