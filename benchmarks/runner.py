"""``python -m benchmarks``: run the sections, write the JSON, print the report."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.cases import (
    _build_posterior_estimate,
    _eval_cases,
    _sampling_cases,
    _scaling_cases,
    _training_cases,
)
from benchmarks.harness import (
    FLOP_RULE,
    QGPO_REFERENCE,
    SCHEMA_VERSION,
    TARGETS,
    BenchConfig,
    Case,
    Runner,
    _load_reference,
    _n_params,
    _nets,
    _params,
    _reset_peak_rss,
    _short_error,
    measure_peak,
)
from benchmarks.report import (
    _compute_ratios,
    _cpu_model,
    _git_commit,
    _print_ratios,
    _print_rows,
    to_markdown,
)
from torchrl_aepo.atomic import write_text_atomic


def _meta(cfg: BenchConfig) -> dict[str, Any]:
    import tensordict
    import torchrl

    meta = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchrl": torchrl.__version__,
        "tensordict": tensordict.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "config": dataclasses.asdict(cfg),
        "rss_reset_supported": _reset_peak_rss(),
    }
    try:
        import torchrl_aepo

        meta["torchrl_aepo"] = getattr(torchrl_aepo, "__version__", None)
    except ImportError:
        meta["torchrl_aepo"] = None
    return meta


def _networks_info(cfg: BenchConfig) -> dict[str, Any]:
    info: dict[str, Any] = {"obs_dim": cfg.obs_dim, "action_dim": cfg.action_dim}
    try:
        info["ours"] = _params(_nets(cfg))
    except Exception as exc:
        info["ours"] = {"error": _short_error(exc)}
    try:
        ref = _load_reference()
        for style in ("library", "research"):
            nets = ref.make_networks(cfg.action_dim, cfg.obs_dim, style=style)
            info[f"reference-{style}"] = {k: _n_params(v) for k, v in nets.items()}
    except Exception as exc:
        info["reference"] = {"error": _short_error(exc)}
    return info


def _resolve_env_dims(cfg: BenchConfig) -> str | None:
    try:
        import gymnasium as gym

        env = gym.make(cfg.env_name)
        cfg.obs_dim = int(env.observation_space.shape[-1])
        cfg.action_dim = int(env.action_space.shape[-1])
        env.close()
        return None
    except Exception as exc:
        return f"could not create {cfg.env_name} ({_short_error(exc)}); using s={cfg.obs_dim}, d={cfg.action_dim}"


def run(
    cfg: BenchConfig | None = None, *, out: str | os.PathLike | None = None, verbose: bool = True
) -> dict[str, Any]:
    """Run the benchmark described by ``cfg`` and return (and optionally write) the results."""
    cfg = cfg or BenchConfig()
    start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    env_note = _resolve_env_dims(cfg)
    stream = sys.stdout if verbose else open(os.devnull, "w")  # noqa: SIM115
    results: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "meta": _meta(cfg),
        "flop_rule": FLOP_RULE,
        "qgpo_reference": QGPO_REFERENCE,
        "targets": TARGETS,
        "networks": _networks_info(cfg),
        "peak": None,
        "training": [],
        "sampling": [],
        "eval": [],
        "scaling": {"batch": [], "width": [], "candidates": []},
        "ratios": [],
        "skipped": [],
        "notes": [env_note] if env_note else [],
        "section_seconds": {},
    }
    print(
        f"# benchmarks ({'quick' if cfg.quick else 'full'}), {cfg.threads} threads, "
        f"{results['meta']['cpu']}, load {results['meta']['loadavg_start']}",
        file=stream,
    )
    t0 = time.perf_counter()
    results["peak"] = measure_peak(cfg)
    results["section_seconds"]["peak"] = time.perf_counter() - t0
    peak = results["peak"]["gflops"]
    print(
        f"\nfp32 matmul peak: {peak:.1f} GFLOP/s ({cfg.peak_size}^3, {cfg.threads} threads); "
        f"per CPU-second {results['peak']['gflop_per_cpu_s']:.1f}; "
        f"fastest single call {results['peak']['gflops_fastest_call']:.1f}",
        file=stream,
    )
    for s in results["peak"]["shapes"]:
        print(
            f"  mm {s['m']}x{s['k']} @ {s['k']}x{s['n']}: {s['gflops']:.1f} GFLOP/s ({100 * s['frac_peak']:.0f}%)",
            file=stream,
        )
    runner = Runner(cfg, results["peak"])

    if "training" in cfg.sections:
        t0 = time.perf_counter()
        for batch in cfg.train_batches:
            results["training"] += runner.measure(_training_cases(cfg, batch))
        results["training"] += runner.measure(
            [
                Case(
                    "training",
                    "PosteriorStatistics.estimate",
                    "ours",
                    {"num_times": cfg.posterior_times, "samples_per_time": cfg.posterior_samples},
                    lambda: _build_posterior_estimate(cfg),
                    unit="network evals",
                    note="one-off Gamma(t) table; amortised over its refresh period",
                )
            ],
            repeats=1,
            min_time=0.0,
        )
        results["section_seconds"]["training"] = time.perf_counter() - t0
        _print_rows("Training (updates/s, optimizer step included)", results["training"], stream)
    if "sampling" in cfg.sections:
        t0 = time.perf_counter()
        for batch in cfg.sample_batches:
            results["sampling"] += runner.measure(_sampling_cases(cfg, batch))
        results["section_seconds"]["sampling"] = time.perf_counter() - t0
        _print_rows("Sampling (actions/s)", results["sampling"], stream)
    if "eval" in cfg.sections:
        t0 = time.perf_counter()
        results["eval"] = runner.measure(
            _eval_cases(cfg), repeats=min(cfg.repeats, 2), min_time=0.0
        )
        results["section_seconds"]["eval"] = time.perf_counter() - t0
        _print_rows("Evaluation (env-steps/s)", results["eval"], stream)
    if "scaling" in cfg.sections:
        t0 = time.perf_counter()
        for key, cases in _scaling_cases(cfg).items():
            results["scaling"][key] = runner.measure(cases, repeats=min(cfg.repeats, 2))
            _print_rows(f"Scaling: {key}", results["scaling"][key], stream)
        results["section_seconds"]["scaling"] = time.perf_counter() - t0

    results["ratios"] = _compute_ratios(results, cfg)
    _print_ratios(results["ratios"], stream)
    results["skipped"] = runner.skipped
    results["peak"]["probes"] = runner.probes
    results["meta"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["meta"]["wall_seconds"] = time.perf_counter() - start
    print(
        f"\nwall {results['meta']['wall_seconds']:.1f} s, load at end {results['meta']['loadavg_end']}, "
        f"{len(runner.skipped)} skipped",
        file=stream,
    )
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(results, indent=1, default=str) + "\n")
        print(f"wrote {path}", file=stream)
    if stream is not sys.stdout:
        stream.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark AEPO's hot paths against TorchRL peers and a plain-PyTorch reference.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke run (< ~30 s, no meaningful timings)"
    )
    parser.add_argument("--out", default=None, help="write the results as JSON to this file")
    parser.add_argument(
        "--markdown", default=None, help="also write the tables as Markdown to this file"
    )
    parser.add_argument(
        "--from-json",
        default=None,
        help="do not run: render the tables of an earlier --out file (with --markdown)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 2)")
    parser.add_argument(
        "--env", default=None, help="gymnasium env id for dims and eval (default Hopper-v5)"
    )
    parser.add_argument(
        "--optim",
        choices=("default", "foreach", "fused"),
        default=None,
        help="torch.optim.Adam implementation used by every training case",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the torch.compile'd AEPO update and guided sampler (QGPO's sampler)",
    )
    parser.add_argument(
        "--sections", default=None, help="comma-separated subset of training,sampling,eval,scaling"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per configuration")
    parser.add_argument("--min-time", type=float, default=None, help="seconds per timed round")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.threads is not None:
        overrides["threads"] = args.threads
    if args.env is not None:
        overrides["env_name"] = args.env
    if args.optim is not None:
        overrides["optim"] = args.optim
    if args.compile:
        overrides["compile"] = True
    if args.sections is not None:
        overrides["sections"] = (
            "peak",
            *[s.strip() for s in args.sections.split(",") if s.strip()],
        )
    if args.repeats is not None:
        overrides["repeats"] = args.repeats
    if args.min_time is not None:
        overrides["min_time"] = args.min_time
    cfg = BenchConfig.quick_config(**overrides) if args.quick else BenchConfig(**overrides)
    if args.from_json is not None:
        results = json.loads(Path(args.from_json).read_text())
    else:
        results = run(cfg, out=args.out)
    if args.markdown is not None:
        write_text_atomic(args.markdown, to_markdown(results))
    elif args.from_json is not None:
        print(to_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
