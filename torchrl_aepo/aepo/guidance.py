"""Choosing the guidance degree ``w`` from the training data, without evaluation episodes.

``pi_w ∝ mu exp(w beta Q)`` ascends the critic as ``w`` grows, until the learned energy's
gradient stops following the critic (it is fitted on the data's actions only) and the samples
leave the data's support. :func:`guidance_signals` measures, on dataset states, the critic's
advantage ``min_k Q_k(s, a) - V(s)`` of the actions the faithful actor samples at each degree
of a ladder (and the twin heads' disagreement and the distance to the dataset action, for the
record). :func:`advantage_knee` picks the smallest degree whose advantage gain over the
behaviour policy (``w = 0``) reaches ``knee`` (default 0.8) of the largest gain on the ladder:
where the gain levels off (halfcheetah), that is the start of the plateau; where it peaks and
falls (the guidance stops ascending the critic: walker2d, hopper), at most the peak.

The rule reads only the dataset and the trained networks. Its one constant, ``knee``, was set
on three local medium-replay datasets (their evaluation returns seen), and is kept fixed for
every other dataset (docs/locomotion.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

__all__ = ["GuidanceChoice", "advantage_knee", "guidance_signals", "select_guidance"]


@dataclass
class GuidanceChoice:
    """The chosen degree and the per-degree signals it was chosen from."""

    guidance: float
    rule: str
    knee: float
    states: int
    dataset_actions: dict[str, float]
    rows: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def _rate(qvalue, value, obs: Tensor, action: Tensor, data_action: Tensor) -> dict[str, float]:
    heads = qvalue(obs, action)
    adv = heads.min(-1).values - value(obs).squeeze(-1)
    return {
        "advantage": float(adv.mean()),
        "head_gap": float((heads[..., 0] - heads[..., -1]).abs().mean()),
        "distance_to_data": float((action - data_action).norm(dim=-1).mean()),
        "at_box": float((action.abs() >= 0.999).float().mean()),
    }


def guidance_signals(
    actor: Any,
    qvalue: torch.nn.Module,
    value: torch.nn.Module,
    batch: TensorDictBase,
    ladder: Sequence[float],
    *,
    seed: int = 0,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The critic's view of ``actor``'s actions on ``batch`` (keys ``observation`` ``[N, s]``
    and ``action`` ``[N, d]``, dataset transitions) at each degree of ``ladder``.

    Returns ``(signals of the dataset actions, one row per degree)``; each has ``advantage``
    (mean of ``min_k Q_k - V``), ``head_gap`` (mean ``|Q_1 - Q_2|``), ``distance_to_data`` and
    ``at_box`` (share of entries with ``|a| >= 0.999``). The actor's own guidance degree is
    restored; its noise comes from torch's generator, seeded with ``seed`` for every degree.
    """
    obs, data_action = batch["observation"], batch["action"]
    data_row = _rate(qvalue, value, obs, data_action, data_action)
    original, rows = actor.guidance_scale, []
    try:
        for w in ladder:
            actor.guidance_scale = float(w)
            torch.manual_seed(seed)
            td = TensorDict({"observation": obs}, batch_size=obs.shape[:1], device=obs.device)
            action = actor(td)["action"].detach()
            rows.append({"guidance": float(w), **_rate(qvalue, value, obs, action, data_action)})
    finally:
        actor.guidance_scale = original
    return data_row, rows


def advantage_knee(rows: Sequence[dict[str, float]], knee: float = 0.8) -> float:
    """The smallest degree whose advantage gain over ``w = 0`` (or the smallest degree of the
    ladder) is at least ``knee`` times the largest gain; the smallest degree when no degree
    gains.

    >>> rows = [{"guidance": w, "advantage": a} for w, a in [(0, 0), (0.5, 8), (1, 10), (2, 9)]]
    >>> advantage_knee(rows), advantage_knee(rows, knee=0.9)
    (0.5, 1.0)
    """
    if not 0 < knee <= 1:
        raise ValueError(f"knee must be in (0, 1], got {knee!r}.")
    rows = sorted(rows, key=lambda r: r["guidance"])
    base = rows[0]["advantage"]
    gains = [r["advantage"] - base for r in rows]
    best = max(gains)
    if best <= 0:
        return float(rows[0]["guidance"])
    return float(next(r["guidance"] for r, g in zip(rows, gains, strict=True) if g >= knee * best))


def select_guidance(
    actor: Any,
    qvalue: torch.nn.Module,
    value: torch.nn.Module,
    dataset: TensorDictBase,
    ladder: Sequence[float],
    *,
    knee: float = 0.8,
    states: int = 1024,
    seed: int = 0,
) -> GuidanceChoice:
    """:func:`advantage_knee` on :func:`guidance_signals` of ``states`` dataset transitions
    drawn with ``seed`` (``w = 0`` is always on the ladder).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_aepo import AEPOActor, EnergyNetwork, MLPNoisePredictor
        >>> from torchrl_aepo import TwinQNetwork, ValueNetwork
        >>> actor = AEPOActor(MLPNoisePredictor(2, 3), EnergyNetwork(2, 3))
        >>> data = TensorDict({"observation": torch.randn(64, 3),
        ...                    "action": torch.rand(64, 2) * 2 - 1}, batch_size=[64])
        >>> choice = select_guidance(actor, TwinQNetwork(3, 2), ValueNetwork(3), data,
        ...                          [0.5, 1.0], states=16)
        >>> [r["guidance"] for r in choice.rows], choice.guidance in (0.0, 0.5, 1.0)
        ([0.0, 0.5, 1.0], True)
    """
    if states < 1:
        raise ValueError(f"states must be >= 1, got {states!r}.")
    ladder = sorted({0.0, *(float(w) for w in ladder)})
    if any(w < 0 for w in ladder):
        raise ValueError(f"guidance degrees must be >= 0, got {ladder}.")
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(len(dataset), (states,), generator=g)
    batch = dataset[index.to(dataset.device) if dataset.device is not None else index]
    data_row, rows = guidance_signals(actor, qvalue, value, batch, ladder, seed=seed)
    for row in rows:
        row["head_gap_vs_data"] = row["head_gap"] / max(data_row["head_gap"], 1e-12)
    chosen = advantage_knee(rows, knee)
    return GuidanceChoice(chosen, "advantage_knee", float(knee), int(states), data_row, rows)
