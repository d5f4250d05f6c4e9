"""Benchmark harness: every hot path of AEPO next to its peers, as a table and a JSON file.

Run ``python -m torchrl_aepo.bench [--quick] [--out FILE.json]``. It measures, in one process
and one run (so that ratios are taken under the same machine load):

* the machine's fp32 matmul peak (GFLOP/s, large square ``torch.mm``) with the chosen threads;
* **training**: updates/s of :class:`~torchrl_aepo.objectives.DiffusionLoss`,
  ``ExpectileLoss`` (+ ``SoftUpdate``), ``AnalyticEnergyLoss`` and the full AEPO update (the
  three losses, their Adam steps and the target update) at batch 256 and 2048 with the
  paper's networks; the ``Gamma(t)`` table estimate;
* **sampling**: guided-sampling actions/s and ms/call of ``AEPOActor`` at batch 1, 50, 800 for
  DPM-Solver++ orders 1/2/3 x 5/10/15 steps;
* **eval**: env-steps/s of a vectorised gymnasium MuJoCo env (wrapped by TorchRL) with the
  actor in the loop;
* **peers**, timed interleaved with ours: TorchRL's ``IQLLoss`` (full update, and its critic
  part alone), ``DiffusionBCLoss`` and ``DiffusionActor`` (DDPM at equal NFE, same noise
  network through an adapter), and the plain-PyTorch research-style reference of
  ``bench/reference_aepo.py`` (with our networks, and with QGPO-shaped networks as the local
  stand-in for the published QGPO code);
* **scaling**: updates/s and sampling vs batch size, network width and number of candidates;
  peak RSS per configuration.

Every figure is also given as a fraction of the measured matmul peak. FLOPs are counted from
parameter counts (``P`` = parameters of a network, biases included): a forward pass costs
``2 P B`` FLOPs for a batch ``B``, a forward + backward ``6 P B``, a forward + input gradient
(no weight gradients) ``4 P B``. Per update: diffusion ``6 P_eps B``; expectile
``8 (P_Q + P_V) B`` (target-Q forward, V forward+backward, V(s') forward, Q forward+backward);
energy ``2 P_eps B + 4 P_Q B + 6 P_f B``; the full update is the sum. Guided sampling costs
``NFE (2 P_eps + 4 P_f) B`` (+ ``2 P_Q B K`` for candidate selection), unguided ``NFE 2 P_eps B``.
These are the algorithmic minimum: recomputation (e.g. a second target-Q pass) is charged to
the implementation as lost efficiency. Non-matmul work (activations, Adam) is not counted.

Timing: each configuration is warmed up, then timed in ``repeats`` rounds, interleaved with the
configurations it is compared to; a round runs the callable until ``min_time`` has passed.
The best round is reported (``ms``), with the median (``ms_median``). Peak RSS: the process's
high-water mark is reset (``/proc/self/clear_refs``) before a configuration's warm-up, which
allocates what it needs; ``rss_peak_mb`` is the process peak during it and ``rss_delta_mb``
the growth over the resident size before it.

Pieces that are not importable (or fail to build) are skipped with the reason in the table
and under ``"skipped"`` in the JSON; the run never fails because of one configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from torchrl_aepo.atomic import write_text_atomic

__all__ = ["BenchConfig", "run", "main", "to_markdown", "QGPO_REFERENCE", "TARGETS"]

SCHEMA_VERSION = 1

# Issue 8: the published QGPO code measured on the project's machine (2 threads), same networks
# (1.63M noise net, 3x256 twin Q, 4x256 energy), 15-NFE order-2 guided DPM-Solver.
QGPO_REFERENCE = {
    "source": "issue 8 (published QGPO code, this machine class, 2 threads)",
    "behaviour_step_ms": {"256": 39.0, "4096": 332.0},
    "guided_sampling_ms_per_call": {"1": 38.0, "50": 89.0, "800": 563.0},
    "matmul_peak_gflops_2_threads": 120.0,
}

# Issue 8's targets.
TARGETS = {
    "sampling_batch1_ms_max": 13.0,
    "sampling_batch50_speedup_vs_qgpo_min": 2.0,
    "sampling_batch800_frac_peak_min": 0.85,
    "training_large_batch_frac_peak_min": 0.85,
    "training_batch256_frac_peak_min": 0.75,
    "critic_speedup_vs_iql_min": 2.0,
}

FLOP_RULE = (
    "FLOPs from parameter counts P (biases included): forward 2*P*B, forward+backward 6*P*B, "
    "forward+input-gradient 4*P*B. Diffusion update 6*P_eps*B; expectile update "
    "8*(P_Q+P_V)*B; energy update 2*P_eps*B + 4*P_Q*B + 6*P_f*B; full AEPO update = sum; "
    "IQL full update adds 6*P_actor*B; guided sampling NFE*(2*P_eps + 4*P_f)*B "
    "(+2*P_Q*B*K with K candidates); unguided/DDPM sampling NFE*2*P_eps*B. Algorithmic "
    "minimum; recomputation and non-matmul work count as lost efficiency."
)

_REPO_ROOT = Path(__file__).resolve().parents[1]
_REFERENCE_PATH = _REPO_ROOT / "bench" / "reference_aepo.py"


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
    """The plain-PyTorch reference (``bench/reference_aepo.py``), loaded from the source tree."""
    if not _REFERENCE_PATH.exists():
        raise FileNotFoundError(
            f"{_REFERENCE_PATH} not found: the reference lives in the source checkout."
        )
    name = "_torchrl_aepo_bench_reference"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _REFERENCE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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


# ============================================================================ builders: training
def _build_ours_diffusion(cfg: BenchConfig, batch: int, width: float = 1.0) -> Built:
    from torchrl_aepo.objectives.diffusion import DiffusionLoss

    nets = _nets(cfg, width=width)
    loss = DiffusionLoss(nets["noise"])
    opt = _adam(loss.parameters(), 1e-4, cfg.optim)
    td = _td_batch(cfg, batch)

    def run():
        loss(td)["loss_diffusion"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run, _flops_diffusion(_n_params(nets["noise"]), batch), 1


def _build_ours_expectile(cfg: BenchConfig, batch: int) -> Built:
    from torchrl.objectives import SoftUpdate

    from torchrl_aepo.objectives.expectile import ExpectileLoss

    nets = _nets(cfg)
    loss = ExpectileLoss(nets["q"], nets["v"], expectile=0.7, gamma=0.99)
    updater = SoftUpdate(loss, tau=0.005)
    opt = _adam(loss.parameters(), 3e-4, cfg.optim)
    td = _td_batch(cfg, batch)

    def run():
        out = loss(td)
        (out["loss_qvalue"] + out["loss_value"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        updater.step()

    p = _params(nets)
    return run, _flops_expectile(p["q"], p["v"], batch), 1


def _posterior_statistics(cfg: BenchConfig, noise: nn.Module, td, num_times=None, samples=None):
    from torchrl_aepo.objectives.posterior import PosteriorStatistics

    with torch.no_grad():
        return PosteriorStatistics.estimate(
            noise,
            td["observation"],
            td["action"],
            num_times=num_times or max(2, min(16, cfg.posterior_times)),
            samples_per_time=samples or min(128, cfg.posterior_samples),
        )


def _energy_params(loss: nn.Module, energy: nn.Module) -> list[nn.Parameter]:
    own = getattr(loss, "energy_network_params", None)
    if own is not None:
        return [p for p in own.parameters() if p.requires_grad]
    ids = {id(p) for p in energy.parameters()}
    return [p for p in loss.parameters() if id(p) in ids]


def _build_ours_energy(cfg: BenchConfig, batch: int) -> Built:
    from torchrl_aepo.objectives.energy import AnalyticEnergyLoss

    nets = _nets(cfg)
    td = _td_batch(cfg, batch)
    noise, critic = _frozen(nets["noise"]), _frozen(nets["q"])
    stats = _posterior_statistics(cfg, noise, td)
    loss = AnalyticEnergyLoss(nets["energy"], noise, critic, stats, beta=3.0)
    opt = _adam(_energy_params(loss, nets["energy"]), 3e-4, cfg.optim)

    def run():
        loss(td)["loss_energy"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    p = _params(nets)
    return run, _flops_energy(p["noise"], p["q"], p["energy"], batch), 1


def _build_ours_full(
    cfg: BenchConfig, batch: int, width: float = 1.0, compiled: bool = False
) -> Built:
    from torchrl.objectives import SoftUpdate

    from torchrl_aepo.objectives.diffusion import DiffusionLoss
    from torchrl_aepo.objectives.energy import AnalyticEnergyLoss
    from torchrl_aepo.objectives.expectile import ExpectileLoss

    nets = _nets(cfg, width=width)
    td = _td_batch(cfg, batch)
    diffusion = DiffusionLoss(nets["noise"])
    critic = ExpectileLoss(nets["q"], nets["v"], expectile=0.7, gamma=0.99)
    updater = SoftUpdate(critic, tau=0.005)
    target_critic = (
        critic.target_qvalue_network() if hasattr(critic, "target_qvalue_network") else nets["q"]
    )
    stats = _posterior_statistics(cfg, nets["noise"], td)
    energy = AnalyticEnergyLoss(nets["energy"], nets["noise"], target_critic, stats, beta=3.0)
    if compiled:  # as the recipe's compile.enabled=true
        for loss in (diffusion, critic, energy):
            loss.compile()
    taken: set[int] = set()
    groups = []
    for params, lr in (
        (diffusion.parameters(), 1e-4),
        (critic.parameters(), 3e-4),
        (_energy_params(energy, nets["energy"]), 3e-4),
    ):
        params = [p for p in _unique(params) if p.requires_grad and id(p) not in taken]
        taken.update(id(p) for p in params)
        groups.append(_adam(params, lr, cfg.optim))

    def run():
        out_c = critic(td)
        total = (
            diffusion(td)["loss_diffusion"]
            + out_c["loss_qvalue"]
            + out_c["loss_value"]
            + energy(td)["loss_energy"]
        )
        total.backward()
        for opt in groups:
            opt.step()
            opt.zero_grad(set_to_none=True)
        updater.step()

    return run, _flops_full(_params(nets), batch), 1


def _build_posterior_estimate(cfg: BenchConfig) -> Built:
    nets = _nets(cfg)
    noise = _frozen(nets["noise"])
    td = _td_batch(cfg, 4096)
    k, m = cfg.posterior_times, cfg.posterior_samples

    def run():
        _posterior_statistics(cfg, noise, td, num_times=k, samples=m)

    return run, 2.0 * _n_params(noise) * k * m, k * m


# ---------------------------------------------------------------------------- torchrl peers
class _ConcatAdapter(nn.Module):
    """Runs our noise network on TorchRL's ``cat([noisy_action, observation, t_int])`` input.

    ``t_int`` in ``[0, N)`` is mapped to the continuous time ``(t_int + 1) / N``; slicing is
    views only, so the network (and its FLOPs) is exactly ours.
    """

    def __init__(self, network: nn.Module, action_dim: int, obs_dim: int, num_steps: int):
        super().__init__()
        self.network, self.d, self.s, self.n = network, action_dim, obs_dim, float(num_steps)

    def forward(self, inputs: Tensor) -> Tensor:
        x = inputs[..., : self.d]
        obs = inputs[..., self.d : self.d + self.s]
        t = (inputs[..., -1:] + 1.0) / self.n
        return self.network(x, t, obs)


def _build_diffusion_bc(cfg: BenchConfig, batch: int) -> Built:
    from torchrl.modules import DiffusionActor
    from torchrl.objectives import DiffusionBCLoss

    nets = _nets(cfg)
    adapter = _ConcatAdapter(nets["noise"], cfg.action_dim, cfg.obs_dim, 1000)
    actor = DiffusionActor(cfg.action_dim, score_network=adapter, num_steps=1000)
    loss = DiffusionBCLoss(actor)
    opt = _adam(loss.parameters(), 1e-4, cfg.optim)
    td = _td_batch(cfg, batch)

    def run():
        loss(td)["loss_diffusion_bc"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run, _flops_diffusion(_n_params(nets["noise"]), batch), 1


def _iql(cfg: BenchConfig):
    from tensordict.nn import NormalParamExtractor, TensorDictModule
    from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
    from torchrl.objectives import IQLLoss, SoftUpdate

    s, d = cfg.obs_dim, cfg.action_dim
    cells = [256, 256, 256]
    actor_net = nn.Sequential(
        MLP(in_features=s, out_features=2 * d, num_cells=cells, activation_class=nn.ReLU),
        NormalParamExtractor(),
    )
    actor = ProbabilisticActor(
        TensorDictModule(actor_net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=_action_spec(cfg),
        distribution_class=TanhNormal,
        distribution_kwargs={"low": -1.0, "high": 1.0},
    )
    qvalue = ValueOperator(
        MLP(in_features=s + d, out_features=1, num_cells=cells, activation_class=nn.ReLU),
        in_keys=["observation", "action"],
    )
    value = ValueOperator(
        MLP(in_features=s, out_features=1, num_cells=cells, activation_class=nn.ReLU),
        in_keys=["observation"],
    )
    loss = IQLLoss(
        actor,
        qvalue,
        value,
        num_qvalue_nets=2,
        loss_function="l2",
        expectile=0.7,
        temperature=3.0,
    )
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.005)
    sizes = {
        "actor": _n_params(actor_net),
        "q": 2 * _n_params(qvalue),  # two heads (vmapped copies of the same shapes)
        "v": _n_params(value),
    }
    return loss, updater, sizes


def _build_iql_full(cfg: BenchConfig, batch: int) -> Built:
    loss, updater, sizes = _iql(cfg)
    opt = _adam(loss.parameters(), 3e-4, cfg.optim)
    td = _td_batch(cfg, batch)

    def run():
        out = loss(td.clone(False))
        (out["loss_actor"] + out["loss_qvalue"] + out["loss_value"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        updater.step()

    flops = _flops_expectile(sizes["q"], sizes["v"], batch) + 6.0 * sizes["actor"] * batch
    return run, flops, 1


def _build_iql_critic(cfg: BenchConfig, batch: int) -> Built:
    loss, updater, sizes = _iql(cfg)
    params = list(loss.qvalue_network_params.parameters()) + list(
        loss.value_network_params.parameters()
    )
    opt = _adam(params, 3e-4, cfg.optim)
    td = _td_batch(cfg, batch)

    def run():
        loss_v, _ = loss.value_loss(td)
        loss_q, _ = loss.qvalue_loss(td)
        (loss_v + loss_q).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        updater.step()

    return run, _flops_expectile(sizes["q"], sizes["v"], batch), 1


# ---------------------------------------------------------------------------- reference
def _reference_algo(cfg: BenchConfig, style: str, batch: int, width: float = 1.0):
    ref = _load_reference()
    nets = ref.make_networks(cfg.action_dim, cfg.obs_dim, style=style, widths=_widths(width))
    algo = ref.ReferenceAEPO(nets)
    td = _td_batch(cfg, batch)
    data = _dict_batch(td)
    algo.estimate_gamma(
        data["obs"], data["act"], num_times=16, samples_per_time=min(128, cfg.posterior_samples)
    )
    sizes = {
        "noise": _n_params(nets["score"]),
        "q": _n_params(nets["q"]),
        "v": _n_params(nets["v"]),
        "energy": _n_params(nets["energy"]),
    }
    return algo, data, sizes


def _build_reference(cfg: BenchConfig, batch: int, part: str, style: str = "library") -> Built:
    algo, data, p = _reference_algo(cfg, style, batch)
    if part == "full":
        return (lambda: algo.update(data)), _flops_full(p, batch), 1
    if part == "diffusion":
        return (
            (lambda: algo.diffusion_step(data["obs"], data["act"])),
            _flops_diffusion(p["noise"], batch),
            1,
        )
    if part == "critic":
        return (lambda: algo.critic_update(data)), _flops_expectile(p["q"], p["v"], batch), 1
    if part == "energy":
        return (
            (lambda: algo.energy_step(data["obs"], data["act"])),
            _flops_energy(p["noise"], p["q"], p["energy"], batch),
            1,
        )
    raise ValueError(part)


# ============================================================================ builders: sampling
def _make_actor(
    cfg: BenchConfig,
    nets: dict[str, nn.Module],
    *,
    order: int,
    steps: int,
    guided: bool = True,
    candidates: int = 1,
    compiled: bool = False,
):
    from torchrl_aepo.actor import AEPOActor
    from torchrl_aepo.diffusion.solver import DPMSolver

    kwargs: dict[str, Any] = {}
    if candidates > 1:
        kwargs = {
            "num_candidates": candidates,
            "selection": "argmax_q",
            "qvalue_network": nets["q"],
        }
    return AEPOActor(
        nets["noise"],
        nets["energy"] if guided else None,
        action_spec=_action_spec(cfg),
        guidance_scale=1.0,
        rescale=True,
        solver=DPMSolver(order=order, steps=steps),
        compile=compiled,
        **kwargs,
    )


def _sampling_nets(cfg: BenchConfig, width: float = 1.0) -> dict[str, nn.Module]:
    return {k: _frozen(v) for k, v in _nets(cfg, width=width).items()}


def _build_ours_sampling(
    cfg: BenchConfig,
    batch: int,
    order: int,
    steps: int,
    *,
    guided: bool = True,
    width: float = 1.0,
    candidates: int = 1,
    compiled: bool = False,
) -> Built:
    from tensordict import TensorDict

    nets = _sampling_nets(cfg, width)
    actor = _make_actor(
        cfg,
        nets,
        order=order,
        steps=steps,
        guided=guided,
        candidates=candidates,
        compiled=compiled,
    )
    td = TensorDict({"observation": torch.randn(batch, cfg.obs_dim)}, batch_size=[batch])
    p = _params(nets)
    n = batch * candidates
    if guided:
        flops = _flops_guided(p["noise"], p["energy"], steps, n)
    else:
        flops = steps * 2.0 * p["noise"] * n
    if candidates > 1:
        flops += 2.0 * p["q"] * n

    def run():
        actor(td)

    return run, flops, batch


def _build_ddpm_sampling(cfg: BenchConfig, batch: int, steps: int) -> Built:
    from tensordict import TensorDict
    from torchrl.modules import DiffusionActor

    nets = _sampling_nets(cfg)
    adapter = _ConcatAdapter(nets["noise"], cfg.action_dim, cfg.obs_dim, steps)
    actor = DiffusionActor(cfg.action_dim, score_network=adapter, num_steps=steps)
    td = TensorDict({"observation": torch.randn(batch, cfg.obs_dim)}, batch_size=[batch])

    def run():
        with torch.no_grad():
            actor(td)

    return run, steps * 2.0 * _n_params(nets["noise"]) * batch, batch


def _build_reference_sampling(
    cfg: BenchConfig, batch: int, order: int, steps: int, style: str = "library"
) -> Built:
    ref = _load_reference()
    nets = {
        k: _frozen(v)
        for k, v in ref.make_networks(cfg.action_dim, cfg.obs_dim, style=style).items()
    }
    sampler = ref.ReferenceGuidedSampler(nets["score"], nets["energy"], steps=steps, order=order)
    obs = torch.randn(batch, cfg.obs_dim)

    def run():
        with torch.no_grad():
            sampler(obs)

    flops = _flops_guided(_n_params(nets["score"]), _n_params(nets["energy"]), steps, batch)
    return run, flops, batch


# ============================================================================ builders: eval
def _gym_vector_env(cfg: BenchConfig, num_envs: int):
    import gymnasium as gym

    kwargs = {}
    if hasattr(gym.vector, "AutoresetMode"):  # TorchRL needs SAME_STEP (or DISABLED) resets
        kwargs["autoreset_mode"] = gym.vector.AutoresetMode.SAME_STEP
    return gym.vector.SyncVectorEnv(
        [lambda: gym.make(cfg.env_name) for _ in range(num_envs)], **kwargs
    )


def _torchrl_env(cfg: BenchConfig, num_envs: int):
    import logging
    import warnings

    warnings.filterwarnings("ignore", message="Nested TransformedEnvs")

    from torchrl.envs import DoubleToFloat, GymWrapper, TransformedEnv

    logging.getLogger("torchrl").setLevel(logging.WARNING)
    env = TransformedEnv(GymWrapper(_gym_vector_env(cfg, num_envs)), DoubleToFloat())
    env.set_seed(0)
    return env


def _build_eval_raw_random(cfg: BenchConfig) -> Built:
    venv = _gym_vector_env(cfg, cfg.eval_envs)
    venv.reset(seed=0)
    steps = cfg.eval_steps

    def run():
        venv.reset(seed=0)
        for _ in range(steps):
            venv.step(venv.action_space.sample())

    return run, 0.0, cfg.eval_envs * steps


def _build_eval_torchrl(cfg: BenchConfig, policy: str) -> Built:
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    env = _torchrl_env(cfg, cfg.eval_envs)
    steps, flops, actor = cfg.eval_steps, 0.0, None
    if policy == "actor":
        nets = _sampling_nets(cfg)
        actor = _make_actor(cfg, nets, order=cfg.qgpo_order, steps=cfg.qgpo_steps)
        p = _params(nets)
        flops = steps * _flops_guided(p["noise"], p["energy"], cfg.qgpo_steps, cfg.eval_envs)

    def run():
        with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
            env.rollout(steps, policy=actor, break_when_any_done=False)

    return run, flops, cfg.eval_envs * steps


def _build_eval_reference(cfg: BenchConfig, style: str = "library") -> Built:
    import numpy as np

    ref = _load_reference()
    nets = {
        k: _frozen(v)
        for k, v in ref.make_networks(cfg.action_dim, cfg.obs_dim, style=style).items()
    }
    sampler = ref.ReferenceGuidedSampler(
        nets["score"], nets["energy"], steps=cfg.qgpo_steps, order=cfg.qgpo_order
    )
    venv = _gym_vector_env(cfg, cfg.eval_envs)
    steps = cfg.eval_steps

    def run():
        obs, _ = venv.reset(seed=0)
        for _ in range(steps):
            with torch.no_grad():
                action = sampler(torch.as_tensor(obs, dtype=torch.float32))
            obs, *_ = venv.step(np.asarray(action.numpy(), dtype=np.float64))

    flops = steps * _flops_guided(
        _n_params(nets["score"]), _n_params(nets["energy"]), cfg.qgpo_steps, cfg.eval_envs
    )
    return run, flops, cfg.eval_envs * steps


# ============================================================================ sections
def _training_cases(cfg: BenchConfig, batch: int) -> list[Case]:
    b = {"batch": batch}

    def c(name, impl, build, note=""):
        return Case("training", name, impl, dict(b), build, note=note)

    # The same updates with Adam(fused=True), side by side with the --optim flavour.
    fused = dataclasses.replace(cfg, optim="fused")
    fused_cases = (
        []
        if cfg.optim == "fused"
        else [
            c(
                "DiffusionLoss",
                "ours, Adam(fused=True)",
                lambda: _build_ours_diffusion(fused, batch),
                "as 'ours' with torch.optim.Adam(..., fused=True)",
            ),
            c(
                "ExpectileLoss",
                "ours, Adam(fused=True)",
                lambda: _build_ours_expectile(fused, batch),
                "as 'ours' with torch.optim.Adam(..., fused=True)",
            ),
            c(
                "AEPO update",
                "ours, Adam(fused=True)",
                lambda: _build_ours_full(fused, batch),
                "as 'ours' with torch.optim.Adam(..., fused=True)",
            ),
        ]
    )
    return (
        [
            c("DiffusionLoss", "ours", lambda: _build_ours_diffusion(cfg, batch)),
            c(
                "DiffusionLoss",
                "torchrl DiffusionBCLoss",
                lambda: _build_diffusion_bc(cfg, batch),
                "same noise network via a concat adapter",
            ),
            c("DiffusionLoss", "reference", lambda: _build_reference(cfg, batch, "diffusion")),
            c(
                "DiffusionLoss",
                "reference-research",
                lambda: _build_reference(cfg, batch, "diffusion", "research"),
                "QGPO-shaped networks (local stand-in for QGPO's behaviour step)",
            ),
            c(
                "ExpectileLoss",
                "ours",
                lambda: _build_ours_expectile(cfg, batch),
                "loss + Adam + SoftUpdate",
            ),
            c(
                "ExpectileLoss",
                "torchrl IQLLoss critic",
                lambda: _build_iql_critic(cfg, batch),
                "IQLLoss.value_loss + qvalue_loss + Adam(Q,V) + SoftUpdate",
            ),
            c(
                "ExpectileLoss",
                "torchrl IQLLoss full",
                lambda: _build_iql_full(cfg, batch),
                "IQLLoss forward (actor+Q+V) + Adam + SoftUpdate; TanhNormal 3x256 actor",
            ),
            c("ExpectileLoss", "reference", lambda: _build_reference(cfg, batch, "critic")),
            c("AnalyticEnergyLoss", "ours", lambda: _build_ours_energy(cfg, batch)),
            c("AnalyticEnergyLoss", "reference", lambda: _build_reference(cfg, batch, "energy")),
            c(
                "AEPO update",
                "ours",
                lambda: _build_ours_full(cfg, batch),
                "3 losses, 1 backward, 3 Adam, SoftUpdate",
            ),
            c("AEPO update", "reference", lambda: _build_reference(cfg, batch, "full")),
            c(
                "AEPO update",
                "reference-research",
                lambda: _build_reference(cfg, batch, "full", "research"),
                "QGPO-shaped networks, 4x256 energy",
            ),
        ]
        + fused_cases
        + _compiled_training_cases(cfg, batch)
    )


def _compiled_training_cases(cfg: BenchConfig, batch: int) -> list[Case]:
    if not cfg.compile:
        return []
    return [
        Case(
            "training",
            "AEPO update",
            "ours, torch.compile",
            {"batch": batch},
            lambda: _build_ours_full(cfg, batch, compiled=True),
            note="as 'ours' with the three losses compiled (nn.Module.compile)",
        )
    ]


def _sampling_cases(cfg: BenchConfig, batch: int) -> list[Case]:
    cases = []
    for order in cfg.orders:
        for steps in cfg.steps:
            params = {"batch": batch, "order": order, "steps": steps, "nfe": steps}
            cases.append(
                Case(
                    "sampling",
                    "guided",
                    "ours",
                    dict(params),
                    lambda o=order, s=steps: _build_ours_sampling(cfg, batch, o, s),
                    unit="actions",
                )
            )
            if batch < 800 or steps in cfg.reference_large_batch_steps:
                cases.append(
                    Case(
                        "sampling",
                        "guided",
                        "reference",
                        dict(params),
                        lambda o=order, s=steps: _build_reference_sampling(cfg, batch, o, s),
                        unit="actions",
                    )
                )
    order_qgpo, steps_qgpo = cfg.qgpo_order, cfg.qgpo_steps
    if cfg.compile:
        cases.append(
            Case(
                "sampling",
                "guided",
                "ours, torch.compile",
                {"batch": batch, "order": order_qgpo, "steps": steps_qgpo, "nfe": steps_qgpo},
                lambda: _build_ours_sampling(cfg, batch, order_qgpo, steps_qgpo, compiled=True),
                unit="actions",
                note="AEPOActor(compile=True)",
            )
        )
    cases.append(
        Case(
            "sampling",
            "guided",
            "reference-research",
            {"batch": batch, "order": order_qgpo, "steps": steps_qgpo, "nfe": steps_qgpo},
            lambda: _build_reference_sampling(cfg, batch, order_qgpo, steps_qgpo, "research"),
            unit="actions",
            note="QGPO-shaped networks (local stand-in for QGPO's sampler)",
        )
    )
    for steps in cfg.steps:
        params = {"batch": batch, "order": 1, "steps": steps, "nfe": steps}
        cases.append(
            Case(
                "sampling",
                "unguided",
                "ours",
                dict(params),
                lambda s=steps: _build_ours_sampling(cfg, batch, 1, s, guided=False),
                unit="actions",
                note="behaviour policy, DDIM (order 1)",
            )
        )
        cases.append(
            Case(
                "sampling",
                "unguided",
                "torchrl DiffusionActor",
                dict(params) | {"order": None},
                lambda s=steps: _build_ddpm_sampling(cfg, batch, s),
                unit="actions",
                note="DDPM with num_steps=NFE, same noise network",
            )
        )
    return cases


def _eval_cases(cfg: BenchConfig) -> list[Case]:
    p = {"env": cfg.env_name, "num_envs": cfg.eval_envs, "steps": cfg.eval_steps}
    actor_name = f"guided actor o{cfg.qgpo_order}/{cfg.qgpo_steps}"
    return [
        Case(
            "eval",
            "random policy",
            "gymnasium",
            dict(p),
            lambda: _build_eval_raw_random(cfg),
            unit="env_steps",
            note="raw SyncVectorEnv, no policy",
        ),
        Case(
            "eval",
            "random policy",
            "torchrl",
            dict(p),
            lambda: _build_eval_torchrl(cfg, "random"),
            unit="env_steps",
            note="GymWrapper(SyncVectorEnv)+DoubleToFloat, env.rollout",
        ),
        Case(
            "eval",
            actor_name,
            "ours",
            dict(p),
            lambda: _build_eval_torchrl(cfg, "actor"),
            unit="env_steps",
            note="env.rollout(policy=AEPOActor), DETERMINISTIC",
        ),
        Case(
            "eval",
            actor_name,
            "reference",
            dict(p),
            lambda: _build_eval_reference(cfg),
            unit="env_steps",
            note="research-style loop: numpy<->torch, ReferenceGuidedSampler",
        ),
    ]


def _scaling_cases(cfg: BenchConfig) -> dict[str, list[Case]]:
    o, n = cfg.qgpo_order, cfg.qgpo_steps
    guided = f"guided o{o}/{n}"
    solver = {"order": o, "steps": n, "nfe": n}
    tb, sb = cfg.scale_width_train_batch, cfg.scale_width_sample_batch
    batch_cases = []
    for b in cfg.scale_batches:
        batch_cases += [
            Case(
                "scaling_batch",
                "DiffusionLoss",
                "ours",
                {"batch": b},
                lambda b=b: _build_ours_diffusion(cfg, b),
            ),
            Case(
                "scaling_batch",
                "AEPO update",
                "ours",
                {"batch": b},
                lambda b=b: _build_ours_full(cfg, b),
            ),
            Case(
                "scaling_batch",
                "AEPO update",
                "reference",
                {"batch": b},
                lambda b=b: _build_reference(cfg, b, "full"),
            ),
        ]
    for b in cfg.scale_sample_batches:
        batch_cases.append(
            Case(
                "scaling_batch",
                guided,
                "ours",
                {"batch": b} | solver,
                lambda b=b: _build_ours_sampling(cfg, b, o, n),
                unit="actions",
            )
        )
    width_cases = []
    for w in cfg.scale_widths:
        params = {"width": w, "noise_widths": list(_widths(w)), "hidden": int(round(256 * w))}
        width_cases += [
            Case(
                "scaling_width",
                "DiffusionLoss",
                "ours",
                params | {"batch": tb},
                lambda w=w: _build_ours_diffusion(cfg, tb, w),
            ),
            Case(
                "scaling_width",
                "AEPO update",
                "ours",
                params | {"batch": tb},
                lambda w=w: _build_ours_full(cfg, tb, w),
            ),
            Case(
                "scaling_width",
                guided,
                "ours",
                params | {"batch": sb} | solver,
                lambda w=w: _build_ours_sampling(cfg, sb, o, n, width=w),
                unit="actions",
            ),
        ]
    cand_cases = []
    states = cfg.scale_candidate_states
    for k in cfg.scale_candidates:
        cand_cases.append(
            Case(
                "scaling_candidates",
                guided,
                "ours",
                {"batch": states, "candidates": k} | solver,
                lambda k=k: _build_ours_sampling(cfg, states, o, n, candidates=k),
                unit="states",
                note="argmax_q selection for K > 1",
            )
        )
    return {"batch": batch_cases, "width": width_cases, "candidates": cand_cases}


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
            cwd=_REPO_ROOT,
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
        f"# torchrl_aepo.bench ({'quick' if cfg.quick else 'full'}), {cfg.threads} threads, "
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
        prog="python -m torchrl_aepo.bench",
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
