"""AEPO's policy: energy-guided DPM-Solver sampling as a TorchRL actor (``aepo-math.md`` §8, §10).

:class:`AEPOActor` is a :class:`~tensordict.nn.TensorDictModule` (a TorchRL
:class:`~torchrl.modules.SafeModule` with an action ``spec``) that reads ``observation``
``[*B, s]`` and writes ``action`` ``[*B, d]``. Its forward draws ``a_T ~ N(0, I)`` and integrates
the probability-flow ODE with a :class:`~torchrl_aepo.diffusion.DPMSolver`, replacing the
behaviour noise prediction at every model evaluation (intermediate solver points included) by
the guided, optionally rescaled, noise of :func:`~torchrl_aepo.diffusion.guidance.guided_noise`:

.. math::

    \\epsilon_w = \\epsilon_\\theta(a_t, s, t) - w\\,\\sigma_t\\,\\nabla_{a_t} f_\\omega(s, a_t, t),
    \\qquad
    \\tilde\\epsilon = \\epsilon_w \\frac{\\|\\epsilon_\\theta\\|_2}{\\max(\\|\\epsilon_w\\|_2, 10^{-8})}.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torchrl.data import Bounded, Composite, TensorSpec, Unbounded
from torchrl.envs.utils import ExplorationType, exploration_type
from torchrl.modules import SafeModule

from torchrl_aepo.autograd import value_and_input_gradient
from torchrl_aepo.diffusion.guidance import guided_noise
from torchrl_aepo.diffusion.schedule import VPSchedule
from torchrl_aepo.diffusion.solver import DPMSolver
from torchrl_aepo.nets import ActionGradientContextNetwork, SamplingContextNetwork

__all__ = ["AEPOActor", "ActorCheckpointError"]

SELECTION_RULES = ("first", "argmax_q", "softmax_q", "mean")
_Q_SELECTION_RULES = ("argmax_q", "softmax_q")
_CHECKPOINT_FORMAT = "torchrl_aepo.AEPOActor/2"
_SOLVER_ARGS = (
    "algorithm",
    "order",
    "steps",
    "method",
    "skip_type",
    "t_start",
    "t_end",
    "lower_order_final",
)

ActionSpecLike = TensorSpec | tuple[float | Tensor, float | Tensor] | None


class _GuidedSampler(nn.Module):
    """Tensor-level sampler behind :class:`AEPOActor`: ``observation [*B, s] -> action [*B, d]``.

    Holds the networks (so that they appear in the actor's ``state_dict`` under ``module.``)
    and the sampling hyperparameters. See :class:`AEPOActor` for the arguments.
    """

    action_low: Tensor
    action_high: Tensor

    def __init__(
        self,
        noise_network: nn.Module,
        energy_network: nn.Module | None,
        qvalue_network: nn.Module | None,
        *,
        solver: DPMSolver,
        obs_dim: int | None,
        action_spec: TensorSpec,
        guidance_scale: float,
        rescale: bool,
        latent_scale: float,
        num_candidates: int,
        selection: str,
        selection_temperature: float,
        clip_actions: bool,
        deterministic_seed: int,
        num_threads: int | None = None,
        compile_options: dict[str, Any] | None = None,
        clip_denoised: bool = False,
    ) -> None:
        super().__init__()
        self.noise_network = noise_network
        self.energy_network = energy_network
        self.qvalue_network = qvalue_network
        self.solver = solver
        self.obs_dim = obs_dim
        self.action_dim = int(action_spec.shape[-1])
        #: dtype sampling runs in (observations are cast to it): the action spec's; a dtype
        #: move of the actor (``.to(dtype)``, ``.double()``, ...) sets it to the networks'.
        self.sample_dtype = action_spec.dtype
        self.guidance_scale = guidance_scale
        self.rescale = rescale
        self.latent_scale = latent_scale
        self.num_candidates = num_candidates
        self.selection = selection
        self.selection_temperature = selection_temperature
        self.clip_actions = clip_actions and isinstance(action_spec, Bounded)
        self.clip_denoised = clip_denoised
        self.deterministic_seed = deterministic_seed
        self.num_threads = num_threads
        self.compile_options = compile_options
        low = action_spec.space.low if isinstance(action_spec, Bounded) else torch.zeros(0)
        high = action_spec.space.high if isinstance(action_spec, Bounded) else torch.zeros(0)
        self.register_buffer("action_low", low.clone(), persistent=False)
        self.register_buffer("action_high", high.clone(), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"guidance_scale={self.guidance_scale}, rescale={self.rescale}, "
            f"latent_scale={self.latent_scale}, "
            f"num_candidates={self.num_candidates}, selection={self.selection!r}, "
            f"clip_actions={self.clip_actions}, clip_denoised={self.clip_denoised}, "
            f"solver={self.solver!r}"
        )

    @property
    def guided(self) -> bool:
        """Whether sampling evaluates the energy gradient (``energy_network`` set and ``w != 0``)."""
        return self.energy_network is not None and self.guidance_scale != 0.0

    def forward(self, observation: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``[*B, s] -> [*B, d]``; without ``generator`` the exploration type picks the noise source."""
        self._check_observation(observation)
        if generator is None and exploration_type() not in (None, ExplorationType.RANDOM):
            generator = torch.Generator(device=observation.device)
            generator.manual_seed(self.deterministic_seed)
        self._check_network_dtypes()
        batch_shape = observation.shape[:-1]
        obs = observation.reshape(-1, observation.shape[-1]).to(self.sample_dtype)
        previous_threads = torch.get_num_threads()
        if self.num_threads is not None and self.num_threads != previous_threads:
            torch.set_num_threads(self.num_threads)  # process-global: restored below
        try:
            if self._autograd_free():
                with torch.inference_mode():
                    action = self._sample_flat(obs, generator)
                action = action.clone()  # a normal tensor for the caller
            else:
                # Inference mode would disable the energy gradient: autograd for the sampler.
                with torch.inference_mode(False), torch.no_grad():
                    if obs.is_inference():
                        obs = obs.clone()
                    action = self._sample_flat(obs, generator)
        except RuntimeError as err:
            if "dtype" not in str(err) and "scalar type" not in str(err):
                raise
            raise ValueError(self._dtype_message(err)) from err
        finally:
            if torch.get_num_threads() != previous_threads:
                torch.set_num_threads(previous_threads)
        return action.reshape(*batch_shape, self.action_dim)

    def _check_network_dtypes(self) -> None:
        """The networks used by this call must share one floating dtype (or hold none)."""
        used = [self.noise_network]
        if self.guided:
            used.append(self.energy_network)
        if self.num_candidates > 1 and self.qvalue_network is not None:
            used.append(self.qvalue_network)
        dtypes = {_floating_dtype(net) for net in used} - {None}
        if len(dtypes) > 1:
            raise ValueError(self._dtype_message(None))

    def _dtype_message(self, err: Exception | None) -> str:
        nets = {
            name: _floating_dtype(net)
            for name, net in (
                ("noise_network", self.noise_network),
                ("energy_network", self.energy_network),
                ("qvalue_network", self.qvalue_network),
            )
            if net is not None
        }
        found = ", ".join(f"{k}: {v}" for k, v in nets.items())
        failed = "cannot run: the networks differ" if err is None else f"failed ({err})"
        return (
            f"AEPOActor sampling in {self.sample_dtype} {failed}. The networks hold "
            f"{found}; the sampling dtype is the action spec's ({self.sample_dtype}). Move the "
            f"whole actor with actor.to(dtype) / actor.double() (networks and spec together), "
            f"or build the networks and the action spec with one dtype."
        )

    def _autograd_free(self) -> bool:
        """Whether sampling needs no autograd (context networks, hand-written energy gradient)."""
        if not isinstance(self.noise_network, SamplingContextNetwork):
            return False
        if not self.guided:
            return True
        energy = self.energy_network
        return (
            isinstance(energy, ActionGradientContextNetwork)
            and not energy.action_gradient_needs_autograd
        )

    def _check_observation(self, observation: Tensor) -> None:
        if not isinstance(observation, Tensor):
            raise TypeError(f"observation must be a tensor, got {type(observation).__name__}.")
        if observation.ndim == 0 or (
            self.obs_dim is not None and observation.shape[-1] != self.obs_dim
        ):
            expected = "[*B, s]" if self.obs_dim is None else f"[*B, {self.obs_dim}]"
            raise ValueError(
                f"AEPOActor expects an observation of shape {expected}, got shape "
                f"{tuple(observation.shape)}."
            )

    def _sample_flat(self, obs: Tensor, generator: torch.Generator | None) -> Tensor:
        """``obs [N, s] -> action [N, d]``; candidates of row ``i`` are rows ``iK..iK+K-1``."""
        num_obs, k = obs.shape[0], self.num_candidates
        if k > 1:
            obs = obs.repeat_interleave(k, dim=0)
        x_T = torch.randn(
            (obs.shape[0], self.action_dim), generator=generator, device=obs.device, dtype=obs.dtype
        )
        if self.latent_scale != 1.0:  # the same draws, so that 1 is bitwise the plain sampler
            x_T = x_T * self.latent_scale
        guidance = self.guidance_scale if self.guided else None
        if self.compile_options is None:
            action = self.denoise(obs, x_T, guidance)
        else:  # w as a tensor: a new guidance degree reuses the compiled code
            if guidance is not None:
                guidance = torch.tensor(guidance, dtype=obs.dtype, device=obs.device)
            action = _compiled_denoise(self.compile_options)(self, obs, x_T, guidance)
        if k == 1:
            return action
        if self.selection == "mean":
            return action.view(num_obs, k, self.action_dim).mean(dim=1)
        return self._select(obs, action.view(num_obs, k, self.action_dim), generator)

    def denoise(self, obs: Tensor, x_T: Tensor, guidance: float | Tensor | None) -> Tensor:
        """Integrate from the latents ``x_T [N, d]`` to (clipped) actions ``[N, d]``.

        ``guidance`` is the degree ``w`` (a float or a 0-d tensor); ``None`` samples the
        behaviour policy without evaluating the energy network.
        """
        action = self.solver.sample(self._noise_fn(obs, guidance), x_T)
        if self.clip_actions:
            low, high = self.action_low.to(action.dtype), self.action_high.to(action.dtype)
            action = torch.clamp(action, low, high)
        return action

    def _noise_fn(
        self, obs: Tensor, guidance: float | Tensor | None
    ) -> Callable[[Tensor, Tensor], Tensor]:
        """The solver's ``eps(x [N, d], t [N, 1])`` for the observations ``obs [N, s]``.

        Networks that offer ``sampling_context(obs, times)`` (and ``forward_context`` /
        ``action_gradient_context``, like :class:`~torchrl_aepo.UMLPNoisePredictor` and
        :class:`~torchrl_aepo.EnergyNetwork`) precompute their observation- and time-only work
        once per call and are then evaluated by the index of the solver evaluation (the solver
        calls ``noise_fn`` at ``solver.eval_times``, in order; one counter here gives that index
        to every per-evaluation piece); other networks are called with ``(x, t, obs)``.
        ``w sigma_t`` (and, with ``clip_denoised``, ``alpha_t`` and ``sigma_t``) are
        precomputed per evaluation time.
        """
        eps_at = self._model_noise_at(obs, guidance)
        if self.clip_denoised:
            eps_at = self._clip_denoised(eps_at, obs)
        nfe, calls = len(self.solver.eval_times), itertools.count()
        return lambda x, t: eps_at(x, t, next(calls) % nfe)

    def _clip_denoised(
        self, eps_at: Callable[[Tensor, Tensor, int], Tensor], obs: Tensor
    ) -> Callable[[Tensor, Tensor, int], Tensor]:
        """``eps_at`` with its data prediction clamped to the action box at every evaluation.

        ``x0_hat = (x - sigma_t eps) / alpha_t`` is clamped to ``[action_low, action_high]``
        and the noise that predicts the clamped value, ``(x - alpha_t clamp(x0_hat)) / sigma_t``,
        is returned (DPM-Solver++'s static thresholding, in noise space so that every solver
        uses it). The exact ``E[a_0 | a_t]`` of actions in a box lies in the box, which is
        convex, so the clamp never moves the prediction away from it.
        """
        coef = _alpha_sigma_at(self.solver, obs)
        low = self.action_low.to(device=obs.device, dtype=obs.dtype)
        high = self.action_high.to(device=obs.device, dtype=obs.dtype)

        def clipped(x: Tensor, t: Tensor, i: int) -> Tensor:
            alpha, sigma = coef[i]
            x0 = torch.clamp((x - sigma * eps_at(x, t, i)) / alpha, low, high)
            return (x - alpha * x0) / sigma

        return clipped

    def _model_noise_at(
        self, obs: Tensor, guidance: float | Tensor | None
    ) -> Callable[[Tensor, Tensor, int], Tensor]:
        """The (guided) model noise ``(x, t, index) -> eps`` of :meth:`_noise_fn`."""
        times = self.solver.eval_times
        noise = _network_eval(self.noise_network, obs, times)
        if guidance is None:
            return noise
        energy_grad = _energy_gradient_eval(self.energy_network, obs, times)
        w_sigmas = [guidance * sigma for _, sigma in _alpha_sigma_at(self.solver, obs)]
        rescale = self.rescale

        def guided_eps(x: Tensor, t: Tensor, i: int) -> Tensor:
            grad_f = energy_grad(x, t, i)
            return guided_noise(noise(x, t, i), grad_f, w_sigmas[i], 1.0, rescale)

        return guided_eps

    def _select(self, obs: Tensor, candidates: Tensor, generator: torch.Generator | None) -> Tensor:
        """Pick one of ``candidates [N, K, d]`` per observation with the critic (min over heads)."""
        num_obs, k, d = candidates.shape
        q = self.qvalue_network(obs, candidates.reshape(num_obs * k, d))
        q = q.amin(dim=-1).view(num_obs, k)
        if self.selection == "argmax_q":
            index = q.argmax(dim=-1)
        else:
            probs = torch.softmax(q / self.selection_temperature, dim=-1)
            index = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        return candidates.gather(1, index.view(num_obs, 1, 1).expand(num_obs, 1, d)).squeeze(1)


class AEPOActor(SafeModule):
    """AEPO policy: guided DPM-Solver sampling from the diffusion behaviour model.

    Sampling (``aepo-math.md`` §10): draw ``a_T ~ N(0, tau^2 I)`` ``[*B, K, d]`` (``tau`` is
    ``latent_scale``, 1 by default: the model's own distribution) and integrate the
    probability-flow ODE from ``t = 1`` to ``t_min`` with ``solver``, using at every model
    evaluation (including the intermediate points of singlestep solvers) the guided noise

    .. math::

        \\epsilon_w = \\epsilon_\\theta(a_t, s, t) - w\\,\\sigma_t\\,\\nabla_{a_t} f_\\omega(s, a_t, t)

    (gradient ascent on the intermediate energy, i.e. towards higher Q; Eq. 13 multiplied by
    ``-sigma_t``), rescaled per sample to the norm of ``eps_theta`` when ``rescale`` (Eq. 45):
    ``eps_w * ||eps_theta|| / max(||eps_w||, 1e-8)``, L2 over the action dimensions. ``w = 0`` or
    ``energy_network=None`` is exactly the behaviour policy and never evaluates the energy
    network. The energy gradient of the whole batch is one autograd call per evaluation, with
    autograd enabled only around it (``torch.no_grad()`` elsewhere, also when the caller runs
    under ``torch.inference_mode()``); no network parameter receives a gradient.

    Candidates (``num_candidates = K > 1``): each observation is repeated ``K`` times, all
    ``[*B, K]`` samples are drawn in one batch (clipped first, when ``clip_actions``), and one
    per observation is kept with the critic ``Q = min`` over the heads of ``qvalue_network``:
    ``"argmax_q"`` takes the best candidate, ``"softmax_q"`` draws one with probabilities
    ``softmax(Q / selection_temperature)``. ``"mean"`` needs no critic: it returns the average
    of the ``K`` (clipped) candidates, a Monte-Carlo estimate of the policy's mean action (for a
    Gaussian policy ``N(m, S)`` an unbiased estimate of ``m`` with covariance ``S / K``; for a
    multimodal one it lies between the modes). ``"first"`` (the default, and AEPO/QGPO's
    protocol) needs ``K = 1``.

    Exploration semantics: under ``ExplorationType.RANDOM`` (and when no exploration type is
    set, as in a bare ``env.rollout``) the latent noise and the ``softmax_q`` draw come from the
    global torch RNG, so repeated calls give different samples. Under ``DETERMINISTIC``,
    ``MODE``, ``MEAN`` or ``MEDIAN`` the actor still returns a *sample of the policy* (the
    image of the all-zero latent is ``latent_scale=0``, a choice of its own), drawn from a
    ``torch.Generator`` reseeded with ``deterministic_seed`` at every call: the same batch of
    observations always gives the same actions, and the global RNG is left untouched. The noise
    of a row depends on its position in the flattened batch (row ``i`` uses draws
    ``i K d .. (i + 1) K d - 1``), so in a batched rollout each environment follows the
    deterministic map ``s -> a(s, z_i)`` with its own fixed latent ``z_i``. Sampling runs under
    ``torch.no_grad()`` rather than ``inference_mode`` even when ``w = 0``, so the returned
    actions are ordinary tensors that a loss can later use with autograd.

    Args:
        noise_network: ``eps_theta(noisy_action [N, d], time [N, 1], observation [N, s]) -> [N, d]``
            (``+eps`` convention), e.g. :class:`~torchrl_aepo.UMLPNoisePredictor`. Its
            ``obs_dim`` / ``action_dim`` attributes, when present, are used to check inputs.
        energy_network: ``f_omega(noisy_action, time, observation) -> [N, 1]``, e.g.
            :class:`~torchrl_aepo.EnergyNetwork`; ``None`` samples the behaviour policy.

    Keyword Args:
        action_spec: a :class:`~torchrl.data.Bounded` (or ``Unbounded``) spec of shape ``[d]``,
            a ``Composite`` holding it under the output key, a ``(low, high)`` pair, or
            ``None`` for ``Bounded(-1, 1, shape=[d])`` (D4RL's action box). Its dtype is the
            sampling dtype (observations are cast to it).
        guidance_scale: guidance degree ``w``. Defaults to ``1.0``. Settable on the actor.
        rescale: apply Eq. 45. Defaults to ``True``. Settable on the actor.
        latent_scale: ``tau``, the standard deviation of the initial latent ``a_T`` (a sampling
            temperature). ``1`` (default) samples the guided policy itself; ``tau < 1`` draws
            from the probability-flow ODE's image of a narrower latent, which for a Gaussian
            policy ``N(m, S)`` is exactly ``N(m, tau^2 S)``: ``0`` gives the deterministic map
            ``s -> a(s, 0)``, the mean of a Gaussian policy, like a Gaussian actor's mode. Not
            AEPO's policy unless 1 (a deployment choice; ``docs/locomotion.md``). Settable.
        solver: the ODE solver. Defaults to ``DPMSolver(schedule)`` (DPM-Solver++, singlestep,
            order 2, 15 evaluations: QGPO's sampler).
        schedule: the noise schedule, used for ``sigma_t``; must equal ``solver.schedule``.
            Defaults to the solver's schedule, or ``VPSchedule()``.
        num_candidates: ``K``, samples per observation. Defaults to ``1``.
        selection: ``"first"``, ``"argmax_q"``, ``"softmax_q"`` or ``"mean"``. Defaults to
            ``"first"``.
        qvalue_network: critic ``(observation [N, s], action [N, d]) -> [N, H]`` (e.g.
            :class:`~torchrl_aepo.TwinQNetwork`), needed by the Q-based rules.
        selection_temperature: temperature of ``"softmax_q"``. Defaults to ``1.0``.
        clip_actions: clamp samples to the bounds of a ``Bounded`` spec. Defaults to ``True``.
        clip_denoised: clamp the solver's data prediction ``x0_hat = (x - sigma_t eps) /
            alpha_t`` to the ``Bounded`` spec's box at every model evaluation (DPM-Solver++'s
            static thresholding; the guided noise is replaced by the one predicting the
            clamped ``x0_hat``). Defaults to ``False`` (AEPO/QGPO's sampler). Settable.
        deterministic_seed: seed of the deterministic-mode generator. Defaults to ``0``.
        num_threads: intra-op threads (``torch.set_num_threads``) while sampling, restored
            after each call; ``None`` (default) leaves the process setting alone. The setting
            is process-global, so do not share the process with concurrent torch work while a
            call runs. On a shared, oversubscribed CPU ``1`` is much faster for the paper
            networks at every batch size measured (see ``docs/performance.md``).
        compile: ``True`` runs the solver loop (all network evaluations, guidance and
            clipping; not the latent draw or the candidate selection) through
            ``torch.compile``; a mapping is passed to it as keyword arguments, e.g.
            ``{"mode": "reduce-overhead"}`` for CUDA graphs on a GPU. The first call per
            batch shape (and per ``rescale`` value, and for ``w = 0``) compiles, which takes
            seconds to a minute; other guidance degrees reuse it. ``False`` (default) runs
            eagerly. Not stored by :meth:`save` (pass it to :meth:`from_checkpoint`).
        in_keys: the observation key (one key). Defaults to ``("observation",)``.
        out_keys: the action key (one key). Defaults to ``("action",)``.

    Checkpoints: :meth:`save` writes each network's tensors and plain constructor config
    together with the action spec, the solver and schedule configuration and all sampling
    hyperparameters, atomically and without pickled code; :meth:`from_checkpoint` reads it
    with ``torch.load(weights_only=True)``, rebuilds the networks of :mod:`torchrl_aepo.nets`
    (other networks are passed in as overrides and receive the stored weights) and the actor,
    optionally overriding any constructor argument. The standard
    ``state_dict`` / ``load_state_dict`` hold the network parameters only (keys
    ``module.noise_network.*``, ``module.energy_network.*``, ``module.qvalue_network.*``).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_aepo import EnergyNetwork, UMLPNoisePredictor
        >>> from torchrl_aepo.actor import AEPOActor
        >>> actor = AEPOActor(
        ...     UMLPNoisePredictor(action_dim=6, obs_dim=17),
        ...     EnergyNetwork(action_dim=6, obs_dim=17),
        ...     guidance_scale=3.0,
        ... )
        >>> td = actor(TensorDict({"observation": torch.randn(4, 17)}, batch_size=[4]))
        >>> td["action"].shape
        torch.Size([4, 6])
        >>> actor.sample(torch.randn(2, 5, 17)).shape  # tensor in, tensor out; any batch rank
        torch.Size([2, 5, 6])
    """

    module: _GuidedSampler

    def __init__(
        self,
        noise_network: nn.Module,
        energy_network: nn.Module | None = None,
        *,
        action_spec: ActionSpecLike = None,
        guidance_scale: float = 1.0,
        rescale: bool = True,
        latent_scale: float = 1.0,
        solver: DPMSolver | None = None,
        schedule: VPSchedule | None = None,
        num_candidates: int = 1,
        selection: str = "first",
        qvalue_network: nn.Module | None = None,
        selection_temperature: float = 1.0,
        clip_actions: bool = True,
        clip_denoised: bool = False,
        deterministic_seed: int = 0,
        num_threads: int | None = None,
        compile: bool | Mapping[str, Any] = False,
        in_keys: Sequence[NestedKey] = ("observation",),
        out_keys: Sequence[NestedKey] = ("action",),
    ) -> None:
        in_keys, out_keys = list(in_keys), list(out_keys)
        if len(in_keys) != 1 or len(out_keys) != 1:
            raise ValueError(
                f"AEPOActor reads one observation key and writes one action key, got "
                f"in_keys={in_keys}, out_keys={out_keys}."
            )
        obs_dim = _optional_dim(noise_network, "obs_dim")
        spec = _action_spec(action_spec, _optional_dim(noise_network, "action_dim"), out_keys[0])
        action_dim = int(spec.shape[-1])
        for name, net in (("energy_network", energy_network), ("qvalue_network", qvalue_network)):
            _check_dims(name, net, obs_dim, action_dim)
        solver, schedule = _solver_and_schedule(solver, schedule)
        if clip_denoised and not isinstance(spec, Bounded):
            raise ValueError(
                "clip_denoised=True clamps the data prediction to the action box; the action "
                f"spec is {type(spec).__name__}: pass a Bounded spec or clip_denoised=False."
            )
        if not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be finite, got {guidance_scale}.")
        _check_latent_scale(latent_scale)
        if num_threads is not None and (
            isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
        ):
            raise ValueError(f"num_threads must be None or an int >= 1, got {num_threads!r}.")
        if not isinstance(compile, (bool, Mapping)):
            raise TypeError(
                f"compile must be a bool or a mapping of torch.compile options, got {compile!r}."
            )
        if isinstance(num_candidates, bool) or not isinstance(num_candidates, int):
            raise ValueError(f"num_candidates must be an int >= 1, got {num_candidates!r}.")
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}.")
        if selection not in SELECTION_RULES:
            raise ValueError(
                f"Unknown selection rule {selection!r}; expected one of {SELECTION_RULES}."
            )
        if selection == "first" and num_candidates > 1:
            raise ValueError(
                f"selection='first' keeps one sample, so num_candidates={num_candidates} would "
                "waste samples; use num_candidates=1 or selection='argmax_q'/'softmax_q'/'mean'."
            )
        if selection in _Q_SELECTION_RULES and qvalue_network is None:
            raise ValueError(f"selection={selection!r} needs a qvalue_network (a critic).")
        if not selection_temperature > 0:
            raise ValueError(f"selection_temperature must be > 0, got {selection_temperature}.")
        sampler = _GuidedSampler(
            noise_network,
            energy_network,
            qvalue_network,
            solver=solver,
            obs_dim=obs_dim,
            action_spec=spec,
            guidance_scale=float(guidance_scale),
            rescale=bool(rescale),
            latent_scale=float(latent_scale),
            num_candidates=num_candidates,
            selection=selection,
            selection_temperature=float(selection_temperature),
            clip_actions=bool(clip_actions),
            clip_denoised=bool(clip_denoised),
            deterministic_seed=int(deterministic_seed),
            num_threads=num_threads,
            compile_options=dict(compile)
            if isinstance(compile, Mapping)
            else ({} if compile else None),
        )
        super().__init__(
            sampler, in_keys=in_keys, out_keys=out_keys, spec=Composite({out_keys[0]: spec})
        )

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> AEPOActor:
        """``nn.Module._apply`` (``.to``, ``.double()``, ``.half()``, ...); when it changes the
        noise network's dtype, sampling and the action spec follow it (so ``actor.spec``
        describes what the actor returns). Device-only moves leave the dtype alone."""
        before = _floating_dtype(self.module.noise_network)
        out = super()._apply(fn, recurse)
        after = _floating_dtype(self.module.noise_network)
        if after is not None and after != before:  # a dtype move, not only a device move
            self.module.sample_dtype = after
            if self.action_spec.dtype != after:
                self.spec[self.out_keys[0]] = self.action_spec.to(after)
        return out

    # ------------------------------------------------------------------ tensor API
    def sample(self, observation: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Sample actions for raw observations ``[*B, s] -> [*B, d]`` without a TensorDict.

        Args:
            observation: states, any batch rank.
            generator: noise source; when given it overrides the exploration-type rule.
        """
        return self.module(observation, generator)

    @property
    def noise_network(self) -> nn.Module:
        """The behaviour noise predictor ``eps_theta``."""
        return self.module.noise_network

    @property
    def energy_network(self) -> nn.Module | None:
        """The intermediate-energy network ``f_omega`` (``None``: behaviour policy)."""
        return self.module.energy_network

    @property
    def qvalue_network(self) -> nn.Module | None:
        """The critic used to select among candidates."""
        return self.module.qvalue_network

    @property
    def solver(self) -> DPMSolver:
        """The ODE solver."""
        return self.module.solver

    @property
    def schedule(self) -> VPSchedule:
        """The noise schedule (``solver.schedule``)."""
        return self.module.solver.schedule

    @property
    def action_spec(self) -> TensorSpec:
        """The spec of the action (``self.spec[out_key]``)."""
        return self.spec[self.out_keys[0]]

    @property
    def guidance_scale(self) -> float:
        """Guidance degree ``w`` (settable, e.g. for a guidance sweep)."""
        return self.module.guidance_scale

    @guidance_scale.setter
    def guidance_scale(self, value: float) -> None:
        if not math.isfinite(value):
            raise ValueError(f"guidance_scale must be finite, got {value}.")
        self.module.guidance_scale = float(value)

    @property
    def latent_scale(self) -> float:
        """Standard deviation ``tau`` of the initial latent (settable; 1: the policy itself)."""
        return self.module.latent_scale

    @latent_scale.setter
    def latent_scale(self, value: float) -> None:
        self.module.latent_scale = _check_latent_scale(value)

    @property
    def rescale(self) -> bool:
        """Whether the guided noise is rescaled (Eq. 45); settable."""
        return self.module.rescale

    @rescale.setter
    def rescale(self, value: bool) -> None:
        self.module.rescale = bool(value)

    @property
    def clip_denoised(self) -> bool:
        """Whether the data prediction is clamped to the action box at every evaluation; settable."""
        return self.module.clip_denoised

    @clip_denoised.setter
    def clip_denoised(self, value: bool) -> None:
        if value and not isinstance(self.action_spec, Bounded):
            raise ValueError("clip_denoised=True needs a Bounded action spec.")
        self.module.clip_denoised = bool(value)

    # ------------------------------------------------------------------ checkpoints
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (besides the networks) that rebuild this actor."""
        sampler = self.module
        return {
            "action_spec": self.action_spec.clone().cpu(),
            "guidance_scale": sampler.guidance_scale,
            "rescale": sampler.rescale,
            "latent_scale": sampler.latent_scale,
            "solver": {name: getattr(sampler.solver, name) for name in _SOLVER_ARGS},
            "schedule": self.schedule.state_dict(),
            "num_candidates": sampler.num_candidates,
            "selection": sampler.selection,
            "selection_temperature": sampler.selection_temperature,
            "clip_actions": sampler.clip_actions,
            "clip_denoised": sampler.clip_denoised,
            "deterministic_seed": sampler.deterministic_seed,
            "num_threads": sampler.num_threads,
            "in_keys": list(self.in_keys),
            "out_keys": list(self.out_keys),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the networks' tensors and a plain config to ``path`` (atomically).

        The file holds only tensors and plain Python values (no pickled code), so
        :meth:`from_checkpoint` reads it with ``torch.load(weights_only=True)``: per network its
        :func:`~torchrl_aepo.nets.network_config` (class name and constructor arguments, or
        ``None`` for networks outside :mod:`torchrl_aepo.nets`) and all its parameters and
        buffers by name; the action spec as bounds and dtype; and :meth:`config`'s
        sampling hyperparameters.
        """
        from torchrl_aepo.atomic import save_torch_atomic
        from torchrl_aepo.nets import network_config

        networks = {}
        for name in _NETWORK_ARGS:
            net = getattr(self, name)
            networks[name] = None
            if net is not None:
                networks[name] = {
                    "config": network_config(net),
                    "type": f"{type(net).__module__}.{type(net).__qualname__}",
                    "state": _network_tensors(net),
                }
        config = self.config()
        config["action_spec"] = _plain_spec(config["action_spec"])
        payload = {"format": _CHECKPOINT_FORMAT, "networks": networks, "config": config}
        save_torch_atomic(payload, path)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        map_location: torch.device | str | None = None,
        **overrides: Any,
    ) -> AEPOActor:
        """Rebuild an actor written by :meth:`save` (read with ``weights_only=True``).

        Args:
            path: the checkpoint file.
            map_location: forwarded to :func:`torch.load` (e.g. ``"cpu"``).
            **overrides: any constructor argument, replacing the stored one (for instance
                ``guidance_scale=3.0``, ``solver=DPMSolver(steps=30)`` or ``num_candidates`` with
                ``selection``). A ``schedule`` override without a ``solver`` keeps the stored
                solver configuration on the new schedule. A network override
                (``noise_network=``, ``energy_network=``, ``qvalue_network=``) is a module of the
                stored architecture that receives the stored weights; it is required for
                networks that are not one of :mod:`torchrl_aepo.nets` (they cannot be rebuilt
                from a plain config). ``None`` drops a network (e.g. ``energy_network=None``
                for the behaviour policy).

        Raises:
            ActorCheckpointError: (a ``ValueError``) the file is empty, truncated, not a torch
                file, an old pickled-module checkpoint or not an ``AEPOActor`` checkpoint; or
                a network cannot be rebuilt or does not match the stored weights. The message
                names the file and what to do.
            FileNotFoundError: there is no file at ``path``.
        """
        where = os.fspath(path)
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001 - zip, pickle, EOF, unsupported-global errors
            detail = _load_error_detail(err)
            if "Unsupported global" in str(err):
                raise ActorCheckpointError(
                    f"{where!r} holds pickled Python objects ({detail}), e.g. an actor "
                    "saved by torchrl-aepo < 0.2, which pickled whole modules. It is not loaded, "
                    "because unpickling can run arbitrary code. If you trust the file, load it "
                    "with torch.load(path, weights_only=False), rebuild AEPOActor from its "
                    "networks and save() it again; else re-create it (see below).\n"
                    + _RECREATE_HINT
                ) from err
            raise ActorCheckpointError(
                f"{where!r} is not a readable AEPOActor checkpoint: it is empty, truncated or "
                f"not a torch file ({detail}).\n" + _RECREATE_HINT
            ) from err
        if not isinstance(payload, dict) or payload.get("format") != _CHECKPOINT_FORMAT:
            raise ActorCheckpointError(
                f"{where!r} is not an AEPOActor checkpoint written by save() (format tag "
                f"{payload.get('format') if isinstance(payload, dict) else None!r}, expected "
                f"{_CHECKPOINT_FORMAT!r}).\n" + _RECREATE_HINT
            )
        try:
            kwargs = dict(payload["config"])
            solver_args = kwargs.pop("solver")
            schedule = VPSchedule(**kwargs.pop("schedule"))
            kwargs["action_spec"] = _spec_from_plain(kwargs["action_spec"])
            stored = payload["networks"]
        except (KeyError, TypeError, ValueError) as err:
            raise ActorCheckpointError(
                f"{where!r} is an AEPOActor checkpoint with a damaged config ({err!r}).\n"
                + _RECREATE_HINT
            ) from err
        for name in _NETWORK_ARGS:
            kwargs[name] = _restore_network(where, name, stored.get(name), overrides)
        kwargs.update({k: v for k, v in overrides.items() if k not in _NETWORK_ARGS})
        if "solver" not in overrides:
            schedule = kwargs.pop("schedule", schedule)
            kwargs["solver"] = DPMSolver(schedule, **solver_args)
        return cls(**kwargs)


def _check_latent_scale(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"latent_scale must be a number >= 0, got {value!r}.")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"latent_scale must be finite and >= 0, got {value!r}.")
    return float(value)


class ActorCheckpointError(ValueError):
    """An ``AEPOActor`` checkpoint cannot be read or does not match the requested networks."""


_NETWORK_ARGS = ("noise_network", "energy_network", "qvalue_network")
_RECREATE_HINT = (
    "To re-create it: call AEPOActor.save(path) on the trained actor, or re-run the recipe with "
    "the same run_dir (finished stages are restored from checkpoints/, not retrained, and "
    "actor.pt is written again)."
)


def _load_error_detail(err: Exception) -> str:
    """A one-line summary of a ``torch.load`` error (its messages run over many lines)."""
    text = str(err)
    match = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if match:
        return f"{type(err).__name__}: it needs the class {match.group(1)}"
    match = re.search(r"WeightsUnpickler error: \s*(.+)", text)
    line = match.group(1) if match else (text.splitlines() or [""])[0]
    return f"{type(err).__name__}: {line.strip()[:160]}"


def _network_tensors(network: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer (persistent or not, e.g. of a frozen view) by name, on CPU."""
    tensors = dict(network.named_parameters(remove_duplicate=False))
    tensors.update(network.named_buffers(remove_duplicate=False))
    return {k: v.detach().cpu().clone() for k, v in tensors.items()}


def _restore_network(
    where: str, name: str, entry: Mapping[str, Any] | None, overrides: Mapping[str, Any]
) -> nn.Module | None:
    """The network ``name`` of a checkpoint: built from its config (or the override), with the
    stored tensors copied in (converted to their stored dtype)."""
    from torchrl_aepo.nets import build_network

    if name in overrides:
        network = overrides[name]
        if network is None or entry is None:
            return network
    elif entry is None:
        return None
    elif entry.get("config") is None:
        raise ActorCheckpointError(
            f"{where!r}: {name} is a {entry.get('type')}, which is not one of torchrl_aepo.nets "
            f"and cannot be rebuilt from the checkpoint. Pass {name}=<an untrained module of "
            f"that architecture> to AEPOActor.from_checkpoint; the stored weights are loaded "
            f"into it."
        )
    else:
        network = build_network(entry["config"])
    state = entry["state"]
    targets = dict(network.named_parameters(remove_duplicate=False))
    targets.update(network.named_buffers(remove_duplicate=False))
    missing, unexpected = sorted(set(targets) - set(state)), sorted(set(state) - set(targets))
    wrong = [
        f"{k}: {tuple(state[k].shape)} stored vs {tuple(v.shape)}"
        for k, v in targets.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        raise ActorCheckpointError(
            f"{where!r}: the stored {name} does not fit {type(network).__name__} (missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}, shapes {wrong[:3]}); pass a module of "
            "the stored architecture, or none to use the stored one."
        )
    dtype = next((t.dtype for t in state.values() if t.dtype.is_floating_point), None)
    if dtype is not None:
        network = network.to(dtype)
        targets = dict(network.named_parameters(remove_duplicate=False))
        targets.update(network.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        for key, target in targets.items():
            target.copy_(state[key])
    return network


def _plain_spec(spec: TensorSpec) -> dict[str, Any]:
    """An action spec as tensors and strings (readable with ``weights_only=True``)."""
    dtype = str(spec.dtype).removeprefix("torch.")
    if isinstance(spec, Bounded):
        return {
            "kind": "bounded",
            "low": spec.space.low.clone(),
            "high": spec.space.high.clone(),
            "dtype": dtype,
        }
    return {"kind": "unbounded", "shape": list(spec.shape), "dtype": dtype}


def _spec_from_plain(plain: Mapping[str, Any]) -> TensorSpec:
    dtype = getattr(torch, plain["dtype"])
    if plain["kind"] == "bounded":
        low, high = plain["low"], plain["high"]
        return Bounded(low, high, shape=low.shape, dtype=dtype)
    return Unbounded(shape=tuple(plain["shape"]), dtype=dtype)


_COMPILED: dict[str, Callable[..., Tensor]] = {}


def _denoise(sampler: _GuidedSampler, obs: Tensor, x_T: Tensor, guidance: Tensor | None) -> Tensor:
    return sampler.denoise(obs, x_T, guidance)


def _compiled_denoise(options: dict[str, Any]) -> Callable[..., Tensor]:
    """``torch.compile(_denoise, **options)``, one per distinct option set.

    A module-level function of the sampler (rather than a compiled bound method stored on
    it) keeps actors picklable and deep-copyable. Dynamo guards on the sampler and its
    attributes (``rescale`` recompiles once per value); ``w`` comes in as a tensor.
    """
    key = repr(sorted(options.items()))
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(_denoise, **options)
    return _COMPILED[key]


def _alpha_sigma_at(solver: DPMSolver, like: Tensor) -> list[tuple[Tensor, Tensor]]:
    """``(alpha_t, sigma_t)`` at each of ``solver.eval_times``: 0-d tensors of ``like``'s dtype
    and device (computed in float64; tensors, not floats, so ``torch.compile`` does not break)."""
    out = []
    for t in solver.eval_times:
        alpha, sigma = solver.schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64))
        out.append((alpha.to(like.dtype).to(like.device), sigma.to(like.dtype).to(like.device)))
    return out


def _network_eval(
    network: nn.Module, obs: Tensor, times: Sequence[float]
) -> Callable[[Tensor, Tensor, int], Tensor]:
    """``(x, t, index) -> network output``, through a sampling context when the network has one."""
    if isinstance(network, SamplingContextNetwork):
        context = network.sampling_context(obs, times)
        return lambda x, t, i: network.forward_context(x, i, context)
    return lambda x, t, i: network(x, t, obs)


def _energy_gradient_eval(
    network: nn.Module, obs: Tensor, times: Sequence[float]
) -> Callable[[Tensor, Tensor, int], Tensor]:
    """``(x, t, index) -> grad_x f(x, t, obs)``; one autograd call for networks without a context."""
    if isinstance(network, ActionGradientContextNetwork):
        context = network.sampling_context(obs, times)
        return lambda x, t, i: network.action_gradient_context(x, i, context)

    def gradient(x: Tensor, t: Tensor, i: int) -> Tensor:
        return value_and_input_gradient(lambda x_in: network(x_in, t, obs), x)[1]

    return gradient


def _floating_dtype(network: nn.Module) -> torch.dtype | None:
    """dtype of the first floating parameter (or buffer) of ``network``; ``None`` if it has none."""
    for tensor in itertools.chain(network.parameters(), network.buffers()):
        if tensor.dtype.is_floating_point:
            return tensor.dtype
    return None


def _optional_dim(network: nn.Module, name: str) -> int | None:
    value = getattr(network, name, None)
    return None if value is None else int(value)


def _check_dims(name: str, network: nn.Module | None, obs_dim: int | None, action_dim: int) -> None:
    if network is None:
        return
    for attr, expected in (("obs_dim", obs_dim), ("action_dim", action_dim)):
        got = _optional_dim(network, attr)
        if got is not None and expected is not None and got != expected:
            raise ValueError(
                f"{name}.{attr} = {got} does not match the noise network / action spec ({expected})."
            )


def _action_spec(spec: ActionSpecLike, action_dim: int | None, out_key: NestedKey) -> TensorSpec:
    """Normalise the ``action_spec`` argument to a ``[d]`` spec."""
    if isinstance(spec, Composite):
        if out_key not in spec.keys(True, True):
            raise ValueError(
                f"The Composite action_spec has no entry for the output key {out_key!r}."
            )
        spec = spec[out_key]
    if spec is None or isinstance(spec, tuple):
        if action_dim is None:
            raise ValueError(
                "Cannot infer the action dimension: pass a TensorSpec as action_spec or use a "
                "noise_network with an `action_dim` attribute."
            )
        low, high = (-1.0, 1.0) if spec is None else spec
        spec = Bounded(low, high, shape=(action_dim,), dtype=torch.float32)
    elif not isinstance(spec, (Bounded, Unbounded)):
        raise TypeError(
            f"action_spec must be None, a (low, high) pair, Bounded, Unbounded or Composite; "
            f"got {type(spec).__name__}."
        )
    if len(spec.shape) != 1 or (action_dim is not None and spec.shape[-1] != action_dim):
        raise ValueError(
            f"action_spec must have shape [{action_dim if action_dim is not None else 'd'}], "
            f"got {tuple(spec.shape)}."
        )
    if not spec.dtype.is_floating_point:
        raise ValueError(f"action_spec must have a floating dtype, got {spec.dtype}.")
    return spec.clone()


def _solver_and_schedule(
    solver: DPMSolver | None, schedule: VPSchedule | None
) -> tuple[DPMSolver, VPSchedule]:
    if solver is None:
        solver = DPMSolver(schedule)
    elif schedule is not None and schedule.state_dict() != solver.schedule.state_dict():
        raise ValueError(
            f"schedule {schedule!r} differs from the solver's schedule {solver.schedule!r}; "
            "pass one of them (or the same one)."
        )
    return solver, solver.schedule
