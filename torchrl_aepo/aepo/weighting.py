"""Advantage weights of the dataset's transitions, for an advantage-weighted behaviour model.

With ``aepo.behaviour_weighting="advantage"`` the diffusion stage follows the critic's and
trains the noise network on the dataset reweighted by ``w(s, a) = min(exp(beta A(s, a)), c)``,
``A = min_k Q_k(s, a) - V(s)`` (the target critic's twin minimum, as IQL's actor weights):
its minimiser (:class:`~torchrl_aepo.DiffusionLoss` with a weight) models
``mu_A(a | s) ∝ mu(a | s) exp(beta A(s, a))``, which is AEPO's target ``pi ∝ mu exp(beta Q)``
itself up to the clip ``c`` (``V(s)`` only renormalises per state). The critic is read only at
the dataset's own actions (in-sample, as IQL's weighted regression), not at sampled ones.
The guided sampler at degree ``w`` then targets ``mu exp((1 + w) beta Q)``.
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDictBase
from torch import Tensor, nn

__all__ = ["advantage_weights"]


@torch.no_grad()
def advantage_weights(
    qvalue: nn.Module,
    value: nn.Module,
    dataset: TensorDictBase,
    *,
    beta: float,
    clip: float = 100.0,
    chunk: int = 65536,
) -> Tensor:
    """``min(exp(beta (min_k Q_k(s, a) - V(s))), clip)`` for every transition of ``dataset``.

    Args:
        qvalue: twin critic ``(obs [N, s], action [N, d]) -> [N, K]``.
        value: state value ``obs [N, s] -> [N, 1]``.
        dataset: ``observation [N, s]`` and ``action [N, d]``.
        beta: the temperature (AEPO's ``beta``), ``> 0``.
        clip: the largest weight (IQL's 100), ``> 0``.
        chunk: transitions per forward pass.

    Returns:
        weights ``[N]``, on the dataset's device.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_aepo import TwinQNetwork, ValueNetwork
        >>> data = TensorDict({"observation": torch.randn(10, 3),
        ...                    "action": torch.rand(10, 2) * 2 - 1}, batch_size=[10])
        >>> w = advantage_weights(TwinQNetwork(3, 2), ValueNetwork(3), data, beta=3.0)
        >>> w.shape, bool((w > 0).all() and (w <= 100).all())
        (torch.Size([10]), True)
    """
    if not (isinstance(beta, (int, float)) and beta > 0):
        raise ValueError(f"beta must be > 0, got {beta!r}.")
    if not (isinstance(clip, (int, float)) and clip > 0 and math.isfinite(clip)):
        raise ValueError(f"clip must be a finite number > 0, got {clip!r}.")
    obs, action = dataset["observation"], dataset["action"]
    out = []
    for start in range(0, obs.shape[0], chunk):
        o, a = obs[start : start + chunk], action[start : start + chunk]
        advantage = qvalue(o, a).min(-1).values - value(o).squeeze(-1)
        # the exponent clipped first (no overflow to inf), the weight at exactly `clip`
        out.append(torch.exp((beta * advantage).clamp(max=math.log(clip))).clamp(max=clip))
    weights = torch.cat(out)
    if not bool(torch.isfinite(weights).all()):
        raise ValueError("advantage_weights: the critic gave non-finite values on the dataset.")
    return weights
