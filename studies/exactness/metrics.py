"""Sample-based distances between 2-D point clouds, with Monte-Carlo noise floors.

* :func:`sliced_wasserstein`: the sliced 2-Wasserstein distance
  ``SW_2(x, y) = ( E_{u ~ U(S^{d-1})} W_2^2(u . x, u . y) )^{1/2}``; with equal sample sizes
  the 1-D ``W_2`` between projections is the root mean square difference of the sorted
  projections.
* :func:`mmd`: the (biased, V-statistic) maximum mean discrepancy with a sum of Gaussian
  kernels ``k(x, y) = sum_h exp(-||x - y||^2 / (2 h^2))``.

Both are estimated from finite samples, so they are positive even between two samples of the
same distribution; :func:`noise_floor` measures that floor (the distance between two
independent samples of the target of the same size), against which a method's distance to
the target must be read.

Examples:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(1000, 2, generator=g), torch.randn(1000, 2, generator=g)
    >>> float(sliced_wasserstein(x, y, generator=g)) < 0.1
    True
    >>> float(sliced_wasserstein(x, y + 1.0, generator=g)) > 0.5
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["sliced_wasserstein", "mmd", "noise_floor"]


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"expected two point clouds [N, d], got {tuple(x.shape)}, {tuple(y.shape)}."
        )


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    *,
    num_projections: int = 512,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sliced 2-Wasserstein distance between two equal-size samples ``[N, d]`` (scalar).

    Args:
        x: first sample.
        y: second sample, same shape.
        num_projections: random directions, uniform on the unit sphere.
        generator: random source of the directions.
    """
    _check_pair(x, y)
    if x.shape != y.shape:
        raise ValueError(f"sliced_wasserstein needs equal sample sizes, got {len(x)} and {len(y)}.")
    directions = torch.randn(x.shape[-1], num_projections, generator=generator, dtype=x.dtype)
    directions = directions / directions.norm(dim=0, keepdim=True)
    px = (x @ directions).sort(dim=0).values
    py = (y @ directions).sort(dim=0).values
    return (px - py).pow(2).mean().sqrt()


def mmd(x: Tensor, y: Tensor, *, bandwidths: Sequence[float] = (0.05, 0.1, 0.2, 0.4)) -> Tensor:
    """Maximum mean discrepancy (V-statistic, square root taken) with a sum of Gaussian kernels.

    ``MMD^2 = mean k(x, x') + mean k(y, y') - 2 mean k(x, y)``, ``k = sum_h exp(-||.||^2 / 2h^2)``.
    """
    _check_pair(x, y)

    def kernel_mean(a: Tensor, b: Tensor) -> Tensor:
        sq = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-sq / (2 * h**2)).mean() for h in bandwidths)

    value = kernel_mean(x, x) + kernel_mean(y, y) - 2 * kernel_mean(x, y)
    return value.clamp_min(0).sqrt()


def noise_floor(
    sample_target: Callable[[int], Tensor],
    distance: Callable[[Tensor, Tensor], Tensor],
    num_samples: int,
    *,
    repeats: int = 3,
) -> float:
    """Mean distance between two independent target samples of size ``num_samples``.

    Args:
        sample_target: ``n -> [n, d]`` draws from the target.
        distance: the distance, e.g. :func:`sliced_wasserstein`.
        num_samples: sample size (the size used for the methods' samples).
        repeats: number of independent pairs averaged.
    """
    values = [
        float(distance(sample_target(num_samples), sample_target(num_samples)))
        for _ in range(repeats)
    ]
    return sum(values) / len(values)
