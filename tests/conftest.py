"""Test-wide settings.

The suite runs many small networks; on a 2-core CI box one intra-op thread per process is
faster for them than two threads contending, and it keeps timings stable under load.
"""

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)
