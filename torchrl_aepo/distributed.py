"""Data-parallel training of one run over ``torch.distributed`` (``torchrun``), kept small.

How a run is split (``OfflineTrainer(distributed=...)`` and :class:`~torchrl_aepo.trainer.
OptimizerStep`; both detect an initialised process group with more than one rank):

* every rank samples the same *global* batch (the replay buffer's generator is seeded alike on
  every rank) and trains on its own contiguous ``1 / world_size`` slice of it;
* :class:`~torchrl_aepo.trainer.OptimizerStep` averages the gradients over the ranks (one
  ``all_reduce`` of a flat buffer per optimiser step) before the finiteness check, clipping and
  the update, so that every rank applies the same update and the parameters stay identical:
  for a loss that is a mean over its batch this is the gradient of the global batch;
* the randomness *inside* a step (diffusion noise and times) comes from a per-rank, per-step
  seed (a forked RNG), so the ranks draw different noise and a resumed run draws the same as
  an uninterrupted one; the global generators outside the steps stay identical on all ranks;
* rank 0 alone writes checkpoints, ``logged_steps.json`` and logs (the logged losses are its
  slice's); every rank reads the checkpoints on resume.

Not the same as ``DistributedDataParallel``: no gradient bucketing overlapped with the
backward pass (the all-reduce runs after it); a deliberate trade for a small, generic design
that works with the trainer's several optimisers and frozen copies. Launch with
``torchrun --nproc_per_node=N recipes/aepo_offline.py ...`` (README "Scaling out").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "init_from_env",
    "is_distributed",
    "rank",
    "world_size",
    "is_main_process",
    "all_reduce_mean_",
    "local_slice",
    "broadcast_object",
    "main_process_first",
]


def is_distributed() -> bool:
    """``True`` when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return rank() == 0


def init_from_env(device: str = "auto") -> bool:
    """Initialise the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``).

    Backend ``nccl`` when the run trains on CUDA, else ``gloo``. Returns whether a process group
    is in use. Without ``torchrun`` (no ``WORLD_SIZE``) it does nothing and returns ``False``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if dist.is_initialized():
        return True
    cuda = torch.cuda.is_available() and device != "cpu"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def all_reduce_mean_(tensors: Sequence[Tensor]) -> None:
    """Average ``tensors`` in place over the ranks (one ``all_reduce`` of a flat buffer)."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def local_slice(batch, batch_size: int):
    """This rank's contiguous ``batch_size / world_size`` slice of a global batch."""
    world = world_size()
    if batch_size % world:
        raise ValueError(
            f"batch_size={batch_size} is not divisible by the {world} ranks of the process "
            f"group; use a multiple of {world}."
        )
    size = batch_size // world
    start = rank() * size
    return batch[start : start + size]


def broadcast_object(obj):
    """``obj`` of rank 0 on every rank (e.g. the run dir, whose timestamp may differ)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def main_process_first():
    """Run the block on rank 0 first, then on the other ranks (e.g. building a dataset cache
    that the others then read). A no-op in a single process."""
    if not is_distributed():
        yield
        return
    if rank() != 0:
        dist.barrier()
    try:
        yield
    finally:
        if rank() == 0:
            dist.barrier()
