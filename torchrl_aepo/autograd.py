"""The input gradient of a network: one ``torch.autograd.grad`` call, detached outputs.

Used wherever AEPO needs ``grad_x`` of a scalar-per-sample function: the critic's action
gradient in the energy targets (``g = grad_a Q(s, a)``, Eq. 25) and the energy network's
action gradient in guided sampling (``grad_{a_t} f``, Eq. 13).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["value_and_input_gradient"]


def value_and_input_gradient(fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """``(fn(x), grad_x sum(fn(x)))``, both detached, for per-sample outputs ``fn(x) [*B, k]``.

    ``x`` is detached and made to require grad, so no gradient reaches ``x``'s graph or any
    parameter of ``fn`` that is frozen; runs under ``enable_grad`` (works inside ``no_grad``).
    Summing over the batch is exact because sample ``i``'s output depends on row ``i`` only.

    Example:
        >>> value, grad = value_and_input_gradient(lambda a: (a**2).sum(-1, keepdim=True),
        ...                                        torch.tensor([[1.0, 2.0]]))
        >>> value.tolist(), grad.tolist()
        ([[5.0]], [[2.0, 4.0]])
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        value = fn(x)
        (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad
