"""torchrl-aepo: Analytic Energy-guided Policy Optimization (AEPO) for offline RL, TorchRL-native."""

from torchrl_aepo.actor import AEPOActor
from torchrl_aepo.aepo import (
    AEPOConfig,
    ModelConfig,
    TrainConfig,
    TrainingPlan,
    build_actor,
    build_energy_loss,
    build_losses,
    build_networks,
    build_training_plan,
)
from torchrl_aepo.data import (
    TASKS,
    DatasetUnavailableError,
    OfflineMetadata,
    TaskSpec,
    build_local_dataset,
    get_task,
    list_tasks,
    make_offline_data,
    normalized_score,
)
from torchrl_aepo.diffusion import DPMSolver, VPSchedule
from torchrl_aepo.diffusion.guidance import guided_noise
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
from torchrl_aepo.objectives import (
    AnalyticEnergyLoss,
    CEPEnergyLoss,
    DiffusionLoss,
    DPSEnergyLoss,
    EnergyLossBase,
    ExpectileLoss,
    LogMeanExpEnergyLoss,
    MSEEnergyLoss,
    PosteriorStatistics,
    SupportPosteriorEnergyLoss,
    TargetRegressionEnergyLoss,
    frozen_view,
)
from torchrl_aepo.trainer import OfflineTrainer, OptimizerStep, Stage

__version__ = "0.1.0"

__all__ = [
    # diffusion backbone
    "VPSchedule",
    "DPMSolver",
    # networks
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
    # losses
    "DiffusionLoss",
    "ExpectileLoss",
    "PosteriorStatistics",
    "EnergyLossBase",
    "TargetRegressionEnergyLoss",
    "AnalyticEnergyLoss",
    "MSEEnergyLoss",
    "DPSEnergyLoss",
    "CEPEnergyLoss",
    "LogMeanExpEnergyLoss",
    "SupportPosteriorEnergyLoss",
    "frozen_view",
    # the algorithm (torchrl_aepo.aepo) and the trainer
    "AEPOConfig",
    "ModelConfig",
    "TrainConfig",
    "TrainingPlan",
    "build_networks",
    "build_losses",
    "build_energy_loss",
    "build_training_plan",
    "build_actor",
    "OfflineTrainer",
    "OptimizerStep",
    "Stage",
    # actor
    "guided_noise",
    "AEPOActor",
    # data
    "TASKS",
    "TaskSpec",
    "get_task",
    "list_tasks",
    "make_offline_data",
    "OfflineMetadata",
    "DatasetUnavailableError",
    "build_local_dataset",
    "normalized_score",
]
