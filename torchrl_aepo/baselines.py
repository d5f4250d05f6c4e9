"""Baselines users already have, built from TorchRL for side-by-side comparisons with AEPO.

* :func:`build_iql`: TorchRL's :class:`~torchrl.objectives.IQLLoss` (twin Q, expectile V,
  advantage-weighted actor) with one of two actors:

  - ``"tanh_normal"``: TorchRL's IQL recipe actor (``sota-implementations/iql``), a
    :class:`~torchrl.modules.TanhNormal` whose ``loc`` and ``scale`` come from the network
    (:class:`~tensordict.nn.NormalParamExtractor`);
  - ``"tanh_mean_normal"``: the IQL paper's actor, ``Normal(tanh(mu(s)), exp(log_std))`` with
    a state-independent ``log_std`` (clamped to ``[-5, 2]``); its deterministic action is
    ``tanh(mu(s))``.

* Diffusion BC is AEPO's behaviour model alone: the recipe's ``w = 0`` row (the behaviour
  row of results.json), trained and evaluated on the same data with the same protocol.

Example:
    >>> from torchrl_aepo.baselines import build_iql
    >>> loss, actor = build_iql(11, 3, actor="tanh_mean_normal", num_cells=(32, 32))
    >>> sorted(k for k in loss.out_keys if k.startswith("loss"))
    ['loss_actor', 'loss_qvalue', 'loss_value']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import MLP, IndependentNormal, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import IQLLoss

__all__ = ["IQL_ACTORS", "TanhMeanNormalParams", "build_iql"]

IQL_ACTORS = ("tanh_normal", "tanh_mean_normal")


class TanhMeanNormalParams(nn.Module):
    """``s -> (loc = tanh(mu(s)), scale = exp(log_std))`` with a learned, state-free ``log_std``.

    The IQL paper's Gaussian policy: the mean is squashed into the action box, the standard
    deviation does not depend on the state. ``[*B, s] -> ([*B, d], [*B, d])``.
    """

    def __init__(self, obs_dim: int, action_dim: int, num_cells: Sequence[int]) -> None:
        super().__init__()
        self.mean = MLP(
            in_features=obs_dim, out_features=action_dim, num_cells=list(num_cells),
            activation_class=nn.ReLU,
        )  # fmt: skip
        self.log_std = nn.Parameter(torch.zeros(action_dim))

    def forward(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = torch.tanh(self.mean(observation))
        scale = self.log_std.clamp(-5.0, 2.0).exp().expand_as(loc)
        return loc, scale


def build_iql(
    obs_dim: int,
    action_dim: int,
    *,
    actor: str = "tanh_normal",
    num_cells: Sequence[int] = (256, 256),
    expectile: float = 0.7,
    temperature: float = 3.0,
    discount: float = 0.99,
) -> tuple[IQLLoss, ProbabilisticActor]:
    """TorchRL's ``IQLLoss`` with twin Q and the chosen actor, on ``[-1, 1]`` actions.

    Args:
        obs_dim / action_dim: sizes of ``observation`` and ``action``.
        actor: ``"tanh_normal"`` or ``"tanh_mean_normal"`` (see the module docstring).
        num_cells: hidden widths of actor, Q and V.
        expectile: IQL's ``tau``. temperature: IQL's ``beta`` (advantage weights
            ``exp(beta A)``, clipped at 100 by TorchRL). discount: the RL discount.

    Returns:
        ``(loss, actor)``; update the loss's target Q with ``SoftUpdate(loss, tau=...)``.
    """
    if actor not in IQL_ACTORS:
        raise ValueError(f"actor must be one of {IQL_ACTORS}, got {actor!r}.")
    cells = list(num_cells)
    spec = Bounded(-torch.ones(action_dim), torch.ones(action_dim), shape=(action_dim,))
    if actor == "tanh_normal":
        net = nn.Sequential(
            MLP(in_features=obs_dim, out_features=2 * action_dim, num_cells=cells,
                activation_class=nn.ReLU),
            NormalParamExtractor(),
        )  # fmt: skip
        distribution, kwargs = TanhNormal, {"low": -1.0, "high": 1.0}
    else:
        net = TanhMeanNormalParams(obs_dim, action_dim, cells)
        distribution, kwargs = IndependentNormal, {}
    policy = ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=distribution,
        distribution_kwargs=kwargs,
    )
    qvalue = ValueOperator(
        MLP(in_features=obs_dim + action_dim, out_features=1, num_cells=cells,
            activation_class=nn.ReLU),
        in_keys=["observation", "action"],
    )  # fmt: skip
    value = ValueOperator(
        MLP(in_features=obs_dim, out_features=1, num_cells=cells, activation_class=nn.ReLU),
        in_keys=["observation"],
    )
    loss = IQLLoss(
        policy,
        qvalue,
        value,
        num_qvalue_nets=2,
        loss_function="l2",
        expectile=float(expectile),
        temperature=float(temperature),
    )
    loss.make_value_estimator(gamma=float(discount))
    return loss, policy
