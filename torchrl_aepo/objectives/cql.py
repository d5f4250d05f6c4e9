"""Conservative Q-learning for a diffusion behaviour model: the "AEPO-CQL" critic ablation."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor, nn

from torchrl_aepo.objectives.isql import SupportCriticLoss

__all__ = ["CQLCriticLoss"]


class CQLCriticLoss(SupportCriticLoss):
    """CQL(H) with twin Q heads, a behaviour-support backup and a conservative penalty.

    .. math::

        L(\\phi) &= \\mathbb{E}\\Big[\\sum_i \\big(Q_{\\phi,i}(s, a) - y\\big)^2\\Big]
            + \\alpha\\, \\mathbb{E}\\Big[\\sum_i T \\log \\sum_{j=1}^{N+K}
              \\exp\\big(Q_{\\phi,i}(s, \\tilde a_j) / T\\big) - Q_{\\phi,i}(s, a)\\Big], \\\\
        y &= r + \\gamma (1 - d) \\max_k \\bar Q(s', a'_k),

    with ``bar Q`` the minimum over the target twin heads, ``a'_k`` the ``K`` behaviour-model
    support actions at ``s'``, and ``tilde a_{1:N+K}`` the union of ``N`` fresh uniform actions
    in the action box and the ``K`` behaviour-model supports at ``s``. The penalty pushes ``Q``
    down on those actions (a soft maximum) and up on the dataset action.

    What is taken from ``torchrl.objectives.CQLLoss``: the penalty's form (``temperature *
    logsumexp(Q / temperature) - Q(s, a)`` per head, summed, weighted by ``min_q_weight``, here
    ``alpha``), the defaults ``num_random=10`` and ``temperature=1``, and the output key
    ``loss_cql``. What is not: its SAC actor and entropy machinery and the importance weights
    (``- log density`` of each sampled action), because the policy here is a diffusion model
    without a tractable density; the samples enter the logsumexp unweighted. Next-state values
    come from the behaviour supports with CQL's max backup (Kumar et al. 2020, App. F) instead of
    a learned actor's sample, so this loss needs no actor and can drop into AEPO's critic stage.

    Args:
        qvalue_network: twin critic ``(observation [*B,s], action [*B,d]) -> [*B, heads]``.
        value_network: optional state baseline (see :class:`SupportCriticLoss`).

    Keyword Args:
        alpha: penalty weight ``>= 0`` (TorchRL's ``min_q_weight``). Defaults to 1.
        num_random: ``N >= 0`` uniform actions per state. Defaults to 10.
        temperature: ``T > 0``. Defaults to 1.
        action_low / action_high: the box of the uniform actions. Defaults to ``[-1, 1]`` (the
            training box when the data's actions are normalised).
        discount / loss_function / reduction: as :class:`SupportCriticLoss`.

    Input keys (``set_keys``): those of :class:`~torchrl_aepo.objectives.ISQLLoss` plus
    ``support_action`` ``[*B, K, d]`` (default ``("support", "action")``, the supports at ``s``).
    Output: ``loss_qvalue`` (TD), ``loss_cql`` (``alpha`` times the penalty), ``loss_value``
    and the detached ``qvalue_mean``, ``td_target_mean``, ``next_value_mean``,
    ``cql_penalty`` (the unweighted penalty).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_aepo import TwinQNetwork
        >>> loss = CQLCriticLoss(TwinQNetwork(4, 2), alpha=1.0)
        >>> batch = TensorDict({
        ...     "observation": torch.randn(8, 4), "action": torch.rand(8, 2) * 2 - 1,
        ...     "support": {"action": torch.rand(8, 16, 2) * 2 - 1},
        ...     "next": {"observation": torch.randn(8, 4), "reward": torch.randn(8, 1),
        ...              "terminated": torch.zeros(8, 1, dtype=torch.bool),
        ...              "support": {"action": torch.rand(8, 16, 2) * 2 - 1}}}, batch_size=[8])
        >>> out = loss(batch)
        >>> (out["loss_qvalue"] + out["loss_cql"] + out["loss_value"]).backward()
    """

    def __init__(
        self,
        qvalue_network: nn.Module,
        value_network: nn.Module | None = None,
        *,
        alpha: float = 1.0,
        num_random: int = 10,
        temperature: float = 1.0,
        action_low: float | Tensor = -1.0,
        action_high: float | Tensor = 1.0,
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
        if not float(alpha) >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}.")
        if not isinstance(num_random, int) or num_random < 0:
            raise ValueError(f"num_random must be an integer >= 0, got {num_random!r}.")
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        if not bool((low < high).all()):
            raise ValueError(f"action_low must be < action_high, got {low} and {high}.")
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        self.alpha = float(alpha)
        self.num_random = num_random
        self.temperature = float(temperature)

    @property
    def in_keys(self) -> list[NestedKey]:
        return [*super().in_keys, self.tensor_keys.support_action]

    @property
    def out_keys(self) -> list[str]:
        return [*super().out_keys, "loss_cql", "cql_penalty"]

    def next_value(self, next_qvalue: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return next_qvalue.max(-1, keepdim=True)[0], {}

    def extra_losses(self, observation: Tensor, action: Tensor, tensordict: TensorDictBase):
        supports = self._read_supports(tensordict, self.tensor_keys.support_action, observation)
        if self.num_random:
            shape = (*supports.shape[:-2], self.num_random, supports.shape[-1])
            u = torch.rand(shape, device=supports.device, dtype=supports.dtype)
            low, high = self.action_low.to(u), self.action_high.to(u)
            supports = torch.cat([low + (high - low) * u, supports], dim=-2)
        states = self._repeat_states(observation, supports)
        q_sampled = self.qvalue_network(states, supports)  # [*B, N+K, heads]
        soft_max = self.temperature * torch.logsumexp(q_sampled / self.temperature, dim=-2)
        q_data = self.qvalue_network(observation, action)  # [*B, heads]
        penalty = (soft_max - q_data).sum(-1)  # [*B], heads summed
        return {"loss_cql": self.alpha * penalty}, {"cql_penalty": penalty.detach().mean()}
