"""Isotropic posterior variance tables ``sigma^2_{0|t}`` of AEPO (``aepo-math.md`` §5.2-5.3).

The analytic energy target (Eq. 25) needs the variance of the behaviour posterior
``mu(a_0 | a_t, s) ~ N(mu_{0|t}, sigma^2_{0|t} I)``. Both posteriors of the paper average it
over states and actions, so it depends on ``t`` only and is tabulated once per noise network:

**Posterior 1** (Eq. 22, default):

.. math::

    \\sigma^2_{0|t} = \\frac{\\sigma_t^2}{\\alpha_t^2}\\,(1 - \\Gamma(t)),\\qquad
    \\Gamma(t) = \\frac{1}{d}\\,\\mathbb{E}\\,\\|\\epsilon_\\theta(a_t, s, t)\\|^2 .

``1 - Gamma(t)`` is estimated in the *control-variate* form
``E ||eps - eps_theta(a_t, s, t)||^2 / d`` (default; equal in expectation for the optimal
``eps_theta``, non-negative, and its Monte-Carlo error is not blown up by the factor
``sigma_t^2/alpha_t^2`` which reaches 2.3e4 at ``t = 1``, see §5.2) or in the *literal* form
``1 - E ||eps_theta||^2 / d``. Both are computed in the same pass; ``estimator`` picks one.

**Posterior 2** (Eq. 24), with ``b`` the mean dataset action and
``mu_{0|t} = (a_t - sigma_t eps_theta) / alpha_t`` (Eq. 18):

.. math::

    \\sigma^2_{0|t} = \\frac{1}{d}\\,\\mathbb{E}\\|a_0 - b\\|^2
                     - \\frac{1}{d}\\,\\mathbb{E}\\|\\mu_{0|t}(a_t, s) - b\\|^2 .

Both terms are averaged over the *same* draws ``(s, a_0, eps)`` for each ``t`` (paired, and
computed as ``(a_0 - mu).(a_0 + mu - 2b)``): unbiased like the paper's form, but without the
Monte-Carlo noise of the constant first term, which would swamp the ``~1e-4`` variance at
``t = t_min``.

At lookup, tables are interpolated linearly in ``t`` on their uniform grid (Posterior 1
interpolates ``1 - Gamma`` and multiplies by the exact ``sigma_t^2/alpha_t^2``), ``t`` is
clamped to the grid, and the variance is clamped to ``[0, v_max]`` (§13.4).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from torchrl_aepo.diffusion.schedule import VPSchedule
from torchrl_aepo.objectives.common import unwrap_module

__all__ = ["PosteriorStatistics", "StackedPosteriorStatistics"]

_ESTIMATORS = ("control_variate", "literal")


class PosteriorStatistics(nn.Module):
    """Tables of ``1 - Gamma(t)`` and of the Posterior-2 variance on a uniform grid of ``t``.

    Build it with :meth:`estimate` (dataset tensors) or :meth:`from_replay_buffer`; it is an
    ``nn.Module`` so that ``.to(device)`` moves the tables and its ``state_dict`` (tables,
    ``v_max``, estimator and schedule) goes into checkpoints. ``load_state_dict`` accepts
    tables of a different grid size (a refreshed estimate), :meth:`from_state_dict` builds a
    new object.

    Args:
        one_minus_gamma_control_variate: ``E ||eps - eps_theta||^2 / d`` per grid time ``[K]``.
        one_minus_gamma_literal: ``1 - E ||eps_theta||^2 / d`` per grid time ``[K]``.
        posterior2_variance: unclamped Posterior-2 variance per grid time ``[K]``.

    Keyword Args:
        v_max: upper clamp of ``sigma^2_{0|t}``. :meth:`estimate` defaults it to the mean
            per-dimension variance of the dataset actions, an upper bound of the
            state-and-action averaged posterior variance (law of total variance).
        schedule: the VP schedule; the grid is ``linspace(t_min, t_max, K)``.
            Defaults to ``VPSchedule()``.
        estimator: ``"control_variate"`` (default) or ``"literal"``: which ``1 - Gamma`` table
            Posterior 1 and :meth:`gamma` use. Can be changed later.
        samples_per_time: Monte-Carlo samples behind each grid value (bookkeeping only).

    Examples:
        >>> import torch
        >>> from torchrl_aepo import UMLPNoisePredictor
        >>> from torchrl_aepo.objectives import PosteriorStatistics
        >>> net = UMLPNoisePredictor(action_dim=3, obs_dim=11)
        >>> stats = PosteriorStatistics.estimate(
        ...     net, torch.randn(500, 11), torch.rand(500, 3) * 2 - 1,
        ...     num_times=11, samples_per_time=64)
        >>> stats.variance(torch.rand(8, 1)).shape
        torch.Size([8, 1])
        >>> restored = PosteriorStatistics.from_state_dict(stats.state_dict())
    """

    _TABLES = ("one_minus_gamma_control_variate", "one_minus_gamma_literal", "posterior2_variance")

    one_minus_gamma_control_variate: Tensor
    one_minus_gamma_literal: Tensor
    posterior2_variance: Tensor
    v_max: Tensor

    def __init__(
        self,
        one_minus_gamma_control_variate: Tensor,
        one_minus_gamma_literal: Tensor,
        posterior2_variance: Tensor,
        *,
        v_max: float | Tensor,
        schedule: VPSchedule | None = None,
        estimator: str = "control_variate",
        samples_per_time: int = 0,
    ) -> None:
        super().__init__()
        tables = (one_minus_gamma_control_variate, one_minus_gamma_literal, posterior2_variance)
        self._check_tables(tables)
        for name, table in zip(self._TABLES, tables, strict=True):
            self.register_buffer(name, table.detach().clone())
        v_max = torch.as_tensor(v_max, dtype=one_minus_gamma_control_variate.dtype)
        if v_max.ndim != 0 or not v_max > 0:
            raise ValueError(f"v_max must be a positive scalar, got {v_max}.")
        self.register_buffer("v_max", v_max.to(one_minus_gamma_control_variate.device))
        self.schedule = schedule if schedule is not None else VPSchedule()
        self.estimator = estimator
        self.samples_per_time = int(samples_per_time)

    @staticmethod
    def _check_tables(tables: tuple[Tensor, ...]) -> None:
        shapes = {tuple(table.shape) for table in tables}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1 or next(iter(shapes))[0] < 2:
            raise ValueError(
                "PosteriorStatistics tables must be vectors of one common length K >= 2, got "
                f"shapes {[tuple(table.shape) for table in tables]}."
            )

    @property
    def estimator(self) -> str:
        """Which ``1 - Gamma`` table Posterior 1 uses: ``"control_variate"`` or ``"literal"``."""
        return self._estimator

    @estimator.setter
    def estimator(self, value: str) -> None:
        if value not in _ESTIMATORS:
            raise ValueError(f"estimator must be one of {_ESTIMATORS}, got {value!r}.")
        self._estimator = value

    @property
    def num_times(self) -> int:
        """Number of grid times ``K``."""
        return self.one_minus_gamma_control_variate.shape[0]

    def times(self) -> Tensor:
        """The grid ``linspace(t_min, t_max, K)`` ``[K]``."""
        table = self.one_minus_gamma_control_variate
        return torch.linspace(
            self.schedule.t_min,
            self.schedule.t_max,
            self.num_times,
            device=table.device,
            dtype=table.dtype,
        )

    def _interpolate(self, table: Tensor, t: Tensor) -> Tensor:
        """Linear interpolation of ``table`` at times ``t`` (any shape), ``t`` clamped to the grid."""
        t_min, t_max = self.schedule.t_min, self.schedule.t_max
        last = table.shape[0] - 1
        position = ((t - t_min) * (last / (t_max - t_min))).clamp(0.0, last)
        index = position.floor().clamp(max=last - 1)
        weight = position - index
        index = index.long()
        table = table.to(t.dtype)
        return torch.lerp(table[index], table[index + 1], weight)

    def one_minus_gamma(self, t: Tensor) -> Tensor:
        """``1 - Gamma(t)`` from the table of :attr:`estimator` (same shape as ``t``)."""
        return self._interpolate(getattr(self, f"one_minus_gamma_{self.estimator}"), t)

    def gamma(self, t: Tensor) -> Tensor:
        """``Gamma(t) = E ||eps_theta(a_t, s, t)||^2 / d`` (per :attr:`estimator`), shape of ``t``."""
        return 1.0 - self.one_minus_gamma(t)

    def variance(self, t: Tensor, posterior: int = 1, *, clamp: bool = True) -> Tensor:
        """Isotropic posterior variance ``sigma^2_{0|t}``.

        Args:
            t: diffusion times, any shape (typically ``[*B, 1]``).
            posterior: ``1`` (Eq. 22) or ``2`` (Eq. 24).
            clamp: clamp the result to ``[0, v_max]``. Defaults to ``True``.

        Returns:
            a tensor of the shape and dtype of ``t``.
        """
        if posterior == 1:
            value = self.schedule.posterior_variance_factor(t) * self.one_minus_gamma(t)
        elif posterior == 2:
            value = self._interpolate(self.posterior2_variance, t)
        else:
            raise ValueError(f"posterior must be 1 or 2, got {posterior!r}.")
        if clamp:
            value = value.clamp(min=0.0).minimum(self.v_max.to(value.dtype))
        return value

    @classmethod
    @torch.no_grad()
    def estimate(
        cls,
        noise_network: nn.Module,
        observations: Tensor,
        actions: Tensor,
        *,
        schedule: VPSchedule | None = None,
        num_times: int = 1000,
        samples_per_time: int = 4096,
        batch_size: int = 8192,
        estimator: str = "control_variate",
        v_max: float | None = None,
        generator: torch.Generator | None = None,
    ) -> PosteriorStatistics:
        """Monte-Carlo estimate of both posteriors with a frozen noise network (§5.2-5.3).

        For each of ``num_times`` grid times ``t_k = linspace(t_min, t_max)`` it draws
        ``samples_per_time`` pairs ``(s, a_0)`` uniformly from the dataset (with replacement)
        and ``eps ~ N(0, I)``, forms ``a_t = alpha_t a_0 + sigma_t eps`` and evaluates
        ``eps_theta(a_t, s, t)`` once; the three tables are averages of per-sample terms of
        those same evaluations. Cost: ``num_times * samples_per_time`` network evaluations in
        chunks of ``batch_size`` rows (each chunk mixes grid times; ``t`` is per row).

        Args:
            noise_network: the noise predictor ``(a_t [*B,d], t [*B,1], s [*B,s]) -> [*B,d]``
                (or a ``TensorDictModule`` wrapping one), in its final (e.g. EMA) weights.
            observations: dataset states ``[N, s]``; cast to the dtype of ``actions``.
            actions: dataset actions ``[N, d]``, on the device where the network runs.

        Keyword Args:
            schedule: the VP schedule. Defaults to ``VPSchedule()``.
            num_times: grid size ``K >= 2``. Defaults to 1000.
            samples_per_time: Monte-Carlo samples per grid time. Defaults to 4096.
            batch_size: rows per network call. Defaults to 8192 (as fast as larger chunks on
                CPU, ~350 MB less peak memory than 32768 with the paper network; note that the
                chunking sets the order of the random draws).
            estimator: initial :attr:`estimator`. Defaults to ``"control_variate"``.
            v_max: variance clamp; defaults to the mean per-dimension variance of ``actions``.
            generator: random generator on the device of ``actions``.
        """
        network = unwrap_module(noise_network)
        if actions.ndim != 2 or observations.ndim != 2:
            raise ValueError(
                "PosteriorStatistics.estimate expects observations [N, s] and actions [N, d], "
                f"got {tuple(observations.shape)} and {tuple(actions.shape)}."
            )
        if observations.shape[0] != actions.shape[0] or actions.shape[0] == 0:
            raise ValueError(
                "observations and actions must hold the same non-zero number of rows, got "
                f"{observations.shape[0]} and {actions.shape[0]}."
            )
        if num_times < 2 or samples_per_time < 1 or batch_size < 1:
            raise ValueError(
                f"need num_times >= 2, samples_per_time >= 1, batch_size >= 1; got "
                f"{num_times=}, {samples_per_time=}, {batch_size=}."
            )
        schedule = schedule if schedule is not None else VPSchedule()
        device, dtype = actions.device, actions.dtype
        observations = observations.to(dtype)
        num_data, action_dim = actions.shape
        baseline = actions.mean(0)
        if v_max is None:
            v_max = (actions.double() - baseline.double()).pow(2).mean().item()
        grid = torch.linspace(
            schedule.t_min, schedule.t_max, num_times, device=device, dtype=torch.float64
        )
        sums = torch.zeros(3, num_times, device=device, dtype=torch.float64)
        total = num_times * samples_per_time
        for start in range(0, total, batch_size):
            rows = torch.arange(start, min(start + batch_size, total), device=device)
            time_index = rows // samples_per_time
            t = grid[time_index].to(dtype).unsqueeze(-1)
            data_index = torch.randint(num_data, rows.shape, generator=generator, device=device)
            a0, s = actions[data_index], observations[data_index]
            noise = torch.randn(a0.shape, generator=generator, device=device, dtype=dtype)
            noisy = schedule.add_noise(a0, t, noise)
            predicted = network(noisy, t, s)
            mean = schedule.posterior_mean(noisy, predicted, t)
            terms = torch.stack(
                [
                    (noise - predicted).pow(2).sum(-1),
                    predicted.pow(2).sum(-1),
                    ((a0 - mean) * (a0 + mean - 2.0 * baseline)).sum(-1),
                ]
            )
            sums.index_add_(1, time_index, terms.double())
        means = sums / (samples_per_time * action_dim)
        return cls(
            means[0],
            1.0 - means[1],
            means[2],
            v_max=v_max,
            schedule=schedule,
            estimator=estimator,
            samples_per_time=samples_per_time,
        )

    @classmethod
    def from_replay_buffer(
        cls,
        noise_network: nn.Module,
        replay_buffer: Any,
        *,
        observation_key: Any = "observation",
        action_key: Any = "action",
        **kwargs: Any,
    ) -> PosteriorStatistics:
        """:meth:`estimate` on the whole content of a TorchRL replay buffer (``replay_buffer[:]``).

        Args:
            noise_network: see :meth:`estimate`.
            replay_buffer: a ``torchrl.data.ReplayBuffer`` whose items are TensorDicts.
            observation_key: key of the states. Defaults to ``"observation"``.
            action_key: key of the actions. Defaults to ``"action"``.
            **kwargs: forwarded to :meth:`estimate`.
        """
        data = replay_buffer[:]
        observations = data.get(observation_key)
        actions = data.get(action_key)
        return cls.estimate(
            noise_network,
            observations.reshape(-1, observations.shape[-1]),
            actions.reshape(-1, actions.shape[-1]),
            **kwargs,
        )

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "estimator": self.estimator,
            "schedule": self.schedule.state_dict(),
            "samples_per_time": self.samples_per_time,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.estimator = state["estimator"]
        self.schedule = VPSchedule(**state["schedule"])
        self.samples_per_time = int(state["samples_per_time"])

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Unlike nn.Module's loader, tables of another grid size replace the current ones.
        names = (*self._TABLES, "v_max")
        present = [prefix + name for name in names if prefix + name in state_dict]
        missing_keys.extend(prefix + name for name in names if prefix + name not in state_dict)
        if len(present) == len(names):
            try:
                self._check_tables(tuple(state_dict[prefix + name] for name in self._TABLES))
            except ValueError as err:
                error_msgs.append(str(err))
                return
            for name in names:
                current = getattr(self, name)
                value = state_dict[prefix + name].detach().to(current.device, current.dtype)
                setattr(self, name, value.clone())
        extra = prefix + "_extra_state"
        if extra in state_dict:
            self.set_extra_state(state_dict[extra])
        else:
            missing_keys.append(extra)
        known = {*names, "_extra_state"}
        unexpected_keys.extend(
            key
            for key in state_dict
            if key.startswith(prefix)
            and "." not in key[len(prefix) :]
            and key[len(prefix) :] not in known
        )

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, Any]) -> PosteriorStatistics:
        """Build a new object from :meth:`state_dict` output."""
        extra = state_dict["_extra_state"]
        return cls(
            *(state_dict[name] for name in cls._TABLES),
            v_max=state_dict["v_max"],
            schedule=VPSchedule(**extra["schedule"]),
            estimator=extra["estimator"],
            samples_per_time=extra["samples_per_time"],
        )

    def extra_repr(self) -> str:
        return (
            f"num_times={self.num_times}, estimator={self.estimator!r}, "
            f"v_max={self.v_max.item():.4g}, samples_per_time={self.samples_per_time}"
        )


class StackedPosteriorStatistics(nn.Module):
    """The :class:`PosteriorStatistics` of ``N`` independently trained noise networks, for the
    stacked energy stage of several seeds (:class:`~torchrl_aepo.stacked.StackedEnergy`).

    :meth:`variance` takes times ``[N, *B, 1]`` and reads member ``k``'s tables for row ``k``;
    :attr:`v_max` is ``[N, 1, 1]`` (member ``k``'s clamp, broadcasting over ``[N, B, 1]``
    batches). :class:`~torchrl_aepo.objectives.AnalyticEnergyLoss` accepts it in place of one
    table. All members must share one schedule.

    Args:
        members: the ``N`` members' statistics (e.g. ``PosteriorStatistics.estimate`` of each
            member's noise network).
    """

    def __init__(self, members: list[PosteriorStatistics]) -> None:
        super().__init__()
        if len(members) < 1 or not all(isinstance(m, PosteriorStatistics) for m in members):
            raise TypeError("StackedPosteriorStatistics needs one or more PosteriorStatistics.")
        schedules = {tuple(sorted(m.schedule.state_dict().items())) for m in members}
        if len(schedules) != 1:
            raise ValueError("the members' PosteriorStatistics use different schedules.")
        self.members = nn.ModuleList(members)

    @property
    def num_members(self) -> int:
        return len(self.members)

    @property
    def schedule(self) -> VPSchedule:
        return self.members[0].schedule

    @property
    def v_max(self) -> Tensor:
        """Member ``k``'s variance clamp at row ``k``, ``[N, 1, 1]``."""
        return torch.stack([m.v_max for m in self.members]).reshape(-1, 1, 1)

    def variance(self, t: Tensor, posterior: int = 1, *, clamp: bool = True) -> Tensor:
        """``sigma^2_{0|t}`` of member ``k`` at ``t[k]``; ``t`` is ``[N, *B, 1]``."""
        if t.shape[0] != self.num_members:
            raise ValueError(
                f"StackedPosteriorStatistics of {self.num_members} members: times must have a "
                f"leading member dimension, got shape {tuple(t.shape)}."
            )
        return torch.stack(
            [m.variance(t[k], posterior, clamp=clamp) for k, m in enumerate(self.members)]
        )
