"""The locomotion ladder table of docs/locomotion.md from the runs' results files.

    python -m studies.locomotion.ladder_table SPEC.json [--root DIR] [--copy-to DIR] [--out FILE.md]

``SPEC.json`` maps each dataset to the results files of its rows, relative to ``--root``::

    {"halfcheetah-medium-replay-local": {
        "aepo": "hc_mr_vw0/results.json",          # AEPO run: faithful, BC (w = 0), deployed
        "deployed": "hc_mr_vw0/results.eval-6c64406ead4b.json",  # optional: another deployed
        "iql": ["iql_hc_mr/results.json"]}}          # one or more IQL runs (their actor in "method")

Every number is read from those files; nothing is chosen here. For the AEPO file (a run's
results.json or an ``eval_only`` results.eval-*.json) the table shows the behaviour model
(``w = 0``, diffusion BC), the reported guidance degree (chosen by ``aepo.guidance_rule`` or
fixed), the faithful policy (K = 1), and the file's deployed policy at that degree and at
``w = 0``; the optional ``deployed`` file (an ``eval_only`` evaluation of the same run under
other ``deploy.*`` settings) adds its deployed policy's two columns. A deployed policy's
columns are named after its ``num_candidates`` and ``latent_scale``. ``--copy-to``
copies every file read (renamed ``<dataset>.<row>.json``) so that the table can be rebuilt
from the committed copies.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def _score(entry: dict | None) -> str:
    if not entry:
        return "–"
    return f"{entry['normalized_mean']:.1f} ± {entry['normalized_std']:.1f}"


def _minutes(results: dict) -> float:
    stages = results["timings"]["stages"]
    seconds = sum(s["seconds"] for s in stages.values()) + results["timings"].get("eval_seconds", 0)
    return seconds / 60.0


def _deployed_at(results: dict, guidance: float) -> dict | None:
    for entry in results.get("deployed_sweep") or []:
        if entry["guidance"] == guidance:
            return entry
    deployed = results.get("deployed")
    return deployed if deployed and deployed["guidance"] == guidance else None


def deployed_name(results: dict) -> str | None:
    """A results file's deployed policy in words, e.g. ``"one sample, latent scale 0"``."""
    deployed = results.get("deployed")
    if not deployed:
        return None
    k, scale = deployed.get("num_candidates", 1), deployed.get("latent_scale", 1.0)
    pick = f"critic's pick of {k}" if k > 1 else "one sample"
    return f"{pick}, latent scale {1.0 if scale is None else scale:g}"


def build_table(spec: dict, root: Path, copy_to: Path | None = None) -> str:
    """The markdown table (one row per dataset) and, below it, the wall times."""
    rows, times, loaded = [], [], {}
    for dataset, entry in spec.items():
        files = {"aepo": entry["aepo"], **{f"iql{i}": p for i, p in enumerate(entry["iql"])}}
        if entry.get("deployed"):
            files["deployed"] = entry["deployed"]
        loaded[dataset] = {}
        for row, rel in files.items():
            path = root / rel
            loaded[dataset][row] = json.loads(path.read_text())
            if copy_to is not None:
                copy_to.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, copy_to / f"{dataset}.{row}.json")
    iql_names = sorted(
        {r["method"] for d in loaded.values() for k, r in d.items() if k.startswith("iql")}
    )
    deployed_names = []  # in order of first appearance
    for runs in loaded.values():
        for key in ("deployed", "aepo"):
            name = deployed_name(runs[key]) if key in runs else None
            if name is not None and name not in deployed_names:
                deployed_names.append(name)
    header = ["dataset", "BC (w = 0)", "w chosen", "AEPO faithful"]
    for name in deployed_names:
        header += [f"deployed: {name}", f"{name}, w = 0"]
    header += [f"IQL ({n.removeprefix('iql-')})" for n in iql_names]
    rows.append("| " + " | ".join(header) + " |")
    rows.append("|" + "---|" * len(header))
    for dataset, runs in loaded.items():
        aepo = runs["aepo"]
        final = aepo["final"]
        chosen = final["guidance"]
        how = "rule" if aepo.get("guidance_selection") else "fixed"
        cells = [dataset, _score(aepo["behaviour"]), f"{chosen:g} ({how})", _score(final)]
        by_name = {deployed_name(runs[k]): runs[k] for k in ("aepo", "deployed") if k in runs}
        for name in deployed_names:
            results = by_name.get(name)
            cells += (
                [_score(_deployed_at(results, chosen)), _score(_deployed_at(results, 0.0))]
                if results is not None
                else ["–", "–"]
            )
        by_method = {r["method"]: r for k, r in runs.items() if k.startswith("iql")}
        cells += [_score(by_method.get(name, {}).get("final")) for name in iql_names]
        rows.append("| " + " | ".join(cells) + " |")
        iql_minutes = ", ".join(
            f"{r['method']} {_minutes(r):.1f}" for k, r in runs.items() if k.startswith("iql")
        )
        stages = ", ".join(
            f"{name} {s['seconds'] / 60:.1f}" + (" (restored)" if s.get("skipped") else "")
            for name, s in aepo["timings"]["stages"].items()
        )
        times.append(
            f"- {dataset}: AEPO {_minutes(aepo):.1f} min ({stages}, eval "
            f"{aepo['timings'].get('eval_seconds', 0) / 60:.1f}); IQL {iql_minutes or '–'} min"
        )
    return "\n".join(rows) + "\n\nWall time (minutes):\n\n" + "\n".join(times) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--copy-to", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    table = build_table(json.loads(args.spec.read_text()), args.root, args.copy_to)
    if args.out is not None:
        args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
