"""Final-evaluation throughput vs env workers: ``eval.backend=sync`` against ``async``.

    OMP_NUM_THREADS=1 python -m benchmarks.scale_eval [--episodes 10] [--out docs/bench/scale_eval.json]

Measures env-steps/s of :func:`~torchrl_aepo.evaluation.evaluate_policy` as the recipe's final
evaluation runs it (the default ``preset=quick`` networks, ``aepo.guidance=0.5``, 15-step
DPM-Solver++, Pendulum-v1 with 200-step episodes, ``eval.episodes`` episodes) with 1, 2, 4 and
10 envs, each stepped by gymnasium's ``SyncVectorEnv`` (one process) and ``AsyncVectorEnv``
(one subprocess per env), in one run and interleaved (so the ratios are taken under the same
machine load). A second policy, zero torque, isolates the env's own cost. The actor is
untrained: its cost per call does not depend on its weights. Best of ``--repeats`` rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch


def _actor():
    from hydra import compose, initialize_config_dir

    root = Path(__file__).resolve().parents[1]
    import sys

    sys.path.insert(0, str(root / "recipes"))
    import utils

    from torchrl_aepo import aepo

    with initialize_config_dir(version_base="1.3", config_dir=str(root / "configs")):
        cfg = compose(config_name="config", overrides=["task=pendulum-medium"])
    model, aepo_cfg, train = utils.algorithm_config(cfg)
    torch.manual_seed(0)
    nets = aepo.build_networks(model, 3, 1, "cpu")
    losses = aepo.build_losses(nets, aepo_cfg, train)
    return aepo.build_actor(nets, losses, aepo_cfg, action_low=-2.0, action_high=2.0), cfg


def _startup(n: int) -> dict:
    """Seconds to create (and reset) and to close ``n`` async Pendulum workers per start method
    (``spawn`` / ``forkserver`` workers re-import this script's modules: torch, torchrl)."""
    from torchrl_aepo.evaluation import make_eval_env

    out = {}
    for context in ("fork", "forkserver", "spawn"):
        t0 = time.perf_counter()
        env = make_eval_env("Pendulum-v1", n, max_episode_steps=200, backend="async",
                            async_context=context)  # fmt: skip
        env.reset()
        t1 = time.perf_counter()
        env.close()
        out[context] = {
            "create_s": round(t1 - t0, 2),
            "close_s": round(time.perf_counter() - t1, 2),
        }
        print(
            f"{n} async workers, {context:10s}: create {t1 - t0:6.2f} s, close {out[context]['close_s']:6.2f} s"
        )
    return out


def main(argv: list[str] | None = None) -> dict:
    from tensordict.nn import TensorDictModule
    from torch import nn

    from torchrl_aepo.evaluation import evaluate_policy, make_eval_env

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 10])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--async-context", default="fork", help="fork | spawn | forkserver")
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--startup",
        action="store_true",
        help="only time creating and closing 10 async workers per start method",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.startup:
        return _startup(max(args.workers))
    actor, cfg = _actor()

    class Zero(nn.Module):
        def forward(self, observation):
            return torch.zeros(*observation.shape[:-1], 1)

    policies = {
        "aepo": actor,
        "zero": TensorDictModule(Zero(), in_keys=["observation"], out_keys=["action"]),
    }
    rows = []
    for n in args.workers:
        envs = {
            b: make_eval_env(
                "Pendulum-v1", n, max_episode_steps=200, backend=b, async_context=args.async_context
            )
            for b in ("sync", "async")
        }
        try:
            for name, policy in policies.items():
                best: dict[str, dict] = {}
                for _ in range(args.repeats):
                    for backend, env in envs.items():  # interleaved
                        t0 = time.perf_counter()
                        r = evaluate_policy(
                            policy,
                            env,
                            episodes=args.episodes,
                            max_steps=args.max_steps,
                            seed=12345,
                        )
                        wall = time.perf_counter() - t0
                        sps = r.env_steps / wall
                        if backend not in best or sps > best[backend]["steps_per_s"]:
                            best[backend] = {
                                "steps_per_s": sps,
                                "seconds": wall,
                                "env_steps": r.env_steps,
                                "return_mean": r.return_mean,
                            }
                # same seeds, same episodes: the backends only differ in where the envs step
                assert abs(best["sync"]["return_mean"] - best["async"]["return_mean"]) < 1e-3
                for backend in ("sync", "async"):
                    rows.append({"policy": name, "workers": n, "backend": backend, **best[backend]})
                    print(
                        f"{name:5s} envs={n:3d} {backend:5s}: {best[backend]['steps_per_s']:9.1f} env-steps/s "
                        f"({best[backend]['seconds']:.2f} s, {best[backend]['env_steps']} steps)"
                    )
        finally:
            for env in envs.values():
                env.close()
    for name in policies:
        base = next(
            r
            for r in rows
            if r["policy"] == name and r["workers"] == args.workers[0] and r["backend"] == "sync"
        )
        for r in rows:
            if r["policy"] == name:
                r["vs_sync_1"] = round(r["steps_per_s"] / base["steps_per_s"], 3)
    out = {
        "command": "OMP_NUM_THREADS=1 python -m benchmarks.scale_eval " + " ".join(argv or []),
        "machine": {
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": "cpu (no GPU in this session)",
        },
        "async_context": args.async_context,
        "episodes": args.episodes,
        "max_steps": args.max_steps,
        "rows": rows,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
