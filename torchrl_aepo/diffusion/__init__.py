"""Diffusion backbone: the VP noise schedule and the DPM-Solver sampler."""

from torchrl_aepo.diffusion.schedule import VPSchedule
from torchrl_aepo.diffusion.solver import DPMSolver

__all__ = ["VPSchedule", "DPMSolver"]
