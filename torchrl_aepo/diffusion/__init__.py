"""Diffusion backbone: the VP noise schedule, the DPM-Solver sampler and energy guidance."""

from torchrl_aepo.diffusion.guidance import guided_noise
from torchrl_aepo.diffusion.schedule import VPSchedule
from torchrl_aepo.diffusion.solver import DPMSolver

__all__ = ["VPSchedule", "DPMSolver", "guided_noise"]
