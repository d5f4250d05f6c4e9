"""Networks of AEPO (``aepo-math.md`` §11.2) and their ``TensorDictModule`` wrappers.

Every network is a plain :class:`torch.nn.Module` with a tensor signature, so the losses and
the sampler can call it without TensorDict overhead; the ``*_module`` factories wrap them as
:class:`~tensordict.nn.TensorDictModule` with documented keys for TensorDict workflows.

=============================  =====================================================  =======================
network                        ``forward`` signature (shapes)                         default keys
=============================  =====================================================  =======================
:class:`UMLPNoisePredictor`    ``(noisy_action [*B,d], time [*B,1], obs [*B,s])``     ``noisy_action``,
:class:`MLPNoisePredictor`     ``-> noise [*B,d]`` (``+eps``, not QGPO's ``-eps``)    ``diffusion_time``,
                                                                                      ``observation`` ->
                                                                                      ``noise_prediction``
:class:`TwinQNetwork`          ``(obs [*B,s], action [*B,d]) -> q [*B,2]``            ``observation``,
                                                                                      ``action`` ->
                                                                                      ``state_action_value``
:class:`ValueNetwork`          ``(obs [*B,s]) -> v [*B,1]``                           ``observation`` ->
                                                                                      ``state_value``
:class:`EnergyNetwork`         ``(noisy_action [*B,d], time [*B,1], obs [*B,s])``     as the noise predictor
                               ``-> f [*B,1]``                                        -> ``energy``
=============================  =====================================================  =======================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from tensordict.nn import TensorDictModule
from torch import Tensor, nn
from torchrl.modules import MLP

from torchrl_aepo.autograd import value_and_input_gradient

__all__ = [
    "ActionGradientContextNetwork",
    "SamplingContextNetwork",
    "NETWORK_CLASSES",
    "build_network",
    "network_config",
    "GaussianFourierEmbedding",
    "UMLPNoisePredictor",
    "MLPNoisePredictor",
    "TwinQNetwork",
    "ValueNetwork",
    "EnergyNetwork",
    "noise_prediction_module",
    "qvalue_module",
    "value_module",
    "energy_module",
]


@runtime_checkable
class SamplingContextNetwork(Protocol):
    """A network with a sampling fast path (:class:`UMLPNoisePredictor`, :class:`EnergyNetwork`).

    :class:`~torchrl_aepo.AEPOActor` evaluates such networks through a context computed once
    per sampling call from the observations and the solver's evaluation times, then by the
    index of the evaluation; any other network is called as ``net(a_t, t, s)``.
    """

    def sampling_context(self, observation: Tensor, times: Sequence[float]) -> dict:
        """Observation- and time-only work for ``observation [N, s]`` at ``times``."""
        ...

    def forward_context(self, noisy_action: Tensor, index: int, context: dict) -> Tensor:
        """The network's output at ``(noisy_action [N, d], times[index], observation)``."""
        ...


@runtime_checkable
class ActionGradientContextNetwork(SamplingContextNetwork, Protocol):
    """A :class:`SamplingContextNetwork` that also gives ``grad_{a_t}`` of its scalar output."""

    #: whether :meth:`action_gradient_context` needs autograd (else it is hand-written)
    action_gradient_needs_autograd: bool

    def action_gradient_context(self, noisy_action: Tensor, index: int, context: dict) -> Tensor:
        """``grad_{a_t} f(s, a_t, times[index])`` ``[N, d]`` with a :meth:`sampling_context`."""
        ...


def _record_config(net: nn.Module, **kwargs) -> None:
    """Keep a network's constructor arguments as plain values (see :func:`network_config`).

    An activation class is recorded by name when it is one of ``torch.nn``'s, else as
    ``None`` (such a network cannot be rebuilt from its config alone).
    """
    activation = kwargs.get("activation")
    if activation is not None:
        name = getattr(activation, "__name__", None)
        kwargs["activation"] = name if getattr(nn, str(name), None) is activation else None
        if kwargs["activation"] is None:
            kwargs["_unbuildable"] = f"activation {activation!r} is not a torch.nn class"
    for key, value in kwargs.items():
        if isinstance(value, (tuple, list)):
            kwargs[key] = [int(v) for v in value]
    net._config = kwargs


def network_config(network: nn.Module) -> dict | None:
    """A plain (JSON-like) description ``{"class": name, "kwargs": {...}}`` that
    :func:`build_network` turns back into an untrained network of the same architecture.

    ``None`` for networks that are not one of :data:`NETWORK_CLASSES` (or use an activation
    outside ``torch.nn``). Works on :func:`~torchrl_aepo.objectives.frozen_view` copies too.

    Example:
        >>> network_config(ValueNetwork(obs_dim=3, num_cells=(8,)))
        {'class': 'ValueNetwork', 'kwargs': {'obs_dim': 3, 'num_cells': [8], 'activation': 'ReLU'}}
    """
    config = getattr(network, "_config", None)
    name = type(network).__name__
    if config is None or "_unbuildable" in config or NETWORK_CLASSES.get(name) is not type(network):
        return None
    return {"class": name, "kwargs": dict(config)}


def build_network(config: dict) -> nn.Module:
    """The untrained network described by :func:`network_config`'s output.

    Raises:
        ValueError: unknown class name or arguments.
    """
    name = config.get("class") if isinstance(config, dict) else None
    if name not in NETWORK_CLASSES:
        raise ValueError(
            f"cannot build a network from {config!r}: the class must be one of "
            f"{sorted(NETWORK_CLASSES)}."
        )
    kwargs = dict(config.get("kwargs", {}))
    if kwargs.get("activation") is not None:
        kwargs["activation"] = getattr(nn, kwargs["activation"])
    try:
        return NETWORK_CLASSES[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"cannot build {name} from the arguments {kwargs}: {err}") from err


def _check_last_dim(name: str, x: Tensor, expected: int) -> None:
    if x.shape[-1] != expected:
        raise ValueError(
            f"{name} must have last dimension {expected}, got a tensor of shape {tuple(x.shape)}."
        )


def _act_(activation: nn.Module, x: Tensor) -> Tensor:
    """``activation(x)``, in place for the activations that support it (no-autograd paths only)."""
    kind = type(activation)
    if kind is nn.SiLU:
        return torch.nn.functional.silu(x, inplace=True)
    if kind is nn.ReLU:
        return x.relu_()
    return activation(x)


# Sampling contexts with at most this many rows (observations x solver times) are expanded
# for every solver time at once; larger ones are finished per evaluation (memory).
_EXPAND_ALL_TIMES_MAX_ROWS = 2048


class GaussianFourierEmbedding(nn.Module):
    """Fixed random Fourier features of the diffusion time.

    ``emb(t) = [sin(2 pi W t), cos(2 pi W t)]`` with ``W ~ N(0, scale^2)`` drawn once and
    stored as a buffer (saved with the state dict).

    Args:
        embed_dim: output size (even).
        scale: standard deviation of the frequencies. Defaults to ``30`` (QGPO).

    Examples:
        >>> emb = GaussianFourierEmbedding(32)
        >>> emb(torch.rand(5, 1)).shape
        torch.Size([5, 32])
    """

    def __init__(self, embed_dim: int = 32, scale: float = 30.0) -> None:
        super().__init__()
        if embed_dim % 2:
            raise ValueError(f"embed_dim must be even, got {embed_dim}.")
        self.embed_dim = embed_dim
        self.register_buffer("frequencies", 2 * math.pi * scale * torch.randn(embed_dim // 2))

    def forward(self, time: Tensor) -> Tensor:
        """``time`` ``[*B, 1]`` -> features ``[*B, embed_dim]``."""
        angles = time * self.frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class _TimeStateConditioning(nn.Module):
    """QGPO's conditioning vector ``c(t, s)``: Fourier(t) -> Linear, SiLU(Linear(s)), -> 2-layer MLP."""

    def __init__(self, obs_dim: int, embed_dim: int, cond_dim: int, activation: type[nn.Module]):
        super().__init__()
        self.time_embed = nn.Sequential(
            GaussianFourierEmbedding(embed_dim), nn.Linear(embed_dim, embed_dim)
        )
        self.obs_embed = nn.Sequential(nn.Linear(obs_dim, embed_dim), activation())
        self.mlp = nn.Sequential(
            nn.Linear(2 * embed_dim, cond_dim), activation(), nn.Linear(cond_dim, cond_dim)
        )

    def forward(self, time: Tensor, observation: Tensor) -> Tensor:
        return self.mlp(torch.cat([self.time_embed(time), self.obs_embed(observation)], dim=-1))


class _ResidualBlock(nn.Module):
    """``h1 = act(W1 x) + c_proj``; ``h2 = act(W2 h1)``; ``out = h2 + skip(x)``.

    ``c_proj = Linear(act(c))`` is computed for all blocks at once by the parent network.
    When ``in != out`` the first layer and the skip projection share one matmul.
    """

    def __init__(self, in_features: int, out_features: int, activation: type[nn.Module]):
        super().__init__()
        self.out_features = out_features
        self.project_skip = in_features != out_features
        self.dense1 = nn.Linear(in_features, out_features * (2 if self.project_skip else 1))
        self.dense2 = nn.Linear(out_features, out_features)
        self.act = activation()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.dense1(x)
        if self.project_skip:
            h, skip = h.split(self.out_features, dim=-1)
        else:
            skip = x
        h = self.act(h) + cond
        return self.act(self.dense2(h)) + skip

    def forward_inplace(self, x: Tensor, cond: Tensor) -> Tensor:
        """:meth:`forward` with in-place activations and adds; only without autograd."""
        dense1, dense2 = self.dense1, self.dense2
        h = torch.nn.functional.linear(x, dense1.weight, dense1.bias)  # no module-call overhead
        if self.project_skip:
            h, skip = h.split(self.out_features, dim=-1)
        else:
            skip = x
        h = _act_(self.act, h).add_(cond)
        h = torch.nn.functional.linear(h, dense2.weight, dense2.bias)
        return _act_(self.act, h).add_(skip)


class UMLPNoisePredictor(nn.Module):
    """QGPO's residual U-shaped MLP noise predictor ``eps_theta(a_t, s, t)`` (outputs ``+eps``).

    Conditioning ``c = MLP([Linear(Fourier(t)), act(Linear(s))])``; six residual blocks
    ``d1 = RB(d, w1)``, ``d2 = RB(w1, w2)``, ``d3 = RB(w2, w3)``, ``u3 = RB(w3, w3)(d3)``,
    ``u2 = RB(2 w3, w2)([d3, u3])``, ``u1 = RB(2 w2, w1)([d2, u2])`` and an output layer
    ``Linear(2 w1, d)([d1, u1])``. With the defaults ``(512, 256, 128)`` this is the
    1.6M-parameter network of AEPO's Table 4.

    Args:
        action_dim: ``d``.
        obs_dim: state dimension ``s``.
        widths: ``(w1, w2, w3)``.
        embed_dim: size of the time and state embeddings (each). Defaults to 32.
        cond_dim: size of the conditioning vector. Defaults to 128.
        activation: activation class. Defaults to :class:`torch.nn.SiLU`.

    Examples:
        >>> net = UMLPNoisePredictor(action_dim=3, obs_dim=11)
        >>> eps = net(torch.randn(8, 3), torch.rand(8, 1), torch.randn(8, 11))
        >>> eps.shape
        torch.Size([8, 3])
    """

    def __init__(
        self,
        action_dim: int,
        obs_dim: int,
        *,
        widths: Sequence[int] = (512, 256, 128),
        embed_dim: int = 32,
        cond_dim: int = 128,
        activation: type[nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"UMLPNoisePredictor needs three widths (w1, w2, w3), got {widths}.")
        _record_config(
            self,
            action_dim=action_dim,
            obs_dim=obs_dim,
            widths=widths,
            embed_dim=embed_dim,
            cond_dim=cond_dim,
            activation=activation,
        )
        w1, w2, w3 = (int(w) for w in widths)
        self.action_dim, self.obs_dim = action_dim, obs_dim
        self.conditioning = _TimeStateConditioning(obs_dim, embed_dim, cond_dim, activation)
        self.blocks = nn.ModuleList(
            [
                _ResidualBlock(action_dim, w1, activation),  # d1
                _ResidualBlock(w1, w2, activation),  # d2
                _ResidualBlock(w2, w3, activation),  # d3
                _ResidualBlock(w3, w3, activation),  # u3
                _ResidualBlock(2 * w3, w2, activation),  # u2
                _ResidualBlock(2 * w2, w1, activation),  # u1
            ]
        )
        self._cond_sizes = [block.out_features for block in self.blocks]
        # One matmul projects the conditioning vector for all six blocks.
        self.cond_proj = nn.Sequential(activation(), nn.Linear(cond_dim, sum(self._cond_sizes)))
        self.output = nn.Linear(2 * w1, action_dim)

    def forward(self, noisy_action: Tensor, time: Tensor, observation: Tensor) -> Tensor:
        """``[*B, d], [*B, 1], [*B, s] -> [*B, d]``."""
        _check_last_dim("noisy_action", noisy_action, self.action_dim)
        _check_last_dim("observation", observation, self.obs_dim)
        cond = self.cond_proj(self.conditioning(time, observation)).split(self._cond_sizes, -1)
        b = self.blocks
        d1 = b[0](noisy_action, cond[0])
        d2 = b[1](d1, cond[1])
        d3 = b[2](d2, cond[2])
        u3 = b[3](d3, cond[3])
        u2 = b[4](torch.cat([d3, u3], dim=-1), cond[4])
        u1 = b[5](torch.cat([d2, u2], dim=-1), cond[5])
        return self.output(torch.cat([d1, u1], dim=-1))

    # ------------------------------------------------------------------ sampling fast path
    def sampling_context(self, observation: Tensor, times: Sequence[float]) -> dict:
        """Precompute everything that depends only on ``observation [N, s]`` and the solver times.

        The conditioning ``c(t, s)`` and its projection for the six blocks do not depend on the
        action: they are computed here once per sampling call (for every time of
        ``times`` at once when ``N * len(times)`` is small, else their observation and time
        parts separately), so that :meth:`forward_context` runs the residual blocks only.
        Call it without autograd (``no_grad``/``inference_mode``).
        """
        _check_last_dim("observation", observation, self.obs_dim)
        cond = self.conditioning
        first, act, second = cond.mlp
        embed = first.in_features // 2
        w_time, w_obs = first.weight[:, :embed], first.weight[:, embed:]
        t = torch.as_tensor(times, dtype=observation.dtype, device=observation.device)
        time_part = cond.time_embed(t.unsqueeze(-1)) @ w_time.T  # [T, C]
        obs_part = torch.addmm(first.bias, cond.obs_embed(observation), w_obs.T)  # [N, C]
        if observation.shape[0] * len(times) <= _EXPAND_ALL_TIMES_MAX_ROWS:
            h = _act_(act, obs_part.unsqueeze(0) + time_part.unsqueeze(1))  # [T, N, C]
            proj = self.cond_proj(second(h))  # [T, N, sum]
            return {"cond": [p.split(self._cond_sizes, -1) for p in proj.unbind(0)]}
        return {"obs_part": obs_part, "time_part": time_part}

    def forward_context(self, noisy_action: Tensor, index: int, context: dict) -> Tensor:
        """``eps(noisy_action [N, d], times[index], observation)`` with a :meth:`sampling_context`.

        Equal to :meth:`forward` up to float round-off; no autograd (in-place activations).
        """
        if "cond" in context:
            cond = context["cond"][index]
        else:
            _, act, second = self.conditioning.mlp
            h = _act_(act, context["obs_part"] + context["time_part"][index])
            cond = self.cond_proj(second(h)).split(self._cond_sizes, -1)
        b = self.blocks
        d1 = b[0].forward_inplace(noisy_action, cond[0])
        d2 = b[1].forward_inplace(d1, cond[1])
        d3 = b[2].forward_inplace(d2, cond[2])
        u3 = b[3].forward_inplace(d3, cond[3])
        u2 = b[4].forward_inplace(torch.cat([d3, u3], dim=-1), cond[4])
        u1 = b[5].forward_inplace(torch.cat([d2, u2], dim=-1), cond[5])
        output = self.output
        return torch.nn.functional.linear(torch.cat([d1, u1], dim=-1), output.weight, output.bias)


class MLPNoisePredictor(nn.Module):
    """Plain MLP noise predictor: ``MLP([a_t, Linear(Fourier(t)), s]) -> eps`` (outputs ``+eps``).

    Args:
        action_dim: ``d``.
        obs_dim: state dimension ``s``.
        num_cells: hidden widths. Defaults to ``(256, 256, 256)``.
        embed_dim: time embedding size. Defaults to 32.
        activation: activation class. Defaults to :class:`torch.nn.SiLU`.

    Examples:
        >>> net = MLPNoisePredictor(action_dim=1, obs_dim=2, num_cells=(64, 64))
        >>> net(torch.randn(4, 1), torch.rand(4, 1), torch.randn(4, 2)).shape
        torch.Size([4, 1])
    """

    def __init__(
        self,
        action_dim: int,
        obs_dim: int,
        *,
        num_cells: Sequence[int] = (256, 256, 256),
        embed_dim: int = 32,
        activation: type[nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        _record_config(
            self,
            action_dim=action_dim,
            obs_dim=obs_dim,
            num_cells=num_cells,
            embed_dim=embed_dim,
            activation=activation,
        )
        self.action_dim, self.obs_dim = action_dim, obs_dim
        self.time_embed = nn.Sequential(
            GaussianFourierEmbedding(embed_dim), nn.Linear(embed_dim, embed_dim)
        )
        self.mlp = MLP(
            in_features=action_dim + embed_dim + obs_dim,
            out_features=action_dim,
            num_cells=list(num_cells),
            activation_class=activation,
        )

    def forward(self, noisy_action: Tensor, time: Tensor, observation: Tensor) -> Tensor:
        """``[*B, d], [*B, 1], [*B, s] -> [*B, d]``."""
        _check_last_dim("noisy_action", noisy_action, self.action_dim)
        _check_last_dim("observation", observation, self.obs_dim)
        return self.mlp(torch.cat([noisy_action, self.time_embed(time), observation], dim=-1))


class EnergyNetwork(nn.Module):
    """Intermediate energy ``f_omega(s, a_t, t)``: ``MLP([a_t, Linear(Fourier(t)), s]) -> [*B, 1]``.

    Args:
        action_dim: ``d``.
        obs_dim: state dimension ``s``.
        num_cells: hidden widths. Defaults to ``(256, 256, 256)`` (AEPO's 3x256).
        embed_dim: time embedding size. Defaults to 32.
        activation: activation class. Defaults to :class:`torch.nn.SiLU`.

    Examples:
        >>> f = EnergyNetwork(action_dim=3, obs_dim=11)
        >>> f(torch.randn(8, 3), torch.rand(8, 1), torch.randn(8, 11)).shape
        torch.Size([8, 1])
    """

    def __init__(
        self,
        action_dim: int,
        obs_dim: int,
        *,
        num_cells: Sequence[int] = (256, 256, 256),
        embed_dim: int = 32,
        activation: type[nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        _record_config(
            self,
            action_dim=action_dim,
            obs_dim=obs_dim,
            num_cells=num_cells,
            embed_dim=embed_dim,
            activation=activation,
        )
        self.action_dim, self.obs_dim = action_dim, obs_dim
        self.time_embed = nn.Sequential(
            GaussianFourierEmbedding(embed_dim), nn.Linear(embed_dim, embed_dim)
        )
        self.mlp = MLP(
            in_features=action_dim + embed_dim + obs_dim,
            out_features=1,
            num_cells=list(num_cells),
            activation_class=activation,
        )

    def forward(self, noisy_action: Tensor, time: Tensor, observation: Tensor) -> Tensor:
        """``[*B, d], [*B, 1], [*B, s] -> [*B, 1]``."""
        _check_last_dim("noisy_action", noisy_action, self.action_dim)
        _check_last_dim("observation", observation, self.obs_dim)
        return self.mlp(torch.cat([noisy_action, self.time_embed(time), observation], dim=-1))

    # ------------------------------------------------------------------ sampling fast path
    def _layers(self) -> tuple[list[nn.Linear], list[nn.Module]] | None:
        """The MLP as alternating ``Linear``/activation lists, or ``None`` for other layouts."""
        linears, acts = [], []
        for i, layer in enumerate(self.mlp):
            if isinstance(layer, nn.Linear) == (i % 2 == 0):
                (linears if i % 2 == 0 else acts).append(layer)
            else:
                return None
        if len(linears) != len(acts) + 1 or not acts:
            return None
        return linears, acts

    def sampling_context(self, observation: Tensor, times: Sequence[float]) -> dict:
        """Precompute the first layer's time and observation terms for ``observation [N, s]``.

        The first layer acts on ``[a_t, emb(t), s]``; its ``emb(t)`` and ``s`` columns (plus the
        bias) are evaluated here once per sampling call, so that :meth:`forward_context` and
        :meth:`action_gradient_context` only multiply the action columns. Call it without
        autograd.
        """
        _check_last_dim("observation", observation, self.obs_dim)
        first = self.mlp[0]
        d, e = self.action_dim, self.time_embed[1].out_features
        t = torch.as_tensor(times, dtype=observation.dtype, device=observation.device)
        time_part = self.time_embed(t.unsqueeze(-1)) @ first.weight[:, d : d + e].T  # [T, H]
        obs_part = torch.addmm(first.bias, observation, first.weight[:, d + e :].T)  # [N, H]
        context: dict = {"w_action": first.weight[:, :d]}
        if observation.shape[0] * len(times) <= _EXPAND_ALL_TIMES_MAX_ROWS:
            context["bias"] = (obs_part.unsqueeze(0) + time_part.unsqueeze(1)).unbind(0)
        else:
            context["obs_part"], context["time_part"] = obs_part, time_part
        return context

    def _first_layer(self, noisy_action: Tensor, index: int, context: dict) -> Tensor:
        if "bias" in context:
            bias = context["bias"][index]
        else:
            bias = context["obs_part"] + context["time_part"][index]
        return torch.addmm(bias, noisy_action, context["w_action"].T)

    def forward_context(self, noisy_action: Tensor, index: int, context: dict) -> Tensor:
        """``f(noisy_action [N, d], times[index], observation) -> [N, 1]`` with a context.

        Equal to :meth:`forward` up to float round-off; differentiable in ``noisy_action``.
        """
        h = self._first_layer(noisy_action, index, context)
        for layer in list(self.mlp)[1:]:
            h = layer(h)
        return h

    @property
    def action_gradient_needs_autograd(self) -> bool:
        """Whether :meth:`action_gradient_context` falls back to autograd (non-SiLU layouts)."""
        layers = self._layers()
        return layers is None or any(type(act) is not nn.SiLU for act in layers[1])

    def action_gradient_context(self, noisy_action: Tensor, index: int, context: dict) -> Tensor:
        """``grad_{a_t} f(s, a_t, t)`` ``[N, d]`` at ``times[index]`` with a context, no autograd.

        For the default layout (``Linear`` layers with :class:`torch.nn.SiLU` between them) the
        gradient is back-propagated by hand (``silu'(z) = s + silu(z) (1 - s)``,
        ``s = sigmoid(z)``, the output value itself is never formed); any other activation or
        layout uses ``torch.autograd.grad`` of :meth:`forward_context`.
        """
        if self.action_gradient_needs_autograd:
            return value_and_input_gradient(
                lambda x: self.forward_context(x, index, context), noisy_action
            )[1]
        linears = self._layers()[0]
        derivatives = []
        z = self._first_layer(noisy_action, index, context)
        for k, linear in enumerate(linears[1:]):
            sig = torch.sigmoid(z)
            h = z.mul_(sig)  # silu(z), in place: z is not needed again
            derivatives.append(torch.addcmul(sig, h, 1.0 - sig))  # silu'(z)
            if k < len(linears) - 2:
                z = torch.nn.functional.linear(h, linear.weight, linear.bias)
        out = linears[-1]  # f = W_out h + b, out_features 1: df/dh = W_out
        grad = derivatives[-1] * out.weight
        for linear, derivative in zip(
            reversed(linears[1:-1]), reversed(derivatives[:-1]), strict=True
        ):
            grad = (grad @ linear.weight).mul_(derivative)
        return grad @ context["w_action"]


class TwinQNetwork(nn.Module):
    """Two independent Q heads ``Q_1, Q_2(s, a)`` evaluated with batched matmuls.

    Each head is ``[s + d -> 256 -> 256 -> 256 -> 1]`` with ReLU (AEPO/IQL). The heads share
    no parameters; the first layer is one matmul for both, later layers one ``baddbmm``.

    Args:
        obs_dim: state dimension ``s``.
        action_dim: ``d``.
        num_cells: hidden widths. Defaults to ``(256, 256, 256)``.
        num_heads: number of Q heads. Defaults to 2.
        activation: activation class. Defaults to :class:`torch.nn.ReLU`.

    Examples:
        >>> q = TwinQNetwork(obs_dim=11, action_dim=3)
        >>> q(torch.randn(8, 11), torch.randn(8, 3)).shape
        torch.Size([8, 2])
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        *,
        num_cells: Sequence[int] = (256, 256, 256),
        num_heads: int = 2,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if not num_cells:
            raise ValueError("TwinQNetwork needs at least one hidden layer.")
        _record_config(
            self,
            obs_dim=obs_dim,
            action_dim=action_dim,
            num_cells=num_cells,
            num_heads=num_heads,
            activation=activation,
        )
        self.obs_dim, self.action_dim, self.num_heads = obs_dim, action_dim, num_heads
        sizes = [obs_dim + action_dim, *num_cells, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation
            self.weights.append(
                nn.Parameter(torch.empty(num_heads, fan_in, fan_out).uniform_(-bound, bound))
            )
            self.biases.append(
                nn.Parameter(torch.empty(num_heads, 1, fan_out).uniform_(-bound, bound))
            )
        self.act = activation()

    def forward(self, observation: Tensor, action: Tensor) -> Tensor:
        """``[*B, s], [*B, d] -> [*B, num_heads]``."""
        _check_last_dim("observation", observation, self.obs_dim)
        _check_last_dim("action", action, self.action_dim)
        x = torch.cat([observation, action], dim=-1)
        batch_shape = x.shape[:-1]
        x = x.reshape(1, -1, x.shape[-1])  # [1, N, in]: broadcast over heads in the first layer
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x.expand(self.num_heads, -1, -1), w) if i else b + x @ w
            if i < last:
                x = self.act(x)
        # x: [heads, N, 1] -> [*B, heads]
        return x.squeeze(-1).transpose(0, 1).reshape(*batch_shape, self.num_heads)


class ValueNetwork(nn.Module):
    """State value ``V_psi(s)``: ``[s -> 256 -> 256 -> 256 -> 1]`` with ReLU.

    Examples:
        >>> v = ValueNetwork(obs_dim=11)
        >>> v(torch.randn(8, 11)).shape
        torch.Size([8, 1])
    """

    def __init__(
        self,
        obs_dim: int,
        *,
        num_cells: Sequence[int] = (256, 256, 256),
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        _record_config(self, obs_dim=obs_dim, num_cells=num_cells, activation=activation)
        self.obs_dim = obs_dim
        self.mlp = MLP(
            in_features=obs_dim,
            out_features=1,
            num_cells=list(num_cells),
            activation_class=activation,
        )

    def forward(self, observation: Tensor) -> Tensor:
        """``[*B, s] -> [*B, 1]``."""
        _check_last_dim("observation", observation, self.obs_dim)
        return self.mlp(observation)


#: The networks :func:`build_network` can rebuild from a plain config.
NETWORK_CLASSES: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (UMLPNoisePredictor, MLPNoisePredictor, EnergyNetwork, TwinQNetwork, ValueNetwork)
}


def noise_prediction_module(
    network: nn.Module,
    *,
    in_keys: Sequence[str] = ("noisy_action", "diffusion_time", "observation"),
    out_key: str = "noise_prediction",
) -> TensorDictModule:
    """Wrap a noise predictor: reads ``noisy_action``, ``diffusion_time``, ``observation``; writes ``noise_prediction``."""
    return TensorDictModule(network, in_keys=list(in_keys), out_keys=[out_key])


def energy_module(
    network: EnergyNetwork,
    *,
    in_keys: Sequence[str] = ("noisy_action", "diffusion_time", "observation"),
    out_key: str = "energy",
) -> TensorDictModule:
    """Wrap an :class:`EnergyNetwork`: reads ``noisy_action``, ``diffusion_time``, ``observation``; writes ``energy``."""
    return TensorDictModule(network, in_keys=list(in_keys), out_keys=[out_key])


def qvalue_module(
    network: TwinQNetwork,
    *,
    in_keys: Sequence[str] = ("observation", "action"),
    out_key: str = "state_action_value",
) -> TensorDictModule:
    """Wrap a :class:`TwinQNetwork`: reads ``observation``, ``action``; writes ``state_action_value`` ``[*B, 2]``."""
    return TensorDictModule(network, in_keys=list(in_keys), out_keys=[out_key])


def value_module(
    network: ValueNetwork,
    *,
    in_keys: Sequence[str] = ("observation",),
    out_key: str = "state_value",
) -> TensorDictModule:
    """Wrap a :class:`ValueNetwork`: reads ``observation``; writes ``state_value`` ``[*B, 1]``."""
    return TensorDictModule(network, in_keys=list(in_keys), out_keys=[out_key])
