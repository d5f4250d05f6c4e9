"""Command line: list tasks, build local datasets, inspect a dataset.

Examples::

    python -m torchrl_aepo.data list                      # all tasks
    python -m torchrl_aepo.data list --backend local -v   # local tasks, with notes
    python -m torchrl_aepo.data build pendulum-medium-replay [--root DIR] [--steps N]
    python -m torchrl_aepo.data build pendulum            # all qualities of a family
    python -m torchrl_aepo.data info pendulum-medium-replay --root DIR
    python -m torchrl_aepo.data train-policies hopper [--steps N] [--out DIR]
    python -m torchrl_aepo.data select-policies hopper    # ladder checkpoints from the run
    python -m torchrl_aepo.data build hopper-medium-replay-local [--steps N]
"""

from __future__ import annotations

import argparse
import sys
import time


def _cmd_list(args: argparse.Namespace) -> int:
    from torchrl_aepo.data.locomotion import behaviour_summary
    from torchrl_aepo.data.tasks import TASKS, list_tasks

    names = list_tasks(backend=args.backend, family=args.family)
    rows = [("task", "backend", "dataset", "eval env", "reward", "extra", "behaviour")]
    for name in names:
        s = TASKS[name]
        rows.append(
            (
                name,
                s.backend,
                s.dataset_id,
                s.eval_env_id,
                s.reward_transform,
                ",".join(s.requires),
                behaviour_summary(name),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if args.verbose and i and TASKS[row[0]].notes:
            print(f"    {TASKS[row[0]].notes}")
    print(f"{len(names)} tasks")
    return 0


def _expand(names: list[str]) -> list[str]:
    from torchrl_aepo.data.builders import LOCAL_FAMILIES, QUALITIES
    from torchrl_aepo.data.policies import LOCOMOTION_ENV_IDS

    out = []
    for name in names:
        if name in LOCAL_FAMILIES:
            out += [f"{name}-{q}" for q in QUALITIES]
        elif name in LOCOMOTION_ENV_IDS:
            out += [f"{name}-{q}-local" for q in QUALITIES]
        else:
            out.append(name)
    return out


def _describe(name: str, root: str | None) -> None:
    from torchrl_aepo.data.loading import make_offline_data

    start = time.perf_counter()
    _, meta = make_offline_data(name, root=root, reward_transform="none", build_if_missing=False)
    load = time.perf_counter() - start
    score = meta.normalized_score(meta.return_mean)
    print(
        f"  {meta.num_transitions} transitions, {meta.num_episodes} episodes; "
        f"loaded in {load:.2f} s (first load converts to a TorchRL memmap cache)\n"
        f"  episode return mean {meta.return_mean:.1f} (normalized {score:.1f}), "
        f"min {meta.return_min:.1f}, max {meta.return_max:.1f}\n"
        f"  reference: random {meta.ref_min_score:.1f}, expert {meta.ref_max_score:.1f}"
    )


def _cmd_build(args: argparse.Namespace) -> int:
    from torchrl_aepo.data.builders import build_local_dataset

    for name in _expand(args.names):
        start, cpu = time.perf_counter(), time.process_time()
        path = build_local_dataset(
            name,
            root=args.root,
            num_steps=args.steps,
            seed=args.seed,
            overwrite=args.overwrite,
            ref_episodes=args.ref_episodes,
        )
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(f"{name}: {path}\n  built or reused in {wall:.1f} s (CPU {cpu:.1f} s)")
        _describe(name, args.root)
        if args.record:
            from torchrl_aepo.data.locomotion import record_dataset_stats

            print(f"  recorded in {record_dataset_stats(name, path)}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from torchrl_aepo.data.loading import make_offline_data

    rb, meta = make_offline_data(
        args.task, root=args.root, batch_size=args.batch_size, build_if_missing=False
    )
    for key, value in meta.to_dict().items():
        print(f"{key}: {value}")
    rb.sample()
    n, start = 500, time.perf_counter()
    for _ in range(n):
        rb.sample()
    print(f"rb.sample() at batch {args.batch_size}: {n / (time.perf_counter() - start):.0f}/s")
    return 0


def _cmd_train_policies(args: argparse.Namespace) -> int:
    import os

    from torchrl_aepo.data.policies import SACConfig, train_policy

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = SACConfig(steps=args.steps, save_every=args.save_every, seed=args.seed)
    if args.warmup is not None:
        cfg.warmup_steps = args.warmup
    out = args.out or f"runs/policies/{args.family}"
    train_policy(args.family, out, cfg)
    print(f"checkpoints and log.csv in {out}")
    return 0


def _cmd_select_policies(args: argparse.Namespace) -> int:
    import torch

    from torchrl_aepo.data.locomotion import select_checkpoints

    torch.set_num_threads(1)
    run = args.run or f"runs/policies/{args.family}"
    ladder = select_checkpoints(args.family, run, args.out, max_replay=args.max_replay)
    for key in ("expert", "medium"):
        r = ladder["returns"][ladder[key]]
        print(
            f"{key}: {ladder[key]} return {r['reeval_return']:.1f} +- {r['reeval_return_std']:.1f}"
            f" (normalized {r['reeval_normalized']:.1f}, {r['reeval_episodes']} episodes)"
        )
    print(f"replay: {', '.join(ladder['replay'])}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m torchrl_aepo.data``."""
    parser = argparse.ArgumentParser(
        prog="python -m torchrl_aepo.data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list tasks")
    p.add_argument("--backend", choices=("d4rl", "minari", "local"))
    p.add_argument("--family")
    p.add_argument("-v", "--verbose", action="store_true", help="show notes")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("build", help="build (or reuse) local datasets")
    p.add_argument("names", nargs="+", help="local task(s) or family name(s)")
    p.add_argument("--root", help="Minari datasets root (default $MINARI_DATASETS_PATH)")
    p.add_argument("--steps", type=int, help="transitions per dataset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--ref-episodes", type=int, help="episodes for the reference scores")
    p.add_argument(
        "--record",
        action="store_true",
        help="locomotion: store the dataset's stats in the committed ladder.json (for `list`)",
    )
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("info", help="load a cached dataset, print metadata and sampling speed")
    p.add_argument("task")
    p.add_argument("--root")
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("train-policies", help="train a SAC behaviour policy (TorchRL, 1 thread)")
    p.add_argument("family", choices=("halfcheetah", "hopper", "walker2d"))
    p.add_argument("--steps", type=int, default=300_000, help="env steps")
    p.add_argument("--save-every", type=int, default=10_000, help="checkpoint interval")
    p.add_argument("--warmup", type=int, help="uniform random warm-up steps (default 5000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (default runs/policies/<family>)")
    p.set_defaults(func=_cmd_train_policies)

    p = sub.add_parser("select-policies", help="copy the ladder's checkpoints from a run")
    p.add_argument("family", choices=("halfcheetah", "hopper", "walker2d"))
    p.add_argument("--run", help="training run folder (default runs/policies/<family>)")
    p.add_argument("--out", help="destination (default torchrl_aepo/data/checkpoints/<family>)")
    p.add_argument("--max-replay", type=int, default=6, help="checkpoints of medium-replay")
    p.set_defaults(func=_cmd_select_policies)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
