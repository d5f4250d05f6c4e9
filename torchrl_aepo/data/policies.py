"""Behaviour policies for the local MuJoCo locomotion datasets, trained with TorchRL's SAC.

One job: the actor network, its checkpoints, and the online training run that produces them.
The dataset ladder built from these checkpoints lives in :mod:`.locomotion`.

* :class:`PolicyNet` is the SAC actor body, ``obs [*B, obs_dim] -> (loc, raw_scale) [*B, 2 *
  act_dim]`` (a 256x256 ReLU MLP, ~300 KB as float32). The behaviour policy's *deterministic*
  action is ``tanh(loc)`` rescaled to the action box (:meth:`PolicyNet.act`); datasets add their
  own exploration noise to it.
* :func:`train_policy` trains it online with ``torchrl.objectives.SACLoss`` + ``SoftUpdate``,
  a ``torchrl.collectors.Collector`` on a single ``GymEnv`` (``DoubleToFloat``: MuJoCo
  observations are float64) and a ``TensorDictReplayBuffer``; batch 256, one update per env
  step, uniform random warm-up. Every ``save_every`` env steps it evaluates the deterministic
  policy and saves a checkpoint ``step_<N>.pt`` plus a row of ``log.csv``.
* :func:`load_policy` reads a checkpoint back.

Command line::

    OMP_NUM_THREADS=1 python -m torchrl_aepo.data train-policies hopper --steps 300000

Example:
    >>> import torch
    >>> net = PolicyNet(obs_dim=11, act_dim=3)
    >>> net.act(torch.zeros(4, 11)).shape
    torch.Size([4, 3])
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "LOCOMOTION_ENV_IDS",
    "PolicyNet",
    "SACConfig",
    "evaluate_policy",
    "load_policy",
    "save_policy",
    "train_policy",
]

#: Family name -> gymnasium id of the three locomotion envs.
LOCOMOTION_ENV_IDS: dict[str, str] = {
    "halfcheetah": "HalfCheetah-v5",
    "hopper": "Hopper-v5",
    "walker2d": "Walker2d-v5",
}


class PolicyNet(nn.Module):
    """SAC actor body: ``obs [*B, obs_dim] -> [*B, 2 * act_dim]`` (``loc`` then raw scale).

    Args:
        obs_dim: observation size.
        act_dim: action size.
        hidden: hidden layer widths.
        low, high: action box (scalars or ``[act_dim]``); MuJoCo locomotion uses ``[-1, 1]``.

    Example:
        >>> net = PolicyNet(17, 6)
        >>> sum(p.numel() for p in net.parameters())
        73484
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: tuple[int, ...] = (256, 256),
        low: float | np.ndarray = -1.0,
        high: float | np.ndarray = 1.0,
    ) -> None:
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden = obs_dim, act_dim, tuple(hidden)
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 2 * act_dim))
        self.body = nn.Sequential(*layers)
        low_t = torch.as_tensor(low, dtype=torch.float32).expand(act_dim).clone()
        high_t = torch.as_tensor(high, dtype=torch.float32).expand(act_dim).clone()
        self.register_buffer("low", low_t)
        self.register_buffer("high", high_t)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """``[*B, obs_dim] -> [*B, 2 * act_dim]``."""
        return self.body(obs)

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic action ``[*B, act_dim]``: ``tanh(loc)`` mapped onto ``[low, high]``."""
        loc = self.body(obs)[..., : self.act_dim]
        return self.low + (self.high - self.low) * (torch.tanh(loc) + 1) / 2


def save_policy(net: PolicyNet, path: str | os.PathLike, **info) -> None:
    """Save ``net``'s state dict, its shape and ``info`` (env id, steps, returns) to ``path``."""
    payload = {
        "state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "obs_dim": net.obs_dim,
        "act_dim": net.act_dim,
        "hidden": list(net.hidden),
        "info": info,
    }
    torch.save(payload, path)


def load_policy(path: str | os.PathLike) -> tuple[PolicyNet, dict]:
    """Load a checkpoint written by :func:`save_policy`; returns ``(net, info)``.

    Raises:
        FileNotFoundError: the checkpoint does not exist (says how to train one).
    """
    path = Path(path)
    if not path.is_file():
        family = path.parent.name
        raise FileNotFoundError(
            f"policy checkpoint {path} not found. Train one with "
            f"`OMP_NUM_THREADS=1 python -m torchrl_aepo.data train-policies {family}` and then "
            f"`python -m torchrl_aepo.data select-policies {family}`"
        )
    payload = torch.load(path, map_location="cpu", weights_only=True)
    net = PolicyNet(payload["obs_dim"], payload["act_dim"], tuple(payload["hidden"]))
    net.load_state_dict(payload["state_dict"])
    net.eval()
    return net, payload["info"]


def evaluate_policy(
    net: PolicyNet, env_id: str, episodes: int = 5, seed: int = 10_000
) -> np.ndarray:
    """Undiscounted returns ``[episodes]`` of ``net``'s deterministic action on ``env_id``.

    The episodes run side by side (one batched forward per step), reset with seeds
    ``seed, seed + 1, ...``.
    """
    import gymnasium as gym

    envs = [gym.make(env_id, disable_env_checker=True) for _ in range(episodes)]
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)])
    returns = np.zeros(episodes)
    alive = np.ones(episodes, dtype=bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        actions = net.act(torch.as_tensor(obs[idx], dtype=torch.float32)).numpy()
        for j, i in enumerate(idx):
            o, r, term, trunc, _ = envs[i].step(actions[j])
            obs[i] = o
            returns[i] += r
            alive[i] = not (term or trunc)
    for e in envs:
        e.close()
    return returns


@dataclass
class SACConfig:
    """Hyperparameters of :func:`train_policy` (standard SAC on MuJoCo)."""

    steps: int = 300_000
    warmup_steps: int = 5_000
    batch_size: int = 256
    utd: float = 1.0
    frames_per_batch: int = 1_000
    lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    alpha_init: float = 1.0
    hidden: tuple[int, ...] = (256, 256)
    save_every: int = 10_000
    eval_episodes: int = 5
    seed: int = 0


def _make_env(env_id: str, seed: int):
    from torchrl.envs import Compose, DoubleToFloat, GymEnv, RewardSum, TransformedEnv

    env = TransformedEnv(GymEnv(env_id, device="cpu"), Compose(DoubleToFloat(), RewardSum()))
    env.set_seed(seed)
    return env


def train_policy(
    family: str, out_dir: str | os.PathLike, config: SACConfig | None = None, verbose: bool = True
) -> Path:
    """Train a SAC policy on ``LOCOMOTION_ENV_IDS[family]``; return ``out_dir``.

    Writes ``out_dir/step_<N>.pt`` (:func:`save_policy`, with ``env_steps``, ``eval_return``,
    ``eval_return_std``, ``wall_s``) every ``config.save_every`` env steps, ``out_dir/log.csv``
    (one row per checkpoint) and ``out_dir/config.json``. Uses one torch thread.

    Example (a smoke run with a small net, a few seconds):
        >>> import tempfile
        >>> cfg = SACConfig(steps=400, warmup_steps=200, frames_per_batch=200, save_every=200,
        ...                 batch_size=32, hidden=(32, 32), eval_episodes=1)
        >>> out = train_policy("hopper", tempfile.mkdtemp(), cfg, verbose=False)
        >>> sorted(p.name for p in out.glob("step_*.pt"))
        ['step_200.pt', 'step_400.pt']
    """
    from tensordict.nn import NormalParamExtractor, TensorDictModule
    from torchrl.collectors import Collector
    from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
    from torchrl.envs.utils import ExplorationType
    from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
    from torchrl.objectives import SACLoss, SoftUpdate

    if family not in LOCOMOTION_ENV_IDS:
        raise KeyError(f"unknown locomotion family {family!r}; one of {list(LOCOMOTION_ENV_IDS)}")
    cfg = config or SACConfig()
    if cfg.steps % cfg.frames_per_batch or cfg.save_every % cfg.frames_per_batch:
        raise ValueError(
            f"steps ({cfg.steps}) and save_every ({cfg.save_every}) must be multiples of "
            f"frames_per_batch ({cfg.frames_per_batch})"
        )
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    env_id = LOCOMOTION_ENV_IDS[family]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"env_id": env_id, **asdict(cfg)}, indent=1))

    env = _make_env(env_id, cfg.seed)
    spec = env.action_spec
    obs_dim = env.observation_spec["observation"].shape[-1]
    act_dim = spec.shape[-1]
    low, high = spec.space.low, spec.space.high
    net = PolicyNet(obs_dim, act_dim, cfg.hidden, low, high)
    actor = ProbabilisticActor(
        TensorDictModule(
            nn.Sequential(net, NormalParamExtractor()),
            in_keys=["observation"],
            out_keys=["loc", "scale"],
        ),
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": low, "high": high},
        default_interaction_type=ExplorationType.RANDOM,
    )
    qvalue = ValueOperator(
        MLP(in_features=obs_dim + act_dim, out_features=1, num_cells=list(cfg.hidden)),
        in_keys=["observation", "action"],
    )
    loss = SACLoss(
        actor,
        qvalue,
        num_qvalue_nets=2,
        loss_function="l2",
        alpha_init=cfg.alpha_init,
        action_spec=spec,
    )
    loss.make_value_estimator(gamma=cfg.gamma)
    target = SoftUpdate(loss, tau=cfg.tau)
    opt_actor = torch.optim.Adam(loss.actor_network_params.flatten_keys().values(), lr=cfg.lr)
    opt_q = torch.optim.Adam(loss.qvalue_network_params.flatten_keys().values(), lr=cfg.lr)
    opt_alpha = torch.optim.Adam([loss.log_alpha], lr=cfg.lr)
    buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(cfg.steps), batch_size=cfg.batch_size)
    collector = Collector(
        env,
        actor,
        frames_per_batch=cfg.frames_per_batch,
        total_frames=cfg.steps,
        init_random_frames=cfg.warmup_steps,
        exploration_type=ExplorationType.RANDOM,
        auto_register_policy_transforms=False,
    )

    fields = ["env_steps", "updates", "wall_s", "eval_return", "eval_return_std"]
    fields += ["train_return", "alpha", "loss_qvalue", "loss_actor"]
    with open(out / "log.csv", "w", newline="") as f:
        csv.writer(f).writerow(fields)
    start, frames, updates, train_returns = time.perf_counter(), 0, 0, []
    stats: dict[str, float] = {}
    for batch in collector:
        frames += batch.numel()
        buffer.extend(batch.reshape(-1))
        done = batch["next", "done"].squeeze(-1)
        train_returns += batch["next", "episode_reward"][done].flatten().tolist()
        if frames >= cfg.warmup_steps:
            for _ in range(int(cfg.utd * batch.numel())):
                losses = loss(buffer.sample())
                total = losses["loss_actor"] + losses["loss_qvalue"] + losses["loss_alpha"]
                opt_actor.zero_grad()
                opt_q.zero_grad()
                opt_alpha.zero_grad()
                total.backward()
                opt_actor.step()
                opt_q.step()
                opt_alpha.step()
                target.step()
                updates += 1
            stats = {k: float(losses[k].detach()) for k in ("alpha", "loss_qvalue", "loss_actor")}
        if frames % cfg.save_every == 0:
            wall = time.perf_counter() - start
            rets = evaluate_policy(net, env_id, cfg.eval_episodes, seed=10_000)
            recent = float(np.mean(train_returns[-10:])) if train_returns else float("nan")
            row = {
                "env_steps": frames,
                "updates": updates,
                "wall_s": round(wall, 1),
                "eval_return": round(float(rets.mean()), 2),
                "eval_return_std": round(float(rets.std()), 2),
                "train_return": round(recent, 2),
                **{k: round(stats.get(k, float("nan")), 5) for k in fields[6:]},
            }
            save_policy(
                net,
                out / f"step_{frames}.pt",
                env_id=env_id,
                env_steps=frames,
                eval_return=row["eval_return"],
                eval_return_std=row["eval_return_std"],
                eval_episodes=cfg.eval_episodes,
                wall_s=row["wall_s"],
                seed=cfg.seed,
            )
            with open(out / "log.csv", "a", newline="") as f:
                csv.writer(f).writerow([row[k] for k in fields])
            if verbose:
                rate = updates / max(wall, 1e-9)
                print(
                    f"[{family}] {frames} steps, {wall:.0f} s ({rate:.0f} upd/s): eval "
                    f"{row['eval_return']:.1f} +- {row['eval_return_std']:.1f}, train {recent:.1f}",
                    flush=True,
                )
    collector.shutdown()
    env.close()
    return out
