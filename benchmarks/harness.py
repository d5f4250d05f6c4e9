"""Benchmark harness: configuration, timing, peak RSS, the FLOP model and the matmul peak.

See :mod:`benchmarks` for what is measured and how; the cases are in
:mod:`benchmarks.cases`, the ratios and tables in :mod:`benchmarks.report`.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import re
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

SCHEMA_VERSION = 1
BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

# Reference numbers and targets are data (benchmarks/targets.json), not code.
_TARGETS_FILE = json.loads((BENCH_DIR / "targets.json").read_text())
QGPO_REFERENCE: dict[str, Any] = _TARGETS_FILE["qgpo_reference"]
TARGETS: dict[str, float] = _TARGETS_FILE["targets"]

FLOP_RULE = (
    "FLOPs from parameter counts P (biases included): forward 2*P*B, forward+backward 6*P*B, "
    "forward+input-gradient 4*P*B. Diffusion update 6*P_eps*B; expectile update "
    "8*(P_Q+P_V)*B; energy update 2*P_eps*B + 4*P_Q*B + 6*P_f*B; full AEPO update = sum; "
    "IQL full update adds 6*P_actor*B; guided sampling NFE*(2*P_eps + 4*P_f)*B "
    "(+2*P_Q*B*K with K candidates); unguided/DDPM sampling NFE*2*P_eps*B. Algorithmic "
    "minimum; recomputation and non-matmul work count as lost efficiency."
)


# ============================================================================ configuration
@dataclasses.dataclass
class BenchConfig:
    """What to run and how long to time it. ``quick()`` is the CI smoke configuration."""

    quick: bool = False
    threads: int = 2
    env_name: str = "Hopper-v5"
    obs_dim: int = 11
    action_dim: int = 3
    optim: str = "default"  # torch.optim.Adam flavour: default | foreach | fused
    compile: bool = False  # also time torch.compile'd losses and actor (compiles in the warm-up)
    sections: tuple[str, ...] = ("peak", "training", "sampling", "eval", "scaling")
    # timing
    warmup: int = 1
    repeats: int = 3
    min_time: float = 0.2
    max_calls: int = 200
    # matmul peak
    peak_size: int = 2048
    peak_repeats: int = 6
    # training
    train_batches: tuple[int, ...] = (256, 2048)
    posterior_times: int = 50
    posterior_samples: int = 512
    # sampling
    sample_batches: tuple[int, ...] = (1, 50, 800)
    orders: tuple[int, ...] = (1, 2, 3)
    steps: tuple[int, ...] = (5, 10, 15)
    reference_large_batch_steps: tuple[int, ...] = (15,)  # reference at batch >= 800: these only
    qgpo_order: int = 2  # QGPO's sampler: the configuration of the targets, eval and scaling
    qgpo_steps: int = 15
    # eval
    eval_envs: int = 10
    eval_steps: int = 50
    # scaling
    scale_batches: tuple[int, ...] = (64, 512, 1024, 4096)
    scale_sample_batches: tuple[int, ...] = (10, 200, 3200)
    scale_widths: tuple[float, ...] = (0.5, 1.0, 2.0)
    scale_candidates: tuple[int, ...] = (1, 4, 16, 32)
    scale_candidate_states: int = 10
    scale_width_train_batch: int = 256
    scale_width_sample_batch: int = 50

    @classmethod
    def quick_config(cls, **overrides: Any) -> BenchConfig:
        values = dict(
            quick=True,
            threads=1,  # 2 OpenMP threads on a loaded 2-core box can stall for seconds
            warmup=1,
            repeats=1,
            min_time=0.0,
            max_calls=1,
            peak_size=768,
            peak_repeats=2,
            train_batches=(64,),
            posterior_times=4,
            posterior_samples=64,
            sample_batches=(1, 8),
            orders=(2,),
            steps=(5,),
            reference_large_batch_steps=(5,),
            qgpo_steps=5,
            eval_envs=2,
            eval_steps=5,
            scale_batches=(32,),
            scale_sample_batches=(4,),
            scale_widths=(0.5,),
            scale_candidates=(1, 2),
            scale_candidate_states=2,
            scale_width_train_batch=32,
            scale_width_sample_batch=4,
        )
        values.update(overrides)
        return cls(**values)


# ============================================================================ small utilities
def _status_kb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.M)
        return float(match.group(1)) if match else None
    except OSError:
        return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def _peak_rss_mb() -> float:
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def _n_params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _load_reference():
    """The plain-PyTorch reference, :mod:`benchmarks.reference_aepo`."""
    from benchmarks import reference_aepo

    return reference_aepo


def _adam(params, lr: float, flavour: str) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters for the optimiser")
    if flavour == "foreach":
        return torch.optim.Adam(params, lr=lr, foreach=True)
    if flavour == "fused":
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr)


def _unique(params) -> list[nn.Parameter]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _frozen(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)


# ============================================================================ networks and data
def _widths(scale: float) -> tuple[int, int, int]:
    return tuple(max(8, int(round(w * scale))) for w in (512, 256, 128))


def _nets(cfg: BenchConfig, *, width: float = 1.0) -> dict[str, nn.Module]:
    from torchrl_aepo.nets import EnergyNetwork, TwinQNetwork, UMLPNoisePredictor, ValueNetwork

    s, d = cfg.obs_dim, cfg.action_dim
    hidden = (max(8, int(round(256 * width))),) * 3
    return {
        "noise": UMLPNoisePredictor(d, s, widths=_widths(width)),
        "q": TwinQNetwork(s, d, num_cells=hidden),
        "v": ValueNetwork(s, num_cells=hidden),
        "energy": EnergyNetwork(d, s, num_cells=hidden),
    }


def _td_batch(cfg: BenchConfig, batch: int):
    from tensordict import TensorDict

    s, d = cfg.obs_dim, cfg.action_dim
    g = torch.Generator().manual_seed(batch)
    terminated = torch.rand(batch, 1, generator=g) < 0.01
    return TensorDict(
        {
            "observation": torch.randn(batch, s, generator=g),
            "action": torch.rand(batch, d, generator=g) * 2 - 1,
            "next": {
                "observation": torch.randn(batch, s, generator=g),
                "reward": torch.randn(batch, 1, generator=g),
                "terminated": terminated,
                "done": terminated.clone(),
            },
        },
        batch_size=[batch],
    )


def _dict_batch(td) -> dict[str, Tensor]:
    return {
        "obs": td["observation"],
        "act": td["action"],
        "rew": td["next", "reward"],
        "next_obs": td["next", "observation"],
        "term": td["next", "terminated"].float(),
    }


def _action_spec(cfg: BenchConfig):
    from torchrl.data import Bounded

    return Bounded(-1.0, 1.0, shape=(cfg.action_dim,))


# ---------------------------------------------------------------------------- FLOP model
def _flops_diffusion(p_eps: int, b: int) -> float:
    return 6.0 * p_eps * b


def _flops_expectile(p_q: int, p_v: int, b: int) -> float:
    return 8.0 * (p_q + p_v) * b


def _flops_energy(p_eps: int, p_q: int, p_f: int, b: int) -> float:
    return (2.0 * p_eps + 4.0 * p_q + 6.0 * p_f) * b


def _flops_full(p: dict[str, int], b: int) -> float:
    return (
        _flops_diffusion(p["noise"], b)
        + _flops_expectile(p["q"], p["v"], b)
        + _flops_energy(p["noise"], p["q"], p["energy"], b)
    )


def _flops_guided(p_eps: int, p_f: int, nfe: int, b: int) -> float:
    return nfe * (2.0 * p_eps + 4.0 * p_f) * b


def _params(nets: dict[str, nn.Module]) -> dict[str, int]:
    return {k: _n_params(v) for k, v in nets.items()}


# ============================================================================ cases and timing
Built = tuple[Callable[[], Any], float, float]  # (run, flops per call, items per call)


@dataclasses.dataclass
class Case:
    """One configuration: ``build()`` returns ``(run, flops_per_call, items_per_call)``."""

    section: str
    name: str
    impl: str
    params: dict[str, Any]
    build: Callable[[], Built]
    unit: str = "updates"  # what ``items`` counts: updates, actions, env_steps, ...
    note: str = ""


def _row(case: Case, status: str, **values: Any) -> dict[str, Any]:
    row = {
        "section": case.section,
        "name": case.name,
        "impl": case.impl,
        **case.params,
        "unit": case.unit,
        "status": status,
    }
    if case.note:
        row["note"] = case.note
    row.update(values)
    return row


class Runner:
    """Builds, warms up and times groups of cases; collects rows and skips."""

    def __init__(self, cfg: BenchConfig, peak: dict[str, float] | None) -> None:
        self.cfg = cfg
        peak = peak or {}
        self.peak = peak.get("gflops")
        self.peak_cpu = peak.get("gflop_per_cpu_s")
        self.peak_min = peak.get("gflops_fastest_call")
        self.probes: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.rss_reset_works = _reset_peak_rss()

    def measure(
        self,
        cases: Sequence[Case],
        *,
        repeats: int | None = None,
        min_time: float | None = None,
        warmup: int | None = None,
    ) -> list[dict[str, Any]]:
        cfg = self.cfg
        repeats = cfg.repeats if repeats is None else repeats
        min_time = cfg.min_time if min_time is None else min_time
        warmup = cfg.warmup if warmup is None else warmup
        # A matmul probe timed in the same interleaved rounds: the rows' fractions of peak use
        # it, so that machine load affects the numerator and the denominator alike.
        size = cfg.peak_size
        probe = Case(
            "peak",
            "matmul probe",
            "torch.mm",
            {"size": size},
            lambda: _build_probe(size),
            "matmuls",
        )
        cases = [probe, *cases]
        rows: list[dict[str, Any] | None] = [None] * len(cases)
        live = []
        for i, case in enumerate(cases):
            torch.manual_seed(1234 + i)
            try:
                run, flops, items = case.build()
            except Exception as exc:  # a piece that has not landed, or a changed signature
                rows[i] = self._skip(case, exc)
                continue
            try:
                gc.collect()
                rss_before = _rss_mb()
                _reset_peak_rss()
                for _ in range(max(1, warmup)):
                    run()
                peak = _peak_rss_mb()
            except Exception as exc:
                rows[i] = self._skip(case, exc)
                del run
                continue
            live.append(
                {
                    "i": i,
                    "case": case,
                    "run": run,
                    "flops": flops,
                    "items": items,
                    "peak": peak,
                    "delta": None if rss_before is None else max(0.0, peak - rss_before),
                    "samples": [],
                    "cpu_samples": [],
                    "calls": 0,
                }
            )
        for _ in range(max(1, repeats)):
            for entry in live:
                if entry.get("error"):
                    continue
                run, n, fastest = entry["run"], 0, math.inf
                try:
                    start, cpu_start = time.perf_counter(), time.process_time()
                    last = start
                    while True:
                        run()
                        n += 1
                        now = time.perf_counter()
                        fastest = min(fastest, now - last)
                        last = now
                        elapsed = now - start
                        if elapsed >= min_time or n >= cfg.max_calls:
                            break
                    cpu = time.process_time() - cpu_start
                except Exception as exc:
                    entry["error"] = exc
                    continue
                entry["samples"].append(elapsed / n)
                entry["cpu_samples"].append(cpu / n)
                entry["fastest"] = min(entry.get("fastest", math.inf), fastest)
                entry["calls"] += n
        peaks = (self.peak, self.peak_cpu, self.peak_min)
        if live and live[0]["i"] == 0 and live[0]["samples"] and not live[0].get("error"):
            p = live[0]
            peaks = (
                p["flops"] / min(p["samples"]) / 1e9,
                p["flops"] / max(min(p["cpu_samples"]), 1e-9) / 1e9,
                p["flops"] / p["fastest"] / 1e9,
            )
            # a probe slower than the run's peak section means load during this group
            self.probes.append(
                {"sections": sorted({c.section for c in cases[1:]}), "size": size}
                | dict(
                    zip(("gflops", "gflop_per_cpu_s", "gflops_fastest_call"), peaks, strict=True)
                )
            )
        for entry in live:
            case = entry["case"]
            if entry["i"] == 0:
                continue
            if entry.get("error") is not None or not entry["samples"]:
                rows[entry["i"]] = self._skip(case, entry.get("error") or RuntimeError("no sample"))
                continue
            best = min(entry["samples"])
            median = statistics.median(entry["samples"])
            cpu = min(entry["cpu_samples"])
            flops = entry["flops"]
            rates = (
                flops / best / 1e9,
                flops / cpu / 1e9 if cpu > 0 else None,
                flops / entry["fastest"] / 1e9,
            )
            frac = [
                (r / pk) if (flops and r and pk) else None
                for r, pk in zip(rates, peaks, strict=True)
            ]
            rows[entry["i"]] = _row(
                case,
                "ok",
                ms=best * 1e3,
                ms_median=median * 1e3,
                per_s=entry["items"] / best,
                gflop_per_call=flops / 1e9 if flops else None,
                gflops=rates[0] if flops else None,
                frac_peak=frac[0],
                ms_min=entry["fastest"] * 1e3,
                frac_peak_min=frac[2],
                cpu_ms=cpu * 1e3,
                cpu_per_s=entry["items"] / cpu if cpu > 0 else None,
                frac_peak_cpu=frac[1],
                peak_probe_gflops=peaks[0],
                rss_peak_mb=entry["peak"],
                rss_delta_mb=entry["delta"],
                calls=entry["calls"],
            )
        live.clear()
        gc.collect()
        return [r for r in rows[1:] if r is not None]

    def _skip(self, case: Case, exc: BaseException) -> dict[str, Any]:
        reason = _short_error(exc)
        if isinstance(exc, ImportError | AttributeError | FileNotFoundError):
            reason = f"not available (not landed yet?): {reason}"
        if os.environ.get("TORCHRL_AEPO_BENCH_TRACEBACK"):
            traceback.print_exception(exc)
        self.skipped.append(
            {"section": case.section, "name": case.name, "impl": case.impl, **case.params}
            | {"reason": reason}
        )
        return _row(case, "skipped", reason=reason)


# ============================================================================ matmul peak
def _build_probe(size: int) -> Built:
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    return (lambda: torch.mm(a, b, out=out)), 2.0 * size**3, 1


def measure_peak(cfg: BenchConfig) -> dict[str, Any]:
    """fp32 GFLOP/s of a large square matmul, plus a few MLP-shaped matmuls for context."""

    def best_gflops(
        m: int, k: int, n: int, repeats: int, min_time: float
    ) -> tuple[float, float, float]:
        a, b = torch.randn(m, k), torch.randn(k, n)
        out = torch.empty(m, n)
        torch.mm(a, b, out=out)
        best = best_cpu = fastest = math.inf
        for _ in range(repeats):
            calls, start, cpu_start = 0, time.perf_counter(), time.process_time()
            last = start
            while True:
                torch.mm(a, b, out=out)
                calls += 1
                now = time.perf_counter()
                fastest, last = min(fastest, now - last), now
                if now - start >= min_time:
                    break
            best = min(best, (now - start) / calls)
            best_cpu = min(best_cpu, (time.process_time() - cpu_start) / calls)
        flops = 2.0 * m * k * n
        return flops / best / 1e9, flops / max(best_cpu, 1e-9) / 1e9, flops / fastest / 1e9

    n = cfg.peak_size
    peak, peak_cpu, peak_min = best_gflops(n, n, n, cfg.peak_repeats, 0.0 if cfg.quick else 0.2)
    # the fastest single call of a mid-size matmul: short enough to run between preemptions
    # on a loaded machine (used with the rows' fastest single calls)
    for size in (512, 1024):
        if size < n:
            peak_min = max(
                peak_min, best_gflops(size, size, size, 3, 0.05 if cfg.quick else 0.3)[2]
            )
    shapes = []
    for m, k, o in ((1, 512, 512), (50, 512, 512), (256, 256, 256), (2048, 512, 512)):
        if cfg.quick and m > 256:
            continue
        g, g_cpu, _ = best_gflops(m, k, o, 2 if cfg.quick else 3, 0.01 if cfg.quick else 0.1)
        shapes.append(
            {
                "m": m,
                "k": k,
                "n": o,
                "gflops": g,
                "frac_peak": g / peak,
                "gflop_per_cpu_s": g_cpu,
                "frac_peak_cpu": g_cpu / peak_cpu,
            }
        )
    return {
        "gflops": peak,
        "gflop_per_cpu_s": peak_cpu,
        "gflops_fastest_call": peak_min,
        "size": n,
        "threads": torch.get_num_threads(),
        "shapes": shapes,
    }
