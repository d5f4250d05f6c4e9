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

import torch
from tensordict.nn import TensorDictModule
from torch import Tensor, nn
from torchrl.modules import MLP

__all__ = [
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


def _check_last_dim(name: str, x: Tensor, expected: int) -> None:
    if x.shape[-1] != expected:
        raise ValueError(
            f"{name} must have last dimension {expected}, got a tensor of shape {tuple(x.shape)}."
        )


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
