"""AEPO's loss modules (``torchrl.objectives.LossModule`` subclasses)."""

from torchrl_aepo.objectives.diffusion import DiffusionLoss

__all__ = ["DiffusionLoss"]
