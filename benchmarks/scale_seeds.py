"""Several seeds in one process: stacked updates (vmap) vs N sequential single-seed ones.

    OMP_NUM_THREADS=1 python -m benchmarks.scale_seeds [--out docs/bench/scale_seeds.json]

For N = 1, 2, 5, 10 members, at batch 256 per member: updates/s *per seed* of
:class:`~torchrl_aepo.stacked.StackedCritic` (one ``ExpectileLoss`` step of all N members:
stacked twin Q + V, Adam, target update) against N independent single-seed critics updated one
after the other (``ExpectileLoss`` + ``adam_step`` + ``SoftUpdate`` each), timed interleaved in
one run (so the ratio is taken under the same machine load). Networks: the paper's critic
(``[256, 256, 256]`` twin Q and V) on HalfCheetah's sizes (obs 17, action 6); Adam ``fused``.
The same for the diffusion stage (:class:`~torchrl_aepo.stacked.StackedDiffusion`, the
``preset=quick`` MLP noise network ``[256, 256, 256]``, EMA) against ``DiffusionLoss`` runs.
Each configuration: warm-up, then ``--repeats`` rounds of at least ``--min-time`` seconds; the
best round is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from tensordict import TensorDict
from torchrl.objectives import SoftUpdate

from torchrl_aepo.nets import MLPNoisePredictor, TwinQNetwork, ValueNetwork
from torchrl_aepo.objectives import DiffusionLoss, ExpectileLoss
from torchrl_aepo.stacked import StackedCritic, StackedDiffusion, sample_stacked
from torchrl_aepo.trainer import adam_step

OBS, ACT, CELLS = 17, 6, (256, 256, 256)
NOISE_CELLS = (256, 256, 256)  # preset=quick's noise network (mlp)


def _dataset(n=100_000):
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(n, OBS, generator=g)
    act = torch.rand(n, ACT, generator=g) * 2 - 1
    return TensorDict(
        {"observation": obs, "action": act,
         "next": {"observation": obs + 0.1 * torch.randn(n, OBS, generator=g),
                  "reward": torch.randn(n, 1, generator=g),
                  "terminated": torch.zeros(n, 1, dtype=torch.bool),
                  "done": torch.zeros(n, 1, dtype=torch.bool)}},
        batch_size=[n],
    )  # fmt: skip


def _timed(fn, min_time, repeats):
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(repeats):
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < min_time:
            fn()
            count += 1
        best = min(best, (time.perf_counter() - t0) / count)
    return best


def _cases(stage: str, n: int, data, b: int):
    """``(run_stacked, run_sequential)``: one update of all ``n`` members, stacked or one by one."""
    torch.manual_seed(0)
    if stage == "critic":
        qs = [TwinQNetwork(OBS, ACT, num_cells=CELLS) for _ in range(n)]
        vs = [ValueNetwork(OBS, num_cells=CELLS) for _ in range(n)]
        stacked = StackedCritic(qs, vs, lr=3e-4, steps=10**6, adam="fused")
        singles = []
        for k in range(n):
            loss = ExpectileLoss(qs[k], vs[k])
            singles.append((loss, SoftUpdate(loss, tau=0.005), adam_step(loss, 3e-4, 10**6)))

        def run_stacked():
            stacked.update(sample_stacked(data, b, stacked.generators))

        def one(loss, batch):
            out = loss(batch)
            return out["loss_qvalue"] + out["loss_value"]

    elif stage == "diffusion":
        nets = [MLPNoisePredictor(ACT, OBS, num_cells=NOISE_CELLS) for _ in range(n)]
        stacked = StackedDiffusion(nets, lr=1e-3, steps=10**6, ema_decay=0.995, adam="fused")
        singles = []
        for k in range(n):
            loss = DiffusionLoss(nets[k], ema=True)
            singles.append((loss, SoftUpdate(loss, tau=0.005), adam_step(loss, 1e-3, 10**6)))

        def run_stacked():
            stacked.update(stacked.draw(data, b))

        def one(loss, batch):
            return loss(batch)["loss_diffusion"]

    else:
        raise ValueError(f"unknown stage {stage!r}: critic or diffusion")
    gens = [torch.Generator().manual_seed(k) for k in range(n)]

    def run_sequential():
        for (loss, target, optim), g in zip(singles, gens, strict=True):
            optim(one(loss, data[torch.randint(data.shape[0], (b,), generator=g)]))
            target.step()

    return run_stacked, run_sequential


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument("--stages", nargs="+", default=["critic", "diffusion"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--min-time", type=float, default=1.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data, b = _dataset(), args.batch_size
    rows = []
    for stage, n in [(s, n) for s in args.stages for n in args.members]:
        run_stacked, run_sequential = _cases(stage, n, data, b)

        t_stacked, t_seq = float("inf"), float("inf")
        for _ in range(args.repeats):  # interleaved rounds
            t_stacked = min(t_stacked, _timed(run_stacked, args.min_time, 1))
            t_seq = min(t_seq, _timed(run_sequential, args.min_time, 1))
        row = {
            "stage": stage,
            "members": n,
            "batch_size": b,
            "stacked_updates_per_s_per_seed": round(1 / t_stacked, 2),
            "sequential_updates_per_s_per_seed": round(1 / t_seq, 2),
            "stacked_ms_per_step_all_members": round(1e3 * t_stacked, 3),
            "sequential_ms_per_step_all_members": round(1e3 * t_seq, 3),
            "speedup_per_seed": round(t_seq / t_stacked, 3),
        }
        rows.append(row)
        print(
            f"{stage:9s} N={n:3d}: stacked {row['stacked_updates_per_s_per_seed']:8.1f} upd/s/seed, "
            f"sequential {row['sequential_updates_per_s_per_seed']:8.1f} upd/s/seed, "
            f"speedup {row['speedup_per_seed']:.2f}x"
        )
    out = {
        "command": "OMP_NUM_THREADS=1 python -m benchmarks.scale_seeds " + " ".join(argv or []),
        "what": "critic: ExpectileLoss + Adam fused + target update, paper critic [256]*3; "
        "diffusion: DiffusionLoss + Adam fused + EMA, mlp noise net [256]*3 (preset=quick)",
        "machine": {
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": "cpu (no GPU in this session)",
        },  # fmt: skip
        "rows": rows,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
