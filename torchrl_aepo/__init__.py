"""torchrl-aepo: Analytic Energy-guided Policy Optimization (AEPO) for offline RL, TorchRL-native."""

from torchrl_aepo.diffusion.schedule import VPSchedule
from torchrl_aepo.nets import (
    EnergyNetwork,
    GaussianFourierEmbedding,
    MLPNoisePredictor,
    TwinQNetwork,
    UMLPNoisePredictor,
    ValueNetwork,
    energy_module,
    noise_prediction_module,
    qvalue_module,
    value_module,
)
from torchrl_aepo.objectives import DiffusionLoss

__version__ = "0.1.0"

__all__ = [
    "VPSchedule",
    "GaussianFourierEmbedding",
    "UMLPNoisePredictor",
    "MLPNoisePredictor",
    "TwinQNetwork",
    "ValueNetwork",
    "EnergyNetwork",
    "noise_prediction_module",
    "qvalue_module",
    "value_module",
    "energy_module",
    "DiffusionLoss",
]
