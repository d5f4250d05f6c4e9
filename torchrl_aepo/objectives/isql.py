"""QGPO's in-support softmax Q-learning ("ISQL"), the critic ablation of AEPO (``aepo-math.md`` §7).

The TD target bootstraps on ``K`` behaviour-model actions at the next state instead of IQL's
``V(s')``:

.. math::

    y = r + \\gamma (1 - d) \\sum_{k=1}^K
        \\operatorname{softmax}_k\\big(\\beta_Q \\bar Q(s', a'_{1:K})\\big)\\, \\bar Q(s', a'_k),
    \\qquad a'_k \\sim \\mu(\\cdot | s'),

with ``bar Q`` the minimum over the heads of the target twin critic (QGPO's ``TwinQ`` returns
that minimum). The support actions are drawn once from the frozen behaviour model and reused
for every step, as QGPO does (:class:`~torchrl_aepo.aepo.TrainingPlan`'s ``supports`` stage).

:class:`SupportCriticLoss` holds what ISQL and the CQL ablation
(:class:`~torchrl_aepo.objectives.cql.CQLLoss`) share: keys, the target twin critic, the TD
regression of both heads and the optional state-value baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torchrl.objectives import LossModule
from torchrl.objectives.utils import _reduce, distance_loss

from torchrl_aepo.objectives.common import check_loss_options, frozen_view, get_input, unwrap_module

__all__ = ["SupportCriticLoss", "ISQLLoss"]


class SupportCriticLoss(LossModule):
    """Base of the critics that bootstrap on behaviour-model support actions at ``s'``.

    Subclasses implement :meth:`next_value` (``[*B, K]`` target-critic values at the supports
    -> ``[*B, 1]``) and may add terms in :meth:`extra_losses`.

    The optional ``value_network`` is *not* part of the TD target: it regresses (squared error)
    on the target critic at the dataset action, ``V(s) ≈ E_a~D[min_i bar Q_i(s, a)]``, so that
    ``aepo.energy_baseline=value`` has a state baseline with these critics too (the baseline
    does not change the guidance ``grad_a f``). Without it, ``loss_value`` is a constant 0.

    Args:
        qvalue_network: twin critic ``(observation [*B,s], action [*B,d]) -> [*B, heads]``.
        value_network: optional ``(observation [*B,s]) -> [*B, 1]`` baseline.

    Keyword Args:
        discount: the RL discount. Defaults to 0.99.
        loss_function: ``"l2"`` (default), ``"l1"`` or ``"smooth_l1"`` for the TD regression.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys.

        Attributes:
            observation: state ``s``. Defaults to ``"observation"``.
            action: dataset action ``a``. Defaults to ``"action"``.
            reward: reward ``r``. Defaults to ``("next", "reward")``.
            done: the TD mask ``d``. Defaults to ``("next", "terminated")``.
            next_observation: ``s'``. Defaults to ``("next", "observation")``.
            next_support_action: the ``K`` behaviour-model actions at ``s'``, ``[*B, K, d]``.
                Defaults to ``("next", "support", "action")``.
            support_action: the ``K`` behaviour-model actions at ``s`` (read by CQL only).
                Defaults to ``("support", "action")``.
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        reward: NestedKey = ("next", "reward")
        done: NestedKey = ("next", "terminated")
        next_observation: NestedKey = ("next", "observation")
        next_support_action: NestedKey = ("next", "support", "action")
        support_action: NestedKey = ("support", "action")

    default_keys = _AcceptedKeys
    qvalue_network: nn.Module
    qvalue_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams
    value_network: nn.Module
    value_network_params: TensorDictParams
    target_value_network_params: TensorDictParams

    def __init__(
        self,
        qvalue_network: nn.Module,
        value_network: nn.Module | None = None,
        *,
        discount: float = 0.99,
        loss_function: str = "l2",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_loss_options(discount=discount, loss_function=loss_function, reduction=reduction)
        self.convert_to_functional(
            unwrap_module(qvalue_network), "qvalue_network", create_target_params=True
        )
        self.has_value = value_network is not None
        if value_network is not None:
            self.convert_to_functional(unwrap_module(value_network), "value_network")
        self.discount = float(discount)
        self.loss_function = loss_function
        self.reduction = reduction

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    # ---------------------------------------------------------------- interface
    def next_value(self, next_qvalue: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``[*B, K]`` target-critic values at the ``s'`` supports -> (bootstrap ``[*B, 1]``,
        detached diagnostics)."""
        raise NotImplementedError

    def extra_losses(self, observation: Tensor, action: Tensor, tensordict: TensorDictBase):
        """Additional ``{"loss_*": per-sample [*B]}`` and diagnostics; none by default."""
        return {}, {}

    @property
    def in_keys(self) -> list[NestedKey]:
        k = self.tensor_keys
        return [
            k.observation,
            k.action,
            k.reward,
            k.done,
            k.next_observation,
            k.next_support_action,
        ]

    @property
    def out_keys(self) -> list[str]:
        return ["loss_qvalue", "loss_value", "qvalue_mean", "td_target_mean", "next_value_mean"]

    # ---------------------------------------------------------------- helpers
    def target_qvalue_network(self) -> nn.Module:
        """A parameter-free view of the target twin critic (follows ``SoftUpdate``)."""
        params = self.target_qvalue_network_params.flatten_keys(".")
        return frozen_view(self.qvalue_network, dict(params.items()))

    def _target_critic(self) -> nn.Module:
        view = self.__dict__.get("_cache_target_qvalue_view")  # erased by LossModule._apply
        if view is None:
            view = self.__dict__["_cache_target_qvalue_view"] = self.target_qvalue_network()
        return view

    def _dims(self) -> tuple[int | None, int | None]:
        q = self.qvalue_network
        return getattr(q, "obs_dim", None), getattr(q, "action_dim", None)

    def _read_supports(self, tensordict: TensorDictBase, key: NestedKey, states: Tensor) -> Tensor:
        name = type(self).__name__
        supports = get_input(tensordict, key, name, self._dims()[1])
        if supports.ndim < 3 or supports.shape[:-2] != states.shape[:-1]:
            raise ValueError(
                f"{name}: {key!r} must have shape [*B, K, d] with [*B] = "
                f"{tuple(states.shape[:-1])} (the batch shape of the states), got "
                f"{tuple(supports.shape)}. The support actions come from the behaviour model "
                f"(torchrl_aepo.objectives.sample_support_actions; the plan's 'supports' stage)."
            )
        return supports

    def _read(self, tensordict: TensorDictBase) -> tuple[Tensor, ...]:
        keys, name = self.tensor_keys, type(self).__name__
        obs_dim, action_dim = self._dims()
        observation = get_input(tensordict, keys.observation, name, obs_dim)
        action = get_input(tensordict, keys.action, name, action_dim)
        next_observation = get_input(tensordict, keys.next_observation, name, obs_dim)
        batch_shape = observation.shape[:-1]
        flags = []
        for key in (keys.reward, keys.done):
            value = get_input(tensordict, key, name)
            if value.shape == batch_shape:
                value = value.unsqueeze(-1)
            if value.shape != (*batch_shape, 1):
                raise ValueError(
                    f"{name}: {key!r} has shape {tuple(value.shape)}, incompatible with the "
                    f"batch shape {tuple(batch_shape)} of {keys.observation!r}."
                )
            flags.append(value)
        for key, value in ((keys.action, action), (keys.next_observation, next_observation)):
            if value.shape[:-1] != batch_shape:
                raise ValueError(
                    f"{name}: {key!r} has shape {tuple(value.shape)}, incompatible with the "
                    f"batch shape {tuple(batch_shape)} of {keys.observation!r}."
                )
        supports = self._read_supports(tensordict, keys.next_support_action, next_observation)
        return observation, action, flags[0], flags[1], next_observation, supports

    @staticmethod
    def _repeat_states(states: Tensor, supports: Tensor) -> Tensor:
        return states.unsqueeze(-2).expand(*supports.shape[:-1], states.shape[-1])

    # ---------------------------------------------------------------- the loss
    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        """``loss_qvalue`` (TD regression, both heads summed), ``loss_value`` and diagnostics."""
        observation, action, reward, done, next_observation, supports = self._read(tensordict)
        target = self._target_critic()
        with torch.no_grad():
            states = self._repeat_states(next_observation, supports)
            next_q = target(states, supports).min(-1)[0]  # [*B, K], min over twin heads
            next_value, next_info = self.next_value(next_q)  # [*B, 1]
            not_done = 1.0 - done.to(reward.dtype)
            td_target = reward + self.discount * not_done * next_value
        qvalue = self.qvalue_network(observation, action)  # [*B, heads]
        per_sample = distance_loss(
            qvalue, td_target.expand_as(qvalue), loss_function=self.loss_function
        ).sum(-1)
        out = {
            "loss_qvalue": _reduce(per_sample, self.reduction),
            "loss_value": self._value_loss(observation, action, target),
        }
        extra, info = self.extra_losses(observation, action, tensordict)
        out.update({k: _reduce(v, self.reduction) for k, v in extra.items()})
        out.update(
            qvalue_mean=qvalue.detach().min(-1)[0].mean(),
            td_target_mean=td_target.mean(),
            next_value_mean=next_value.mean(),
            **next_info,
            **info,
        )
        return TensorDict(out, batch_size=[])

    def _value_loss(self, observation: Tensor, action: Tensor, target: nn.Module) -> Tensor:
        if not self.has_value:
            return torch.zeros((), device=observation.device, dtype=observation.dtype)
        with torch.no_grad():
            target_q = target(observation, action).min(-1, keepdim=True)[0]
        value = self.value_network(observation)
        return _reduce((target_q - value).pow(2).squeeze(-1), self.reduction)


class ISQLLoss(SupportCriticLoss):
    """QGPO's in-support softmax Q-learning with twin Q heads.

    .. math::

        L_Q(\\phi) = \\mathbb{E}\\Big[\\sum_i \\big(Q_{\\phi,i}(s, a) - y\\big)^2\\Big],\\quad
        y = r + \\gamma (1 - d) \\sum_k \\operatorname{softmax}_k\\big(\\beta_Q \\bar Q(s', a'_{1:K})\\big)
            \\bar Q(s', a'_k),

    ``bar Q = min_i`` of the target twin critic (Polyak copy of ``Q_phi``, updated by
    ``torchrl.objectives.SoftUpdate``), ``a'_k`` the ``K`` behaviour-model support actions at
    ``s'`` (read from the batch; QGPO uses ``K = 16`` and ``beta_Q = 1``), ``d`` the termination
    flag and ``y`` detached. ``beta_Q -> infinity`` is the in-support max backup,
    ``beta_Q = 0`` the behaviour policy's mean (SARSA-like). QGPO averages the two heads' losses;
    they are summed here, as in :class:`~torchrl_aepo.objectives.ExpectileLoss`.

    Args:
        qvalue_network: twin critic ``(observation [*B,s], action [*B,d]) -> [*B, heads]``.
        value_network: optional state baseline (see :class:`SupportCriticLoss`).

    Keyword Args:
        beta_q: ``beta_Q >= 0``, the softmax inverse temperature. Defaults to 1 (QGPO).
        discount / loss_function / reduction: as :class:`SupportCriticLoss`.

    Input keys (``set_keys``): those of :class:`ExpectileLoss` plus ``next_support_action``
    ``[*B, K, d]`` (default ``("next", "support", "action")``).
    Output: ``loss_qvalue``, ``loss_value`` and the detached ``qvalue_mean``,
    ``td_target_mean``, ``next_value_mean``, ``next_weight_ess`` (mean effective number of
    supports ``1 / sum_k w_k^2`` of the softmax weights).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.objectives import SoftUpdate
        >>> from torchrl_aepo import TwinQNetwork
        >>> loss = ISQLLoss(TwinQNetwork(4, 2), beta_q=1.0)
        >>> updater = SoftUpdate(loss, tau=0.005)
        >>> batch = TensorDict({
        ...     "observation": torch.randn(8, 4), "action": torch.rand(8, 2) * 2 - 1,
        ...     "next": {"observation": torch.randn(8, 4), "reward": torch.randn(8, 1),
        ...              "terminated": torch.zeros(8, 1, dtype=torch.bool),
        ...              "support": {"action": torch.rand(8, 16, 2) * 2 - 1}}}, batch_size=[8])
        >>> loss(batch)["loss_qvalue"].backward(); updater.step()
    """

    def __init__(
        self,
        qvalue_network: nn.Module,
        value_network: nn.Module | None = None,
        *,
        beta_q: float = 1.0,
        discount: float = 0.99,
        loss_function: str = "l2",
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            qvalue_network,
            value_network,
            discount=discount,
            loss_function=loss_function,
            reduction=reduction,
        )
        if not float(beta_q) >= 0:
            raise ValueError(f"beta_q must be >= 0, got {beta_q}.")
        self.beta_q = float(beta_q)

    @property
    def out_keys(self) -> list[str]:
        return [*super().out_keys, "next_weight_ess"]

    def next_value(self, next_qvalue: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        weights = torch.softmax(self.beta_q * next_qvalue, dim=-1)
        ess = (1.0 / weights.pow(2).sum(-1)).mean()
        return (weights * next_qvalue).sum(-1, keepdim=True), {"next_weight_ess": ess}
