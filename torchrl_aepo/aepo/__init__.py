"""AEPO assembled in one place: typed configuration, builders and the training plan.

Everything that makes the pieces of this package *AEPO* lives here (``aepo-math.md`` §9), in
three modules: :mod:`.config`, :mod:`.build` and :mod:`.plan`.

* :class:`ModelConfig`, :class:`AEPOConfig` and :class:`TrainConfig` mirror the ``model``,
  ``aepo`` and ``train`` groups of ``configs/config.yaml`` (``from_dict`` reads a plain or
  OmegaConf mapping and refuses unknown keys; :func:`config_problems` lists every bad value);
* :func:`build_networks` -> :class:`AEPONetworks` (noise predictor, its frozen *behaviour*
  copy, twin Q, V, energy network), :func:`build_losses` -> :class:`AEPOLosses`
  (``DiffusionLoss`` + EMA, the critic of ``aepo.critic`` -- ``ExpectileLoss`` by default,
  ``ISQLLoss`` / ``CQLCriticLoss`` for the ablations -- + target update),
  :func:`build_energy_loss` (the energy of ``aepo.energy``: ``AnalyticEnergyLoss`` by default,
  MSE / DPS / CEP for the ablations, optionally on the advantage ``Q - V``) and :func:`build_actor`
  (:class:`~torchrl_aepo.AEPOActor`);
* :func:`build_training_plan` -> :class:`TrainingPlan`: the stages the generic
  :class:`~torchrl_aepo.trainer.OfflineTrainer` runs, either *staged* (``diffusion -> critic
  -> gamma -> energy``, QGPO's practice and the default) or *joint* (Algorithm 1's single
  loop, refreshing the ``Gamma(t)`` table periodically). The plan owns the one invariant that
  ties the stages together: the (EMA) weights of the noise network are copied into the
  behaviour network (:meth:`TrainingPlan.sync_behaviour`) before the ``Gamma`` table, the
  energy target or an evaluation use it. It also builds the energy loss late, once the
  critic and the table exist;
* :class:`StackedTrainingPlan` (:mod:`.stacked_plan`, ``train.num_seeds > 1``): the staged
  plan of several seeds at once on stacked networks, and each member as an ordinary
  single-seed network set for the actor and the evaluation.

Example (the whole algorithm in a few lines, no hydra):
    >>> import tempfile
    >>> from torchrl_aepo import OfflineTrainer, build_local_dataset, make_offline_data
    >>> from torchrl_aepo.aepo import AEPOConfig, ModelConfig, TrainConfig, build_actor
    >>> from torchrl_aepo.aepo import build_losses, build_networks, build_training_plan
    >>> root = tempfile.mkdtemp()
    >>> _ = build_local_dataset("pendulum-medium", root=root, num_steps=600, ref_episodes=2)
    >>> rb, meta = make_offline_data("pendulum-medium", root=root, seed=0)
    >>> model = ModelConfig.small()
    >>> train = TrainConfig.budget(steps=5, batch_size=32)
    >>> aepo = AEPOConfig(beta=0.3, energy_baseline="value")
    >>> nets = build_networks(model, meta.obs_dim, meta.action_dim)
    >>> losses = build_losses(nets, aepo, train)
    >>> plan = build_training_plan(nets, losses, rb[:], aepo=aepo, train=train)
    >>> _ = OfflineTrainer(plan.stages, rb, run_dir=tempfile.mkdtemp(), progress_bar=False).train()
    >>> actor = build_actor(nets, losses, aepo, action_low=-2.0, action_high=2.0)
    >>> actor(rb.sample(4))["action"].shape
    torch.Size([4, 1])
"""

from torchrl_aepo.aepo.build import (
    AdvantageCritic,
    AEPOLosses,
    AEPONetworks,
    build_actor,
    build_critic_loss,
    build_energy_loss,
    build_losses,
    build_networks,
    estimate_posterior_statistics,
)
from torchrl_aepo.aepo.config import (
    AEPOConfig,
    ConfigKeyError,
    CriticStageConfig,
    DiffusionStageConfig,
    EnergyStageConfig,
    GammaTableConfig,
    JointStageConfig,
    ModelConfig,
    SolverConfig,
    SupportsStageConfig,
    TrainConfig,
    config_problems,
    num_seeds_problems,
    overlap_problems,
)
from torchrl_aepo.aepo.guidance import GuidanceChoice, critic_lower_bound, select_guidance
from torchrl_aepo.aepo.plan import TrainingPlan, build_training_plan
from torchrl_aepo.aepo.stacked_plan import StackedTrainingPlan
from torchrl_aepo.aepo.weighting import advantage_weights

__all__ = [
    "AEPOConfig",
    "ConfigKeyError",
    "AEPOLosses",
    "AEPONetworks",
    "AdvantageCritic",
    "CriticStageConfig",
    "DiffusionStageConfig",
    "EnergyStageConfig",
    "GammaTableConfig",
    "JointStageConfig",
    "SupportsStageConfig",
    "ModelConfig",
    "SolverConfig",
    "TrainConfig",
    "TrainingPlan",
    "StackedTrainingPlan",
    "build_actor",
    "build_critic_loss",
    "build_energy_loss",
    "build_losses",
    "build_networks",
    "build_training_plan",
    "config_problems",
    "num_seeds_problems",
    "overlap_problems",
    "estimate_posterior_statistics",
    "GuidanceChoice",
    "critic_lower_bound",
    "select_guidance",
    "advantage_weights",
]
