"""Energy-guided noise prediction with guidance rescaling (``aepo-math.md`` §8, Eqs. 13, 14, 45).

The guided score of the target policy is the behaviour score plus ``w`` times the gradient
of the intermediate energy ``f(s, a_t, t) ≈ E_t(s, a_t)`` (gradient *ascent* on the energy,
i.e. towards higher Q). Multiplying a score by ``-sigma_t`` turns it into a noise prediction:

.. math::

    \\epsilon_w = \\epsilon_\\theta(a_t, s, t) - w\\,\\sigma_t\\,\\nabla_{a_t} f(s, a_t, t)

and guidance rescaling (Eq. 45) keeps the direction of ``eps_w`` but restores the per-sample
L2 norm (over the action dimensions) of the unguided prediction:

.. math::

    \\tilde\\epsilon = \\epsilon_w\\,\\frac{\\|\\epsilon_\\theta\\|_2}{\\max(\\|\\epsilon_w\\|_2, 10^{-8})}.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["guided_noise"]

_NORM_FLOOR = 1e-8


def guided_noise(
    eps: Tensor,
    grad_f: Tensor,
    sigma: Tensor,
    w: float,
    rescale: bool = True,
) -> Tensor:
    """Guided (and optionally rescaled) noise prediction, Eq. 13 in noise form + Eq. 45.

    Args:
        eps: unguided noise prediction ``eps_theta(a_t, s, t)``, ``[*B, d]`` (``+eps`` convention).
        grad_f: ``grad_{a_t} f(s, a_t, t)``, ``[*B, d]``.
        sigma: ``sigma_t``, broadcastable to ``eps`` (usually ``[*B, 1]``).
        w: guidance degree; ``w = 0`` returns ``eps`` unchanged (up to the rescale, which is
            then the identity).
        rescale: apply the per-sample norm rescaling of Eq. 45. Defaults to ``True``.

    Returns:
        ``eps_w = eps - w * sigma * grad_f`` if ``rescale`` is ``False``, else
        ``eps_w * ||eps|| / max(||eps_w||, 1e-8)`` with norms over the last dimension. Shape
        ``[*B, d]``.

    Examples:
        >>> import torch
        >>> eps, grad_f = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])
        >>> sigma = torch.tensor([[0.5]])
        >>> guided_noise(eps, grad_f, sigma, w=2.0, rescale=False)
        tensor([[2., 4.]])
        >>> out = guided_noise(eps, grad_f, sigma, w=2.0)
        >>> torch.linalg.vector_norm(out, dim=-1)  # the norm of eps is restored
        tensor([5.])
    """
    guided = torch.addcmul(eps, sigma, grad_f, value=-w)
    if not rescale:
        return guided
    eps_norm = torch.linalg.vector_norm(eps, dim=-1, keepdim=True)
    guided_norm = torch.linalg.vector_norm(guided, dim=-1, keepdim=True)
    return guided * (eps_norm / guided_norm.clamp_min(_NORM_FLOOR))
