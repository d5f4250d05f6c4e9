"""IQL-style expectile critic of AEPO (``aepo-math.md`` §7, Eq. 27)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torchrl.objectives import LossModule
from torchrl.objectives.utils import _reduce, distance_loss

from torchrl_aepo.objectives.common import check_loss_options, frozen_view, get_input, unwrap_module

__all__ = ["ExpectileLoss"]


class ExpectileLoss(LossModule):
    """Expectile value regression and TD Q regression with twin Q heads, Eq. 27.

    .. math::

        L_V(\\psi) &= \\mathbb{E}\\big[\\,|\\tau - 1(u < 0)|\\,u^2\\big],\\qquad
            u = \\min_i \\bar Q_i(s, a) - V_\\psi(s), \\\\
        L_Q(\\phi) &= \\mathbb{E}\\Big[\\sum_i \\ell\\big(Q_{\\phi,i}(s, a),\\;
            r + \\gamma (1 - d)\\, V_\\psi(s')\\big)\\Big],

    with ``bar Q`` the target twin critic (Polyak copy of ``Q_phi``), ``d`` the termination
    flag (not truncation, §13.10), ``ell`` the squared error by default, and the TD target and
    ``bar Q`` detached. Per-sample losses ``[*B]`` are reduced with ``reduction``.

    :meth:`forward` returns both losses from one pass, as TorchRL's ``IQLLoss`` does (so the
    Q target uses ``V`` before this step's update; IQL's reference code updates ``V`` first,
    an ``O(lr)`` difference). :meth:`value_loss` and :meth:`qvalue_loss` give the exact IQL
    order when called around the ``V`` optimizer step.

    Target parameters live in ``target_qvalue_network_params``
    (``convert_to_functional(..., create_target_params=True)``) and are updated by
    ``torchrl.objectives.SoftUpdate(loss, tau=0.005)``. The loss evaluates them through a
    cached :func:`~torchrl_aepo.objectives.common.frozen_view` that aliases their storage
    (no per-call ``to_module`` swap); the cache is dropped when the loss is moved.

    Args:
        qvalue_network: twin critic ``(observation [*B,s], action [*B,d]) -> [*B, heads]``
            such as :class:`~torchrl_aepo.TwinQNetwork`, or a ``TensorDictModule`` wrapping one.
        value_network: ``(observation [*B,s]) -> [*B, 1]`` such as
            :class:`~torchrl_aepo.ValueNetwork` (no target copy, as in IQL).

    Keyword Args:
        expectile: ``tau`` in ``(0, 1)``. Defaults to 0.7.
        discount: the RL discount factor. Defaults to 0.99.
        loss_function: Q regression loss, ``"l2"`` (default), ``"l1"`` or ``"smooth_l1"``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Input keys (``set_keys``): ``observation`` ``[*B, s]``, ``action`` ``[*B, d]``,
    ``reward`` (``("next", "reward")``, ``[*B, 1]`` or ``[*B]``), ``done``
    (``("next", "terminated")``, the TD mask), ``next_observation``
    (``("next", "observation")``).
    Output: ``loss_qvalue``, ``loss_value`` and the detached means ``qvalue_mean`` (online
    critic, minimum over heads), ``value_mean``, ``target_qvalue_mean`` (target critic,
    minimum over heads) and ``td_target_mean``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.objectives import SoftUpdate
        >>> from torchrl_aepo import TwinQNetwork, ValueNetwork
        >>> from torchrl_aepo.objectives import ExpectileLoss
        >>> loss = ExpectileLoss(TwinQNetwork(11, 3), ValueNetwork(11), expectile=0.7)
        >>> updater = SoftUpdate(loss, tau=0.005)
        >>> optim = torch.optim.Adam(loss.parameters(), lr=3e-4)
        >>> batch = TensorDict({
        ...     "observation": torch.randn(32, 11), "action": torch.rand(32, 3) * 2 - 1,
        ...     "next": {"observation": torch.randn(32, 11), "reward": torch.randn(32, 1),
        ...              "terminated": torch.zeros(32, 1, dtype=torch.bool)}}, batch_size=[32])
        >>> out = loss(batch)
        >>> (out["loss_qvalue"] + out["loss_value"]).backward()
        >>> optim.step(); updater.step()
        >>> critic = loss.target_qvalue_network()  # frozen critic for AnalyticEnergyLoss
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys.

        Attributes:
            observation: state ``s``. Defaults to ``"observation"``.
            action: dataset action ``a``. Defaults to ``"action"``.
            reward: reward ``r``. Defaults to ``("next", "reward")``.
            done: the TD mask ``d``. Defaults to ``("next", "terminated")``; set it to
                ``("next", "done")`` to also cut bootstrapping on truncation.
            next_observation: next state ``s'``. Defaults to ``("next", "observation")``.
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        reward: NestedKey = ("next", "reward")
        done: NestedKey = ("next", "terminated")
        next_observation: NestedKey = ("next", "observation")

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
        value_network: nn.Module,
        *,
        expectile: float = 0.7,
        discount: float = 0.99,
        loss_function: str = "l2",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if not 0.0 < expectile < 1.0:
            raise ValueError(f"expectile must be in (0, 1), got {expectile}.")
        check_loss_options(discount=discount, loss_function=loss_function, reduction=reduction)
        self.convert_to_functional(
            unwrap_module(qvalue_network), "qvalue_network", create_target_params=True
        )
        self.convert_to_functional(unwrap_module(value_network), "value_network")
        self.expectile = float(expectile)
        self.discount = float(discount)
        self.loss_function = loss_function
        self.reduction = reduction

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = self.tensor_keys
        return [keys.observation, keys.action, keys.reward, keys.done, keys.next_observation]

    @property
    def out_keys(self) -> list[str]:
        return [
            "loss_qvalue",
            "loss_value",
            "qvalue_mean",
            "value_mean",
            "target_qvalue_mean",
            "td_target_mean",
        ]

    def target_qvalue_network(self) -> nn.Module:
        """A new parameter-free view of the target twin critic.

        Its tensors alias ``target_qvalue_network_params`` (see
        :func:`~torchrl_aepo.objectives.common.frozen_view`), so it follows ``SoftUpdate``
        steps; it is the frozen critic of :class:`AnalyticEnergyLoss` and of action selection.
        Build it after moving the loss to its device.
        """
        params = self.target_qvalue_network_params.flatten_keys(".")
        return frozen_view(self.qvalue_network, dict(params.items()))

    def _target_critic(self) -> nn.Module:
        view = self.__dict__.get("_cache_target_qvalue_view")  # erased by LossModule._apply
        if view is None:
            view = self.__dict__["_cache_target_qvalue_view"] = self.target_qvalue_network()
        return view

    def _read(self, tensordict: TensorDictBase, *names: str) -> list[Tensor]:
        """Read ``names`` (fields of ``tensor_keys``); reward/done become ``[*B, 1]``."""
        keys, loss_name = self.tensor_keys, type(self).__name__
        qnet = self.qvalue_network
        last_dims = {
            "observation": getattr(qnet, "obs_dim", None),
            "next_observation": getattr(qnet, "obs_dim", None),
            "action": getattr(qnet, "action_dim", None),
        }
        values = [
            get_input(tensordict, getattr(keys, name), loss_name, last_dims.get(name))
            for name in names
        ]
        batch_shape = values[0].shape[:-1]
        for i, (name, value) in enumerate(zip(names, values, strict=True)):
            if name in ("reward", "done") and value.shape == batch_shape:
                values[i] = value = value.unsqueeze(-1)
            if value.shape[:-1] != batch_shape or (
                name in ("reward", "done") and value.shape[-1] != 1
            ):
                raise ValueError(
                    f"{loss_name}: {getattr(keys, name)!r} has shape {tuple(value.shape)}, "
                    f"incompatible with the batch shape {tuple(batch_shape)} of "
                    f"{getattr(keys, names[0])!r}."
                )
        return values

    def _value_loss(self, observation: Tensor, action: Tensor) -> tuple[Tensor, dict]:
        with torch.no_grad():
            target_q = self._target_critic()(observation, action).min(-1, keepdim=True)[0]
        value = self.value_network(observation)
        diff = target_q - value
        weight = torch.where(diff < 0, 1.0 - self.expectile, self.expectile)
        per_sample = (weight * diff.pow(2)).squeeze(-1)
        return _reduce(per_sample, self.reduction), {
            "value_mean": value.detach().mean(),
            "target_qvalue_mean": target_q.mean(),
        }

    def _qvalue_loss(
        self,
        observation: Tensor,
        action: Tensor,
        reward: Tensor,
        done: Tensor,
        next_observation: Tensor,
    ) -> tuple[Tensor, dict]:
        with torch.no_grad():
            not_done = 1.0 - done.to(reward.dtype)
            td_target = reward + self.discount * not_done * self.value_network(next_observation)
        qvalue = self.qvalue_network(observation, action)
        per_sample = distance_loss(
            qvalue, td_target.expand_as(qvalue), loss_function=self.loss_function
        ).sum(-1)
        return _reduce(per_sample, self.reduction), {
            "qvalue_mean": qvalue.detach().min(-1)[0].mean(),
            "td_target_mean": td_target.mean(),
        }

    def value_loss(self, tensordict: TensorDictBase) -> TensorDict:
        """``loss_value`` (expectile regression on the target critic), ``value_mean``, ``target_qvalue_mean``."""
        observation, action = self._read(tensordict, "observation", "action")
        loss, info = self._value_loss(observation, action)
        return TensorDict({"loss_value": loss, **info}, batch_size=[])

    def qvalue_loss(self, tensordict: TensorDictBase) -> TensorDict:
        """``loss_qvalue`` (TD regression of both heads on ``r + discount (1-d) V(s')``) and means."""
        inputs = self._read(
            tensordict, "observation", "action", "reward", "done", "next_observation"
        )
        loss, info = self._qvalue_loss(*inputs)
        return TensorDict({"loss_qvalue": loss, **info}, batch_size=[])

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        """Compute ``loss_qvalue``, ``loss_value`` and the diagnostics in one pass."""
        observation, action, reward, done, next_observation = self._read(
            tensordict, "observation", "action", "reward", "done", "next_observation"
        )
        loss_value, value_info = self._value_loss(observation, action)
        loss_qvalue, qvalue_info = self._qvalue_loss(
            observation, action, reward, done, next_observation
        )
        return TensorDict(
            {"loss_qvalue": loss_qvalue, "loss_value": loss_value, **qvalue_info, **value_info},
            batch_size=[],
        )
