"""AEPO's loss modules (``torchrl.objectives.LossModule`` subclasses)."""

from torchrl_aepo.objectives.common import frozen_view
from torchrl_aepo.objectives.cql import CQLCriticLoss
from torchrl_aepo.objectives.diffusion import DiffusionLoss
from torchrl_aepo.objectives.energy import (
    AnalyticEnergyLoss,
    EnergyLossBase,
    TargetRegressionEnergyLoss,
)
from torchrl_aepo.objectives.energy_baselines import (
    CEPEnergyLoss,
    DPSEnergyLoss,
    LogMeanExpEnergyLoss,
    MSEEnergyLoss,
    SupportPosteriorEnergyLoss,
    sample_support_actions,
)
from torchrl_aepo.objectives.expectile import ExpectileLoss
from torchrl_aepo.objectives.isql import ISQLLoss, SupportCriticLoss
from torchrl_aepo.objectives.posterior import PosteriorStatistics, StackedPosteriorStatistics

__all__ = [
    "DiffusionLoss",
    "ExpectileLoss",
    "ISQLLoss",
    "CQLCriticLoss",
    "SupportCriticLoss",
    "PosteriorStatistics",
    "StackedPosteriorStatistics",
    "EnergyLossBase",
    "TargetRegressionEnergyLoss",
    "AnalyticEnergyLoss",
    "frozen_view",
    "MSEEnergyLoss",
    "DPSEnergyLoss",
    "CEPEnergyLoss",
    "LogMeanExpEnergyLoss",
    "SupportPosteriorEnergyLoss",
    "sample_support_actions",
]
