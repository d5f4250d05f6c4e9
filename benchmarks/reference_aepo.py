"""Plain-PyTorch reference implementation of one AEPO update and of the guided sampler.

This file is the *reference point* of the benchmark harness (``python -m benchmarks``):
the same mathematics as the library (``aepo-math.md`` §3, §5.2, §6, §7, §8, §10), written the
way research code usually is -- one ``torch.optim.Adam`` per network, separate forward passes
for every quantity, a Python ``for`` loop over the solver steps that recomputes the schedule
coefficients with tensor ops at every call, a per-parameter Polyak loop, no TensorDict, no
``torch.compile``. It deliberately contains none of the library's optimisations, so that the
ratio "library / reference" measures what the library's engineering buys.

Two network flavours (same parameter counts, so FLOP counts are comparable):

* ``style="library"``: the networks of :mod:`torchrl_aepo.nets` (fused conditioning
  projection, batched twin-Q heads). The ratio library/reference then isolates the
  loss/actor/solver logic.
* ``style="research"``: QGPO-shaped networks written here in the usual research way (one
  ``nn.Linear`` per conditioning projection and skip path, two separate Q MLPs); by default
  the energy network has QGPO's 4 hidden layers of 256. This is the local stand-in for the
  published QGPO code that issue 8's targets are stated against.

Nothing here is imported by the library; the harness loads this file from the source tree.

Example::

    >>> import torch
    >>> nets = make_networks(action_dim=3, obs_dim=11, style="research")
    >>> algo = ReferenceAEPO(nets)
    >>> batch = random_batch(256, action_dim=3, obs_dim=11)
    >>> algo.estimate_gamma(batch["obs"], batch["act"], num_times=8, samples_per_time=64)
    >>> losses = algo.update(batch)
    >>> sampler = ReferenceGuidedSampler(nets["score"], nets["energy"], steps=15, order=2)
    >>> with torch.no_grad():
    ...     actions = sampler(batch["obs"][:4])
    >>> actions.shape
    torch.Size([4, 3])
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

__all__ = [
    "BETA_0",
    "BETA_1",
    "T_MIN",
    "marginal_log_mean_coeff",
    "marginal_std",
    "marginal_lambda",
    "inverse_lambda",
    "ResearchScoreNet",
    "ResearchTwinQ",
    "ResearchEnergy",
    "make_networks",
    "random_batch",
    "ReferenceAEPO",
    "dpm_solver_pp_singlestep",
    "ReferenceGuidedSampler",
]

BETA_0, BETA_1, T_MIN = 0.1, 20.0, 1e-3


# ----------------------------------------------------------------------------- schedule
# The linear VP-SDE of QGPO, as plain functions of a tensor t (recomputed at every use).
def marginal_log_mean_coeff(t: Tensor) -> Tensor:
    return -0.25 * t**2 * (BETA_1 - BETA_0) - 0.5 * t * BETA_0


def marginal_std(t: Tensor) -> Tensor:
    return torch.sqrt(1.0 - torch.exp(2.0 * marginal_log_mean_coeff(t)))


def marginal_lambda(t: Tensor) -> Tensor:
    log_mean = marginal_log_mean_coeff(t)
    log_std = 0.5 * torch.log(1.0 - torch.exp(2.0 * log_mean))
    return log_mean - log_std


def inverse_lambda(lam: Tensor) -> Tensor:
    tmp = 2.0 * (BETA_1 - BETA_0) * torch.logaddexp(-2.0 * lam, torch.zeros_like(lam))
    delta = BETA_0**2 + tmp
    return tmp / (torch.sqrt(delta) + BETA_0) / (BETA_1 - BETA_0)


# ----------------------------------------------------------------------------- research-style nets
class _Fourier(nn.Module):
    def __init__(self, dim: int = 32, scale: float = 30.0) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(dim // 2) * scale, requires_grad=False)

    def forward(self, t: Tensor) -> Tensor:
        proj = t * self.W * 2 * math.pi
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class _ResBlock(nn.Module):
    """QGPO-style residual block: every projection is its own ``nn.Linear``."""

    def __init__(self, n_in: int, n_out: int, cond_dim: int = 128) -> None:
        super().__init__()
        self.dense1 = nn.Linear(n_in, n_out)
        self.dense2 = nn.Linear(n_out, n_out)
        self.cond = nn.Linear(cond_dim, n_out)
        self.skip = nn.Linear(n_in, n_out) if n_in != n_out else None
        self.act = nn.SiLU()

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = self.act(self.dense1(x)) + self.cond(self.act(c))
        h = self.act(self.dense2(h))
        return h + (self.skip(x) if self.skip is not None else x)


class ResearchScoreNet(nn.Module):
    """QGPO's U-shaped residual MLP, ``(a_t [B,d], t [B,1], s [B,ds]) -> eps [B,d]``.

    Same parameter count as :class:`torchrl_aepo.nets.UMLPNoisePredictor` (1.63M at d=3, s=11).
    """

    def __init__(self, action_dim: int, obs_dim: int, widths=(512, 256, 128)) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.embed_t = nn.Sequential(_Fourier(32), nn.Linear(32, 32))
        self.embed_s = nn.Sequential(nn.Linear(obs_dim, 32), nn.SiLU())
        self.cond = nn.Sequential(nn.Linear(64, 128), nn.SiLU(), nn.Linear(128, 128))
        self.d1 = _ResBlock(action_dim, w1)
        self.d2 = _ResBlock(w1, w2)
        self.d3 = _ResBlock(w2, w3)
        self.u3 = _ResBlock(w3, w3)
        self.u2 = _ResBlock(2 * w3, w2)
        self.u1 = _ResBlock(2 * w2, w1)
        self.out = nn.Linear(2 * w1, action_dim)

    def forward(self, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        c = self.cond(torch.cat([self.embed_t(t), self.embed_s(s)], dim=-1))
        d1 = self.d1(x, c)
        d2 = self.d2(d1, c)
        d3 = self.d3(d2, c)
        u3 = self.u3(d3, c)
        u2 = self.u2(torch.cat([d3, u3], dim=-1), c)
        u1 = self.u1(torch.cat([d2, u2], dim=-1), c)
        return self.out(torch.cat([d1, u1], dim=-1))


def _mlp(n_in: int, n_out: int, hidden, act=nn.ReLU) -> nn.Sequential:
    layers, last = [], n_in
    for width in hidden:
        layers += [nn.Linear(last, width), act()]
        last = width
    layers.append(nn.Linear(last, n_out))
    return nn.Sequential(*layers)


class ResearchTwinQ(nn.Module):
    """Two separate ``[s+d -> 256 -> 256 -> 256 -> 1]`` ReLU MLPs; returns ``[B, 2]``."""

    def __init__(self, obs_dim: int, action_dim: int, hidden=(256, 256, 256)) -> None:
        super().__init__()
        self.q1 = _mlp(obs_dim + action_dim, 1, hidden)
        self.q2 = _mlp(obs_dim + action_dim, 1, hidden)

    def forward(self, s: Tensor, a: Tensor) -> Tensor:
        sa = torch.cat([s, a], dim=-1)
        return torch.cat([self.q1(sa), self.q2(sa)], dim=-1)


class ResearchEnergy(nn.Module):
    """Time-dependent energy ``f(a_t, t, s)``: ``MLP([a_t, Linear(Fourier(t)), s]) -> [B, 1]``, SiLU."""

    def __init__(self, action_dim: int, obs_dim: int, hidden=(256, 256, 256, 256)) -> None:
        super().__init__()
        self.embed_t = nn.Sequential(_Fourier(32), nn.Linear(32, 32))
        self.mlp = _mlp(action_dim + 32 + obs_dim, 1, hidden, act=nn.SiLU)

    def forward(self, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        return self.mlp(torch.cat([x, self.embed_t(t), s], dim=-1))


def make_networks(
    action_dim: int,
    obs_dim: int,
    *,
    style: str = "library",
    energy_layers: int | None = None,
    widths=(512, 256, 128),
    hidden: int = 256,
) -> dict[str, nn.Module]:
    """Build ``{"score", "q", "v", "energy"}``.

    Args:
        style: ``"library"`` (:mod:`torchrl_aepo.nets`) or ``"research"`` (QGPO-shaped, here).
        energy_layers: hidden layers of the energy MLP; defaults to 3 (AEPO) for the library
            style and 4 (QGPO) for the research style.
        widths: U-MLP widths of the noise network.
        hidden: width of the Q, V and energy MLPs.
    """
    if style == "library":
        from torchrl_aepo.nets import EnergyNetwork, TwinQNetwork, UMLPNoisePredictor, ValueNetwork

        layers = 3 if energy_layers is None else energy_layers
        return {
            "score": UMLPNoisePredictor(action_dim, obs_dim, widths=widths),
            "q": TwinQNetwork(obs_dim, action_dim, num_cells=(hidden,) * 3),
            "v": ValueNetwork(obs_dim, num_cells=(hidden,) * 3),
            "energy": EnergyNetwork(action_dim, obs_dim, num_cells=(hidden,) * layers),
        }
    if style == "research":
        layers = 4 if energy_layers is None else energy_layers
        return {
            "score": ResearchScoreNet(action_dim, obs_dim, widths=widths),
            "q": ResearchTwinQ(obs_dim, action_dim, hidden=(hidden,) * 3),
            "v": _mlp(obs_dim, 1, (hidden,) * 3),
            "energy": ResearchEnergy(action_dim, obs_dim, hidden=(hidden,) * layers),
        }
    raise ValueError(f"style must be 'library' or 'research', got {style!r}.")


def random_batch(
    batch_size: int, action_dim: int, obs_dim: int, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """A synthetic offline batch ``{obs, act, rew, next_obs, term}`` (float32)."""
    g = generator
    return {
        "obs": torch.randn(batch_size, obs_dim, generator=g),
        "act": torch.rand(batch_size, action_dim, generator=g) * 2 - 1,
        "rew": torch.randn(batch_size, 1, generator=g),
        "next_obs": torch.randn(batch_size, obs_dim, generator=g),
        "term": (torch.rand(batch_size, 1, generator=g) < 0.01).float(),
    }


# ----------------------------------------------------------------------------- training
class ReferenceAEPO:
    """One AEPO update = diffusion step + V step + Q step + Polyak + energy step.

    Each network has its own Adam optimiser; the steps run one after the other, each with its
    own forward passes (IQL order: V, then Q with the new V, then the Polyak update). The
    energy target uses the target twin-Q minimum, its input gradient ``g`` from one
    ``autograd.grad`` call, the Tweedie mean from a separate no-grad pass of the noise
    network, and Posterior 1 with a ``1 - Gamma(t)`` table looked up by rounding ``t`` to
    the nearest grid point.

    Args:
        nets: ``{"score", "q", "v", "energy"}`` (see :func:`make_networks`).
        beta: inverse temperature of the energy. expectile, gamma, tau: IQL constants.
    """

    def __init__(
        self,
        nets: dict[str, nn.Module],
        *,
        beta: float = 3.0,
        expectile: float = 0.7,
        gamma: float = 0.99,
        tau: float = 0.005,
        lr_diffusion: float = 1e-4,
        lr_critic: float = 3e-4,
        lr_energy: float = 3e-4,
    ) -> None:
        self.score, self.q, self.v, self.energy = (
            nets["score"],
            nets["q"],
            nets["v"],
            nets["energy"],
        )
        self.q_target = copy.deepcopy(self.q)
        for p in self.q_target.parameters():
            p.requires_grad_(False)
        self.beta, self.expectile, self.gamma, self.tau = beta, expectile, gamma, tau
        self.score_opt = torch.optim.Adam(self.score.parameters(), lr=lr_diffusion)
        self.q_opt = torch.optim.Adam(self.q.parameters(), lr=lr_critic)
        self.v_opt = torch.optim.Adam(self.v.parameters(), lr=lr_critic)
        self.energy_opt = torch.optim.Adam(self.energy.parameters(), lr=lr_energy)
        self.one_minus_gamma = torch.ones(2)  # replaced by estimate_gamma

    # -- posterior statistics (Posterior 1, control-variate form) --------------------
    @torch.no_grad()
    def estimate_gamma(
        self, obs: Tensor, act: Tensor, *, num_times: int = 100, samples_per_time: int = 1024
    ) -> None:
        """Tabulate ``1 - Gamma(t) = E||eps - eps_theta(a_t, s, t)||^2 / d`` on a time grid."""
        d = act.shape[-1]
        values = []
        for t in torch.linspace(T_MIN, 1.0, num_times).tolist():
            idx = torch.randint(0, obs.shape[0], (samples_per_time,))
            s, a0 = obs[idx], act[idx]
            tt = torch.full((samples_per_time, 1), t)
            z = torch.randn_like(a0)
            a_t = torch.exp(marginal_log_mean_coeff(tt)) * a0 + marginal_std(tt) * z
            err = (self.score(a_t, tt, s) - z).pow(2).sum(-1).mean() / d
            values.append(err)
        self.one_minus_gamma = torch.stack(values)

    def posterior_variance(self, t: Tensor) -> Tensor:
        k = self.one_minus_gamma.shape[0]
        idx = torch.round((t - T_MIN) / (1.0 - T_MIN) * (k - 1)).long().clamp(0, k - 1)
        alpha = torch.exp(marginal_log_mean_coeff(t))
        ratio = marginal_std(t) ** 2 / alpha**2
        return (ratio * self.one_minus_gamma[idx.squeeze(-1)].unsqueeze(-1)).clamp(0.0, 1.0)

    # -- the four steps --------------------------------------------------------------
    def diffusion_step(self, obs: Tensor, act: Tensor) -> float:
        t = torch.rand(act.shape[0], 1) * (1.0 - T_MIN) + T_MIN
        z = torch.randn_like(act)
        alpha = torch.exp(marginal_log_mean_coeff(t))
        perturbed = act * alpha + z * marginal_std(t)
        loss = ((self.score(perturbed, t, obs) - z) ** 2).sum(dim=-1).mean()
        self.score_opt.zero_grad()
        loss.backward()
        self.score_opt.step()
        return loss.item()

    def value_step(self, obs: Tensor, act: Tensor) -> float:
        with torch.no_grad():
            target_q = self.q_target(obs, act).min(dim=-1, keepdim=True).values
        diff = target_q - self.v(obs)
        weight = torch.where(diff > 0, self.expectile, 1.0 - self.expectile)
        loss = (weight * diff**2).mean()
        self.v_opt.zero_grad()
        loss.backward()
        self.v_opt.step()
        return loss.item()

    def q_step(self, obs, act, rew, next_obs, term) -> float:
        with torch.no_grad():
            target = rew + self.gamma * (1.0 - term) * self.v(next_obs)
        q = self.q(obs, act)
        loss = ((q[:, :1] - target) ** 2).mean() + ((q[:, 1:] - target) ** 2).mean()
        self.q_opt.zero_grad()
        loss.backward()
        self.q_opt.step()
        return loss.item()

    def polyak(self) -> None:
        with torch.no_grad():
            for p, tp in zip(self.q.parameters(), self.q_target.parameters(), strict=True):
                tp.data.mul_(1.0 - self.tau)
                tp.data.add_(self.tau * p.data)

    def energy_step(self, obs: Tensor, act: Tensor) -> float:
        t = torch.rand(act.shape[0], 1) * (1.0 - T_MIN) + T_MIN
        z = torch.randn_like(act)
        alpha, sigma = torch.exp(marginal_log_mean_coeff(t)), marginal_std(t)
        a_t = act * alpha + z * sigma
        with torch.no_grad():
            eps = self.score(a_t, t, obs)
            mu = ((a_t - sigma * eps) / alpha).clamp(-1.0, 1.0)
            var = self.posterior_variance(t)
        a_req = act.clone().requires_grad_(True)
        q = self.q_target(obs, a_req).min(dim=-1, keepdim=True).values
        g = torch.autograd.grad(q.sum(), a_req)[0]
        with torch.no_grad():
            target = (
                self.beta * q
                + self.beta * (g * (mu - act)).sum(-1, keepdim=True)
                + 0.5 * self.beta**2 * var * (g**2).sum(-1, keepdim=True)
            )
        loss = ((self.energy(a_t, t, obs) - target) ** 2).mean()
        self.energy_opt.zero_grad()
        loss.backward()
        self.energy_opt.step()
        return loss.item()

    def critic_update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """V step, Q step, Polyak update (the IQL critic part only)."""
        out = {"value": self.value_step(batch["obs"], batch["act"])}
        out["q"] = self.q_step(
            batch["obs"], batch["act"], batch["rew"], batch["next_obs"], batch["term"]
        )
        self.polyak()
        return out

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """The full AEPO update on one batch."""
        out = {"diffusion": self.diffusion_step(batch["obs"], batch["act"])}
        out.update(self.critic_update(batch))
        out["energy"] = self.energy_step(batch["obs"], batch["act"])
        return out


# ----------------------------------------------------------------------------- sampling
def _singlestep_orders(steps: int, order: int) -> list[int]:
    if order == 1:
        return [1] * steps
    if order == 2:
        return [2] * (steps // 2) + [1] * (steps % 2)
    k, rem = divmod(steps, 3)
    return [3] * (k - 1) + [2, 1] if rem == 0 else [3] * k + [rem]


def dpm_solver_pp_singlestep(
    noise_fn, x: Tensor, *, steps: int = 15, order: int = 2, t_end: float = T_MIN
) -> Tensor:
    """DPM-Solver++ (data prediction), singlestep, time-uniform outer grid, orders 1-3.

    Written the way the original DPM-Solver code is used in research repositories: a Python
    loop over steps, and at every step the schedule quantities (``alpha``, ``sigma``,
    ``lambda``, the intermediate times and the ``expm1`` factors) are recomputed as tensors.
    ``noise_fn(x, t)`` takes ``x [B, d]`` and ``t [B, 1]``.
    """
    orders = _singlestep_orders(steps, order)
    fine = torch.linspace(1.0, t_end, sum(orders) + 1)
    cumulative = torch.cumsum(torch.tensor([0, *orders]), 0)
    outer = fine[cumulative]
    batch = x.shape[0]

    def data_pred(x_, t_):
        tt = t_.expand(batch, 1)
        eps = noise_fn(x_, tt)
        alpha = torch.exp(marginal_log_mean_coeff(t_))
        return (x_ - marginal_std(t_) * eps) / alpha

    for i, o in enumerate(orders):
        s, t = outer[i].reshape(1, 1), outer[i + 1].reshape(1, 1)
        lam_s, lam_t = marginal_lambda(s), marginal_lambda(t)
        h = lam_t - lam_s
        sigma_s, sigma_t = marginal_std(s), marginal_std(t)
        alpha_t = torch.exp(marginal_log_mean_coeff(t))
        phi_1 = torch.expm1(-h)
        m0 = data_pred(x, s)
        if o == 1:
            x = (sigma_t / sigma_s) * x - alpha_t * phi_1 * m0
        elif o == 2:
            r1 = 0.5
            s1 = inverse_lambda(lam_s + r1 * h)
            sigma_s1, alpha_s1 = marginal_std(s1), torch.exp(marginal_log_mean_coeff(s1))
            x_s1 = (sigma_s1 / sigma_s) * x - alpha_s1 * torch.expm1(-r1 * h) * m0
            m1 = data_pred(x_s1, s1)
            x = (
                (sigma_t / sigma_s) * x
                - alpha_t * phi_1 * m0
                - (0.5 / r1) * alpha_t * phi_1 * (m1 - m0)
            )
        else:
            r1, r2 = 1.0 / 3.0, 2.0 / 3.0
            s1, s2 = inverse_lambda(lam_s + r1 * h), inverse_lambda(lam_s + r2 * h)
            sigma_s1, alpha_s1 = marginal_std(s1), torch.exp(marginal_log_mean_coeff(s1))
            sigma_s2, alpha_s2 = marginal_std(s2), torch.exp(marginal_log_mean_coeff(s2))
            phi_11, phi_12 = torch.expm1(-r1 * h), torch.expm1(-r2 * h)
            phi_22 = phi_12 / (r2 * h) + 1.0
            phi_2 = phi_1 / h + 1.0
            x_s1 = (sigma_s1 / sigma_s) * x - alpha_s1 * phi_11 * m0
            m1 = data_pred(x_s1, s1)
            x_s2 = (
                (sigma_s2 / sigma_s) * x
                - alpha_s2 * phi_12 * m0
                + (r2 / r1) * alpha_s2 * phi_22 * (m1 - m0)
            )
            m2 = data_pred(x_s2, s2)
            x = (
                (sigma_t / sigma_s) * x
                - alpha_t * phi_1 * m0
                + (1.0 / r2) * alpha_t * phi_2 * (m2 - m0)
            )
    return x


class ReferenceGuidedSampler:
    """Energy-guided DPM-Solver++ sampling, QGPO-style (one action per state).

    At every model evaluation: the noise network runs under ``no_grad``; the energy's input
    gradient comes from a separate forward pass with ``enable_grad`` and one
    ``autograd.grad``; the guided noise is ``eps - w sigma_t grad f``, rescaled to the norm
    of ``eps`` (Eq. 45) when ``rescale``.
    """

    def __init__(
        self,
        score: nn.Module,
        energy: nn.Module | None,
        *,
        guidance_scale: float = 1.0,
        rescale: bool = True,
        steps: int = 15,
        order: int = 2,
    ) -> None:
        self.score, self.energy = score, energy
        self.w, self.rescale, self.steps, self.order = guidance_scale, rescale, steps, order

    def guided_noise(self, x: Tensor, t: Tensor, obs: Tensor) -> Tensor:
        with torch.no_grad():
            eps = self.score(x, t, obs)
        if self.energy is None or self.w == 0:
            return eps
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            f = self.energy(x_in, t, obs)
            grad = torch.autograd.grad(f.sum(), x_in)[0]
        guided = eps - self.w * marginal_std(t) * grad
        if self.rescale:
            norm_eps = torch.linalg.norm(eps, dim=-1, keepdim=True)
            norm_guided = torch.linalg.norm(guided, dim=-1, keepdim=True)
            guided = guided * norm_eps / torch.clamp(norm_guided, min=1e-8)
        return guided

    def __call__(self, obs: Tensor, x_T: Tensor | None = None) -> Tensor:
        action_dim = getattr(self.score, "action_dim", None)
        if x_T is None:
            if action_dim is None:
                action_dim = self.score.out.out_features
            x_T = torch.randn(obs.shape[0], action_dim)
        x = dpm_solver_pp_singlestep(
            lambda x_, t_: self.guided_noise(x_, t_, obs), x_T, steps=self.steps, order=self.order
        )
        return x.clamp(-1.0, 1.0)
