"""Ratios against the targets and QGPO's reference, printed tables and Markdown."""

from __future__ import annotations

import platform
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from benchmarks.harness import QGPO_REFERENCE, REPO_ROOT, TARGETS, BenchConfig


# ============================================================================ ratios / targets
def _find(rows: Sequence[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if row.get("status") == "ok" and all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _ratio_entry(
    name: str,
    value: float | tuple[float | None, ...] | None,
    *,
    target: float | None = None,
    direction: str = ">=",
    numerator: str = "",
    denominator: str = "",
    note: str = "",
) -> dict[str, Any]:
    value, value_cpu, value_min = (
        (tuple(value) + (None, None))[:3] if isinstance(value, tuple) else (value, None, None)
    )
    met = None
    if value is not None and target is not None:
        met = value >= target if direction == ">=" else value <= target
    if "fraction of matmul peak" in name and value is not None and value > 1.05:
        met = None  # above the peak measured alongside: the load changed mid-group
        note = (
            note + "; " if note else ""
        ) + "invalid (> 1): machine load changed during the group"
    return {
        "name": name,
        "value": value,
        "value_cpu": value_cpu,
        "value_fastest_call": value_min,
        "target": target,
        "direction": direction if target is not None else None,
        "met": met,
        "numerator": numerator,
        "denominator": denominator,
        "note": note,
    }


def _compute_ratios(results: dict[str, Any], cfg: BenchConfig) -> list[dict[str, Any]]:
    train, samp = results["training"], results["sampling"]
    out: list[dict[str, Any]] = []

    def speed(a, b):
        """Throughput ratios of rows a and b: (best round, CPU time, fastest call)."""
        if not (a and b):
            return None
        cpu = a["cpu_per_s"] / b["cpu_per_s"] if a.get("cpu_per_s") and b.get("cpu_per_s") else None
        return a["per_s"] / b["per_s"], cpu, b["ms_min"] / a["ms_min"]

    def field(row, key):
        if not row:
            return None
        if key == "ms":
            return row["ms"], row.get("cpu_ms"), row.get("ms_min")
        return row[key], row.get(f"{key}_cpu"), row.get(f"{key}_min")

    for batch in cfg.train_batches:
        b = {"batch": batch}
        ours_c = _find(train, name="ExpectileLoss", impl="ours", **b)
        out.append(
            _ratio_entry(
                f"critic update vs TorchRL IQLLoss critic part, batch {batch} (speed-up)",
                speed(
                    ours_c, _find(train, name="ExpectileLoss", impl="torchrl IQLLoss critic", **b)
                ),
                target=TARGETS["critic_speedup_vs_iql_min"],
                numerator="ExpectileLoss ours",
                denominator="IQLLoss value_loss+qvalue_loss",
            )
        )
        out.append(
            _ratio_entry(
                f"critic update vs TorchRL IQLLoss full update, batch {batch} (speed-up)",
                speed(ours_c, _find(train, name="ExpectileLoss", impl="torchrl IQLLoss full", **b)),
                numerator="ExpectileLoss ours",
                denominator="IQLLoss (actor+Q+V)",
                note="IQL also trains its actor; informational",
            )
        )
        compiled = _find(train, name="AEPO update", impl="ours, torch.compile", **b)
        if compiled is not None:
            out.append(
                _ratio_entry(
                    f"AEPO update with torch.compile vs eager, batch {batch} (speed-up)",
                    speed(compiled, _find(train, name="AEPO update", impl="ours", **b)),
                    numerator="AEPO update ours, torch.compile",
                    denominator="AEPO update ours",
                )
            )
        for name in ("DiffusionLoss", "ExpectileLoss", "AEPO update"):
            ours = _find(train, name=name, impl="ours", **b)
            fused = _find(train, name=name, impl="ours, Adam(fused=True)", **b)
            if fused is not None:
                out.append(
                    _ratio_entry(
                        f"{name} with Adam(fused=True) vs --optim {cfg.optim}, batch {batch} "
                        "(speed-up)",
                        speed(fused, ours),
                        numerator=f"{name} ours, Adam(fused=True)",
                        denominator=f"{name} ours, Adam {cfg.optim}",
                        note="recommendation for the trainer's optimiser",
                    )
                )
        for name, peer in (
            ("DiffusionLoss", "torchrl DiffusionBCLoss"),
            ("DiffusionLoss", "reference"),
            ("DiffusionLoss", "reference-research"),
            ("ExpectileLoss", "reference"),
            ("AnalyticEnergyLoss", "reference"),
            ("AEPO update", "reference"),
            ("AEPO update", "reference-research"),
        ):
            out.append(
                _ratio_entry(
                    f"{name} vs {peer}, batch {batch} (speed-up)",
                    speed(
                        _find(train, name=name, impl="ours", **b),
                        _find(train, name=name, impl=peer, **b),
                    ),
                    numerator=f"{name} ours",
                    denominator=f"{name} {peer}",
                )
            )
        target = (
            TARGETS["training_large_batch_frac_peak_min"]
            if batch >= 2048
            else TARGETS["training_batch256_frac_peak_min"]
            if batch >= 256
            else None
        )
        for name in ("DiffusionLoss", "AEPO update"):
            row = _find(train, name=name, impl="ours", **b)
            out.append(
                _ratio_entry(
                    f"{name} fraction of matmul peak, batch {batch}",
                    field(row, "frac_peak"),
                    target=target,
                    numerator=f"{name} ours GFLOP/s",
                    denominator="matmul peak GFLOP/s",
                )
            )
        if str(batch) in QGPO_REFERENCE["behaviour_step_ms"]:
            row = _find(train, name="DiffusionLoss", impl="ours", **b)
            ms = QGPO_REFERENCE["behaviour_step_ms"][str(batch)]
            out.append(
                _ratio_entry(
                    f"DiffusionLoss vs QGPO published behaviour step ({ms} ms), batch {batch}",
                    (ms / row["ms"], ms / row["cpu_ms"], ms / row["ms_min"]) if row else None,
                    numerator="QGPO ms (issue 8, other load)",
                    denominator="ours ms",
                    note="fixed figure measured at another time: indicative only",
                )
            )

    order, steps = cfg.qgpo_order, cfg.qgpo_steps
    tag = f"o{order}/{steps}"
    key = {"name": "guided", "order": order, "steps": steps}
    for batch in cfg.sample_batches:
        ours = _find(samp, impl="ours", batch=batch, **key)
        proxy = _find(samp, impl="reference-research", batch=batch, **key)
        ref = _find(samp, impl="reference", batch=batch, **key)
        out.append(
            _ratio_entry(
                f"guided sampling o{order}/{steps} vs reference, batch {batch} (speed-up)",
                speed(ours, ref),
                numerator="AEPOActor",
                denominator="ReferenceGuidedSampler (our nets)",
            )
        )
        out.append(
            _ratio_entry(
                f"guided sampling o{order}/{steps} vs QGPO-shaped reference, batch {batch} (speed-up)",
                speed(ours, proxy),
                target=3.0 if batch == 1 else 2.0 if batch == 50 else None,
                numerator="AEPOActor",
                denominator="ReferenceGuidedSampler (QGPO-shaped nets)",
                note="local stand-in for issue 8's QGPO targets (1/3 latency at batch 1, 2x at 50)",
            )
        )
        compiled = _find(samp, impl="ours, torch.compile", batch=batch, **key)
        if compiled is not None:
            out.append(
                _ratio_entry(
                    f"guided sampling {tag} with torch.compile vs eager, batch {batch} (speed-up)",
                    speed(compiled, ours),
                    numerator="AEPOActor(compile=True)",
                    denominator="AEPOActor",
                )
            )
        qgpo_ms = QGPO_REFERENCE["guided_sampling_ms_per_call"].get(str(batch))
        if batch == 1:
            out.append(
                _ratio_entry(
                    f"guided sampling latency {tag}, batch 1 (ms)",
                    field(ours, "ms"),
                    target=TARGETS["sampling_batch1_ms_max"],
                    direction="<=",
                    numerator="AEPOActor ms/call",
                )
            )
        if batch == 50 and qgpo_ms:
            out.append(
                _ratio_entry(
                    f"guided sampling {tag} actions/s vs QGPO published (89 ms/call), batch 50",
                    (
                        qgpo_ms / ours["ms"],
                        qgpo_ms / ours["cpu_ms"],
                        qgpo_ms / ours["ms_min"],
                    )
                    if ours
                    else None,
                    target=TARGETS["sampling_batch50_speedup_vs_qgpo_min"],
                    numerator="AEPOActor actions/s",
                    denominator="QGPO published actions/s (issue 8, other load)",
                )
            )
        if batch >= 800:
            out.append(
                _ratio_entry(
                    f"guided sampling {tag} fraction of matmul peak, batch {batch}",
                    field(ours, "frac_peak"),
                    target=TARGETS["sampling_batch800_frac_peak_min"],
                    numerator="AEPOActor GFLOP/s",
                    denominator="matmul peak GFLOP/s",
                )
            )
    for batch in cfg.sample_batches:
        for steps_ in cfg.steps:
            k = {"name": "unguided", "batch": batch, "steps": steps_}
            out.append(
                _ratio_entry(
                    f"unguided sampling vs TorchRL DiffusionActor, NFE {steps_}, batch {batch} (speed-up)",
                    speed(
                        _find(samp, impl="ours", **k),
                        _find(samp, impl="torchrl DiffusionActor", **k),
                    ),
                    numerator="AEPOActor(energy=None), DDIM",
                    denominator="DiffusionActor DDPM",
                )
            )
    ev = results["eval"]
    out.append(
        _ratio_entry(
            "eval env-steps/s: TorchRL rollout with AEPOActor vs research-style loop",
            speed(_find(ev, impl="ours"), _find(ev, impl="reference")),
            numerator="env.rollout(policy=AEPOActor)",
            denominator="gymnasium loop + ReferenceGuidedSampler",
        )
    )
    return out


# ============================================================================ report
def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _config_str(row: dict[str, Any]) -> str:
    keys = ("batch", "order", "steps", "candidates", "width", "num_envs", "env")
    return " ".join(f"{k}={row[k]}" for k in keys if row.get(k) is not None)


def _print_rows(title: str, rows: Sequence[dict[str, Any]], file=sys.stdout) -> None:
    print(f"\n## {title}", file=file)
    header = f"{'name':<20} {'impl':<26} {'config':<28} {'ms':>9} {'ms_min':>9} {'per_s':>10} {'GFLOP/s':>8} {'%peak':>6} {'cpu_ms':>9} {'%pk_cpu':>7} {'dRSS MB':>8}"
    print(header, file=file)
    print("-" * len(header), file=file)
    for r in rows:
        if r["status"] != "ok":
            print(
                f"{r['name']:<20} {r['impl']:<26} {_config_str(r):<28} SKIPPED: {r.get('reason', '')}",
                file=file,
            )
            continue
        print(
            f"{r['name']:<20} {r['impl']:<26} {_config_str(r):<28} {_fmt(r['ms'], '9.2f')} "
            f"{_fmt(r.get('ms_min'), '9.2f')} "
            f"{_fmt(r['per_s'], '10.1f')} {_fmt(r.get('gflops'), '8.1f')} "
            f"{_pct(r.get('frac_peak'), 6)} {_fmt(r.get('cpu_ms'), '9.2f')} "
            f"{_pct(r.get('frac_peak_cpu'), 7)} {_fmt(r.get('rss_delta_mb'), '8.1f')}",
            file=file,
        )


def _pct(frac: float | None, width: int) -> str:
    return "-".rjust(width) if frac is None else format(100 * frac, f"{width}.1f")


def _print_ratios(ratios: Sequence[dict[str, Any]], file=sys.stdout) -> None:
    print("\n## Ratios and targets", file=file)
    for r in ratios:
        target = "" if r["target"] is None else f"  target {r['direction']} {r['target']:g}"
        met = "" if r["met"] is None else ("  MET" if r["met"] else "  not met")
        cpu = "" if r.get("value_cpu") is None else f"  [cpu-time {r['value_cpu']:.3f}"
        if r.get("value_fastest_call") is not None:
            cpu += f", fastest call {r['value_fastest_call']:.3f}]"
        elif cpu:
            cpu += "]"
        print(f"{r['name']:<88} {_fmt(r['value'], '8.3f')}{target}{met}{cpu}", file=file)


def _md_rows(rows: Sequence[dict[str, Any]]) -> list[str]:
    out = [
        "| name | impl | config | ms (best round) | ms (fastest call) | CPU ms | per s "
        "| GFLOP/s | % peak | % peak (CPU time) | dRSS MB |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        if r["status"] != "ok":
            out.append(
                f"| {r['name']} | {r['impl']} | {_config_str(r)} | skipped: {r.get('reason', '')} "
                "| | | | | | | |"
            )
            continue
        out.append(
            f"| {r['name']} | {r['impl']} | {_config_str(r)} | {_fmt(r['ms'], '.2f')} "
            f"| {_fmt(r.get('ms_min'), '.2f')} | {_fmt(r.get('cpu_ms'), '.2f')} "
            f"| {_fmt(r['per_s'], '.1f')} | {_fmt(r.get('gflops'), '.1f')} "
            f"| {_pct(r.get('frac_peak'), 1).strip()} | {_pct(r.get('frac_peak_cpu'), 1).strip()} "
            f"| {_fmt(r.get('rss_delta_mb'), '.1f')} |"
        )
    return out


def to_markdown(results: dict[str, Any]) -> str:
    """The tables of a results dict as Markdown (for ``docs/performance.md``)."""
    meta, peak = results["meta"], results["peak"] or {}
    lines = [
        f"Run: {meta.get('timestamp')}, commit {meta.get('git_commit')}, {meta.get('cpu')} "
        f"({meta.get('cpu_count')} CPUs), {meta.get('threads')} threads, torch {meta.get('torch')}, "
        f"torchrl {meta.get('torchrl')}, tensordict {meta.get('tensordict')}; load average "
        f"{meta.get('loadavg_start')} at start, {meta.get('loadavg_end')} at end; "
        f"wall {_fmt(meta.get('wall_seconds'), '.0f')} s.",
        "",
        f"fp32 matmul peak ({peak.get('size')}^3): {_fmt(peak.get('gflops'), '.1f')} GFLOP/s "
        f"(best round), {_fmt(peak.get('gflop_per_cpu_s'), '.1f')} GFLOP per CPU-second, "
        f"{_fmt(peak.get('gflops_fastest_call'), '.1f')} GFLOP/s (fastest single call).",
        "",
    ]
    sections = [("Training", results["training"]), ("Sampling", results["sampling"])]
    sections += [("Evaluation", results["eval"])]
    sections += [(f"Scaling: {k}", v) for k, v in results["scaling"].items()]
    for title, rows in sections:
        if rows:
            lines += [f"#### {title}", "", *_md_rows(rows), ""]
    lines += [
        "#### Ratios and targets",
        "",
        "| ratio | best round | CPU time | fastest call | target | met |",
        "|---|--:|--:|--:|--:|---|",
    ]
    for r in results["ratios"]:
        target = "" if r["target"] is None else f"{r['direction']} {r['target']:g}"
        met = "" if r["met"] is None else ("yes" if r["met"] else "no")
        lines.append(
            f"| {r['name']} | {_fmt(r['value'], '.3f')} | {_fmt(r.get('value_cpu'), '.3f')} "
            f"| {_fmt(r.get('value_fastest_call'), '.3f')} | {target} | {met} |"
        )
    return "\n".join(lines) + "\n"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
