"""Choosing the guidance degree ``w`` from the training data, without evaluation episodes.

``pi_w ∝ mu exp(w beta Q)`` ascends the critic as ``w`` grows, until the learned energy's
gradient stops following the critic (it is fitted on the data's actions only) and the samples
leave the data's support. :func:`guidance_signals` measures, on dataset states, the critic's
advantage ``min_k Q_k(s, a) - V(s)`` of the actions the faithful actor samples at each degree
of a ladder, and the twin heads' disagreement ``|Q_1 - Q_2|`` there, the critic's own measure of
how far its data support is left. :func:`critic_lower_bound` picks the degree with the largest
pessimistic value ``advantage - pessimism * head_gap`` (a lower confidence bound, as in
uncertainty-penalised offline RL): where the guidance keeps ascending the critic inside its
support the bound grows with ``w``; where the gain is small against the heads' disagreement
(the critic cannot tell the guided actions apart), it stays near ``w = 0``. The default ladder
stops at ``w = 1``, the target ``pi ∝ mu exp(beta Q)`` itself: the rule decides how far from the
behaviour policy toward it the critic's evidence carries, not whether to trust the critic
beyond the temperature ``beta``. (With ``aepo.behaviour_weighting="advantage"`` the model at
``w = 0`` is already that target, and the ladder runs from it to ``mu exp(2 beta Q)``.)

The rule reads only the dataset and the trained networks. Its one constant, ``pessimism = 1``,
was set on three local medium-replay datasets (their evaluation returns seen) and is kept
fixed for every other dataset (docs/locomotion.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

__all__ = ["GuidanceChoice", "critic_lower_bound", "guidance_signals", "select_guidance"]


@dataclass
class GuidanceChoice:
    """The chosen degree and the per-degree signals it was chosen from."""

    guidance: float
    rule: str
    pessimism: float
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
    restored; its noise comes from torch's generator, seeded with ``seed`` for every degree
    inside a forked random state (the caller's is unchanged).
    """
    obs, data_action = batch["observation"], batch["action"]
    data_row = _rate(qvalue, value, obs, data_action, data_action)
    original, rows = actor.guidance_scale, []
    devices = [obs.device.index or 0] if obs.is_cuda else []
    try:
        with torch.random.fork_rng(devices=devices):  # the caller's random state is kept
            for w in ladder:
                actor.guidance_scale = float(w)
                torch.manual_seed(seed)
                td = TensorDict({"observation": obs}, batch_size=obs.shape[:1], device=obs.device)
                action = actor(td)["action"].detach()
                rows.append(
                    {"guidance": float(w), **_rate(qvalue, value, obs, action, data_action)}
                )
    finally:
        actor.guidance_scale = original
    return data_row, rows


def critic_lower_bound(rows: Sequence[dict[str, float]], pessimism: float = 1.0) -> float:
    """The degree with the largest ``advantage - pessimism * head_gap`` (ties: the smallest).

    >>> rows = [{"guidance": w, "advantage": a, "head_gap": g}
    ...         for w, a, g in [(0, 0.0, 1.0), (0.5, 2.0, 1.5), (1, 2.5, 2.5)]]
    >>> critic_lower_bound(rows), critic_lower_bound(rows, pessimism=0.0)
    (0.5, 1.0)
    """
    if not (isinstance(pessimism, (int, float)) and pessimism >= 0):
        raise ValueError(f"pessimism must be >= 0, got {pessimism!r}.")
    rows = sorted(rows, key=lambda r: r["guidance"])
    bounds = [r["advantage"] - pessimism * r["head_gap"] for r in rows]
    return float(rows[bounds.index(max(bounds))]["guidance"])


def select_guidance(
    actor: Any,
    qvalue: torch.nn.Module,
    value: torch.nn.Module,
    dataset: TensorDictBase,
    ladder: Sequence[float],
    *,
    pessimism: float = 1.0,
    states: int = 1024,
    seed: int = 0,
) -> GuidanceChoice:
    """:func:`critic_lower_bound` on :func:`guidance_signals` of ``states`` dataset
    transitions drawn with ``seed`` (``w = 0`` is always on the ladder).

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
        row["lower_bound"] = row["advantage"] - pessimism * row["head_gap"]
    chosen = critic_lower_bound(rows, pessimism)
    return GuidanceChoice(chosen, "critic_lower_bound", float(pessimism), int(states), data_row,
                          rows)  # fmt: skip
