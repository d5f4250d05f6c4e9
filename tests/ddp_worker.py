"""One training run of a tiny AEPO plan, launched by tests/test_distributed.py either as a
single process or under ``torchrun`` (gloo, CPU). Writes ``<out>.rank<r>.pt``: the initial and final
parameters and last gradients of every network, and how many scalars reached this rank's logger."""

from __future__ import annotations

import argparse

import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

from torchrl_aepo import distributed
from torchrl_aepo.aepo import (
    AEPOConfig,
    ModelConfig,
    TrainConfig,
    build_losses,
    build_networks,
    build_training_plan,
)
from torchrl_aepo.trainer import OfflineTrainer

OBS, ACT, N = 3, 1, 512


def _buffer() -> TensorDictReplayBuffer:
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(N, OBS, generator=g)
    act = torch.rand(N, ACT, generator=g) * 2 - 1
    data = TensorDict(
        {
            "observation": obs,
            "action": act,
            "next": {
                "observation": obs + 0.1 * torch.randn(N, OBS, generator=g),
                "reward": -(act**2) + obs[:, :1],
                "terminated": torch.zeros(N, 1, dtype=torch.bool),
                "done": torch.zeros(N, 1, dtype=torch.bool),
            },
        },
        batch_size=[N],
    )
    rb = TensorDictReplayBuffer(
        storage=LazyTensorStorage(N), batch_size=64, generator=torch.Generator().manual_seed(1)
    )
    rb.extend(data)
    return rb


def _params(modules: dict) -> dict:
    return {
        f"{m}.{k}": p.detach().clone()
        for m, mod in modules.items()
        for k, p in mod.named_parameters()
    }


class _Logger:
    def __init__(self) -> None:
        self.calls = 0

    def log_scalar(self, name, value, step=None) -> None:
        self.calls += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stages", default="critic")  # comma list, or "all"
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--kill-at", default=None)  # "<stage>:<step>"
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    distributed.init_from_env("cpu")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cells = (16, 16)
    model = ModelConfig("mlp", noise_num_cells=cells, qvalue_num_cells=cells,
                        value_num_cells=cells, energy_num_cells=cells)  # fmt: skip
    aepo = AEPOConfig()
    train = TrainConfig.budget(steps=args.steps, batch_size=args.batch_size, adam="loop")
    nets = build_networks(model, OBS, ACT)
    modules = {"noise": nets.noise, "q": nets.qvalue, "v": nets.value, "energy": nets.energy}
    initial = _params(modules)
    losses = build_losses(nets, aepo, train)
    rb = _buffer()
    plan = build_training_plan(nets, losses, rb[:], aepo=aepo, train=train)
    names = [s.name for s in plan.stages] if args.stages == "all" else args.stages.split(",")
    stages = [s for s in plan.stages if s.name in names]
    logger = _Logger()
    trainer = OfflineTrainer(
        stages,
        rb,
        run_dir=args.run_dir,
        logger=logger,
        log_interval=1,
        checkpoint_interval=2,
        progress_bar=False,
        config={"test": 1},
        generators={"gamma": plan.gamma_generator},
    )
    killed = False
    if args.kill_at:
        at_stage, at_step = args.kill_at.split(":")

        def kill(stage: str, step: int, _metrics) -> None:
            if stage == at_stage and step == int(at_step):
                raise KeyboardInterrupt

        trainer.register_op("post_optim", kill)
    try:
        trainer.train()
    except KeyboardInterrupt:
        killed = True
    out = {
        "initial_params": initial,
        "params": _params(modules),
        "grads": {
            f"{m}.{k}": p.grad.detach().clone() for m, mod in modules.items()
            for k, p in mod.named_parameters() if p.grad is not None
        },
        "logger_calls": logger.calls,
        "killed": killed,
        "world_size": distributed.world_size(),
        "distributed": trainer.distributed,
    }  # fmt: skip
    torch.save(out, f"{args.out}.rank{distributed.rank()}.pt")
    if distributed.is_distributed():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
