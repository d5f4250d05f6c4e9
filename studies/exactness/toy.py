"""Two-dimensional toy problems of the exactness study: behaviour datasets, critics, targets.

The toy problems are state-less (one constant observation, ``obs_dim = 1``): the behaviour
policy ``mu(a)`` is a 2-D distribution in roughly ``[-1, 1]^2`` and the critic ``Q(a)`` an
analytic function, so the target policy of ``aepo-math.md`` §2 (Eq. 4)

.. math::

    \\pi(a) = \\mu(a) \\exp(\\beta Q(a)) / Z

can be sampled exactly by rejection sampling from ``mu`` (``Q`` is bounded above on the data,
so ``exp(beta (Q - Q_max))`` is a valid acceptance probability).

Datasets (:data:`DATASETS`): ``"8gaussians"``, ``"swissroll"``, ``"moons"``,
``"checkerboard"``. Critics (:data:`CRITICS`): ``"linear"`` (``Q = q . a``), ``"bump"`` (a
concave quadratic, ``Q = -||a - c||^2``) and ``"twobumps"`` (a smooth maximum of two bumps,
multimodal).

Examples:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> data = sample_dataset("8gaussians", 1000, generator=g)
    >>> data.shape
    torch.Size([1000, 2])
    >>> critic = make_critic("bump")
    >>> critic(torch.zeros(1000, 1), data).shape  # (observation, action) -> [*B, 1]
    torch.Size([1000, 1])
    >>> target = sample_target("8gaussians", critic, beta=3.0, num_samples=500, generator=g)
    >>> target.shape
    torch.Size([500, 2])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "DATASETS",
    "CRITICS",
    "sample_dataset",
    "ToyCritic",
    "LinearCritic",
    "BumpCritic",
    "TwoBumpsCritic",
    "make_critic",
    "sample_target",
    "constant_observation",
]

ACTION_DIM = 2


def _eight_gaussians(n: int, generator: torch.Generator | None) -> Tensor:
    """Eight isotropic Gaussians (std 0.08) on the circle of radius 0.75."""
    k = torch.randint(0, 8, (n,), generator=generator)
    angle = k.to(torch.float32) * (math.pi / 4)
    centres = 0.75 * torch.stack([angle.cos(), angle.sin()], dim=-1)
    return centres + 0.08 * torch.randn(n, 2, generator=generator)


def _swiss_roll(n: int, generator: torch.Generator | None) -> Tensor:
    """Swiss roll ``theta (cos theta, sin theta)``, ``theta ~ U(1.5 pi, 4.5 pi)``, scaled to radius
    0.9, plus Gaussian noise of std 0.04."""
    theta = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    points = theta.unsqueeze(-1) * torch.stack([theta.cos(), theta.sin()], dim=-1)
    return 0.9 * points / (4.5 * math.pi) + 0.04 * torch.randn(n, 2, generator=generator)


def _two_moons(n: int, generator: torch.Generator | None) -> Tensor:
    """Two interleaved half circles (scikit-learn's layout), centred and scaled by 0.6, plus
    Gaussian noise of std 0.05."""
    theta = math.pi * torch.rand(n, generator=generator)
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, theta.cos(), 1 - theta.cos())
    y = torch.where(upper, theta.sin(), 0.5 - theta.sin())
    points = 0.6 * (torch.stack([x, y], dim=-1) - torch.tensor([0.5, 0.25]))
    return points + 0.05 * torch.randn(n, 2, generator=generator)


def _checkerboard(n: int, generator: torch.Generator | None) -> Tensor:
    """Uniform on the 8 "black" cells of a 4x4 board over ``[-0.95, 0.95]^2``."""
    cell = torch.randint(0, 8, (n,), generator=generator)
    row = cell // 2
    col = 2 * (cell % 2) + row % 2  # alternate columns from row to row
    corner = torch.stack([col, row], dim=-1).to(torch.float32) * 0.5 - 1.0
    points = corner + 0.5 * torch.rand(n, 2, generator=generator)
    return 0.95 * points


DATASETS: dict[str, Callable[[int, torch.Generator | None], Tensor]] = {
    "8gaussians": _eight_gaussians,
    "swissroll": _swiss_roll,
    "moons": _two_moons,
    "checkerboard": _checkerboard,
}
"""Behaviour datasets: name -> ``sampler(n, generator) -> [n, 2]`` (float32, CPU)."""


def sample_dataset(
    name: str, num_samples: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """Draw ``num_samples`` i.i.d. behaviour actions ``[num_samples, 2]`` from dataset ``name``.

    Raises:
        ValueError: for an unknown name (the message lists :data:`DATASETS`).
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown toy dataset {name!r}; expected one of {sorted(DATASETS)}.")
    return DATASETS[name](int(num_samples), generator)


def constant_observation(
    batch_shape: Sequence[int] | torch.Size, like: Tensor | None = None
) -> Tensor:
    """The constant observation of the state-less toy problems: zeros ``[*batch_shape, 1]``."""
    if like is None:
        return torch.zeros(*batch_shape, 1)
    return like.new_zeros(*batch_shape, 1)


class ToyCritic(nn.Module):
    """Analytic critic ``Q(a)`` of a state-less toy problem, with the package's critic signature.

    ``forward(observation [*B, 1], action [*B, 2]) -> [*B, 1]`` (one head; the losses take the
    minimum over the last dimension). Subclasses implement :meth:`value` ``[*B, 2] -> [*B]``. The
    critic has no parameters, so it is frozen by construction.
    """

    action_dim = ACTION_DIM
    obs_dim = 1

    def value(self, action: Tensor) -> Tensor:
        """``Q(a)``: ``[*B, 2] -> [*B]``."""
        raise NotImplementedError

    def forward(self, observation: Tensor, action: Tensor) -> Tensor:
        """``[*B, 1], [*B, 2] -> [*B, 1]``."""
        if action.shape[-1] != ACTION_DIM or observation.shape[-1] != 1:
            raise ValueError(
                f"{type(self).__name__} expects observation [*B, 1] and action [*B, 2], got "
                f"{tuple(observation.shape)} and {tuple(action.shape)}."
            )
        return self.value(action).unsqueeze(-1)


class LinearCritic(ToyCritic):
    """``Q(a) = q . a`` (the Taylor expansion of AEPO, Eq. 15, is exact)."""

    def __init__(self, direction: Sequence[float] = (0.8, 0.6)) -> None:
        super().__init__()
        self.register_buffer("direction", torch.tensor(direction, dtype=torch.float32))

    def value(self, action: Tensor) -> Tensor:
        return action @ self.direction.to(action.dtype)


class BumpCritic(ToyCritic):
    """Concave quadratic ``Q(a) = -||a - c||^2`` (constant Hessian ``-2 I``)."""

    def __init__(self, centre: Sequence[float] = (0.5, 0.5)) -> None:
        super().__init__()
        self.register_buffer("centre", torch.tensor(centre, dtype=torch.float32))

    def value(self, action: Tensor) -> Tensor:
        return -(action - self.centre.to(action.dtype)).pow(2).sum(-1)


class TwoBumpsCritic(ToyCritic):
    """Multimodal ``Q(a) = tau log sum_j exp(-||a - c_j||^2 / tau)``: a smooth max of two bumps."""

    def __init__(
        self,
        centres: Sequence[Sequence[float]] = ((-0.6, 0.6), (0.6, -0.6)),
        temperature: float = 0.2,
    ) -> None:
        super().__init__()
        self.register_buffer("centres", torch.tensor(centres, dtype=torch.float32))
        self.temperature = float(temperature)

    def value(self, action: Tensor) -> Tensor:
        sq = (action.unsqueeze(-2) - self.centres.to(action.dtype)).pow(2).sum(-1)
        return self.temperature * torch.logsumexp(-sq / self.temperature, dim=-1)


CRITICS: dict[str, type[ToyCritic]] = {
    "linear": LinearCritic,
    "bump": BumpCritic,
    "twobumps": TwoBumpsCritic,
}
"""Analytic critics: name -> class (default parameters)."""


def make_critic(name: str) -> ToyCritic:
    """Build the critic ``name`` of :data:`CRITICS` with its default parameters."""
    if name not in CRITICS:
        raise ValueError(f"Unknown toy critic {name!r}; expected one of {sorted(CRITICS)}.")
    return CRITICS[name]()


@torch.no_grad()
def sample_target(
    dataset: str,
    critic: ToyCritic,
    beta: float,
    num_samples: int,
    *,
    generator: torch.Generator | None = None,
    proposal_batch: int = 65536,
) -> Tensor:
    """Exact i.i.d. samples ``[num_samples, 2]`` of ``pi(a) ∝ mu(a) exp(beta Q(a))``.

    Rejection sampling: propose ``a ~ mu`` (the dataset's generator), accept with probability
    ``exp(beta (Q(a) - Q_max))`` where ``Q_max`` is the maximum of ``Q`` over a first proposal
    batch plus a margin of ``1 / beta`` (the datasets are bounded and the critics smooth, so the
    margin covers points beyond the batch maximum; an accepted point above the bound raises).

    Args:
        dataset: a name of :data:`DATASETS`.
        critic: the critic ``Q``.
        beta: inverse temperature ``beta > 0``.
        num_samples: number of samples.
        generator: random source.
        proposal_batch: number of proposals per round.
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}.")
    proposals = sample_dataset(dataset, proposal_batch, generator=generator)
    q_max = critic.value(proposals).max().item() + 1.0 / beta
    accepted: list[Tensor] = []
    count = 0
    while count < num_samples:
        proposals = sample_dataset(dataset, proposal_batch, generator=generator)
        log_accept = beta * (critic.value(proposals) - q_max)
        if log_accept.max() > 0:
            raise RuntimeError("sample_target: the rejection bound Q_max was exceeded; raise it.")
        keep = torch.rand(proposal_batch, generator=generator).log() < log_accept
        accepted.append(proposals[keep])
        count += int(keep.sum())
    return torch.cat(accepted)[:num_samples]
