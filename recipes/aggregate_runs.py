"""Summarise finished runs: ``python recipes/aggregate_runs.py multirun/<date> [more dirs]``.

Reads every ``results.json`` under the given run or sweep (multirun) directories, prints one
row per run and one per (task, experiment) with the mean ± std over seeds, and writes the
summary to ``--out`` (default ``<first dir>/summary.json``). Scores are the final policy's
normalized score (mean over its evaluation episodes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import utils  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", help="run dirs or multirun sweep dirs")
    parser.add_argument("--out", default=None, help="summary JSON (default <dirs[0]>/summary.json)")
    args = parser.parse_args(argv)
    try:
        rows = utils.aggregate_runs(args.dirs)
    except utils.RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: no results.json under {args.dirs} (no finished run).", file=sys.stderr)
        return 2
    summary = utils.summarize_runs(rows)
    print(f"{'task':32s} {'seed':>4s} {'final':>8s} {'behaviour':>9s}  run dir")
    for r in rows:
        print(
            f"{r['task']:32s} {r['seed']:4d} {r['final']:8.2f} {r['behaviour']:9.2f}  {r['run_dir']}"
        )
    print(f"\n{'task':32s} {'experiment':12s} {'n':>3s} {'final':>17s} {'behaviour':>17s}")
    for s in summary:
        print(
            f"{s['task']:32s} {s['experiment']:12s} {s['n']:3d} "
            f"{s['final_mean']:8.2f} ± {s['final_std']:6.2f} "
            f"{s['behaviour_mean']:8.2f} ± {s['behaviour_std']:6.2f}"
        )
    out = Path(args.out) if args.out else Path(args.dirs[0]) / "summary.json"
    utils.write_json_summary(out, {"runs": rows, "summary": summary})
    print(f"\nsummary: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
