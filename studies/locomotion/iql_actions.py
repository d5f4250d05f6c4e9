"""Where do IQL's actions lie against AEPO's, and how does each critic rate both?

    python -m studies.locomotion.iql_actions AEPO_RUN IQL_RUN [--guidance 0 0.5] \\
        [--weighted AEPO_WEIGHTED_RUN] [--out FILE.json]

``AEPO_RUN`` is a finished ``recipes/aepo_offline.py`` run, ``IQL_RUN`` a finished
``recipes/iql_offline.py`` run on the same dataset (its ``checkpoints/iql.pt``). Two sets of
states, no evaluation episode of the AEPO policy:

* ``dataset``: 1024 states of the dataset (with the dataset's own action as a reference);
* ``iql trajectory``: every state of three episodes of IQL's deterministic policy (env seeds
  12345..), the states IQL's policy reaches and AEPO's must handle to match it.

On each, the actions of IQL's policy (its mode), of the AEPO run's actor from the zero latent
at each ``--guidance`` degree and, with ``--weighted``, of an advantage-weighted run's actor
at ``w = 0``: the advantage ``min_k Q_k - V`` under each run's critic, the distance to IQL's
action, the share of saturated entries (``|a| > 0.99``) and, along IQL's trajectory, how much
each policy's action changes from one state to the next. With ``--rollouts N``, on the first
``N`` dataset states, each action's Monte-Carlo value when IQL's policy takes over after it
(:func:`continuation_returns`: what the critics estimate, measured), and each policy's own
return from those states (:func:`closed_loop_returns`). So it separates a critic that
does not prefer IQL's actions from a sampler that does not reach them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModuleBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

from studies.locomotion.runs import load_trained_run
from torchrl_aepo import AEPOActor
from torchrl_aepo.baselines import build_iql
from torchrl_aepo.data import get_task


class IQLRun:
    """A finished IQL run's actor (its mode) and critic."""

    def __init__(self, run_dir: Path, obs_dim: int, action_dim: int) -> None:
        config = json.loads((run_dir / "results.json").read_text())["config"]["iql"]
        self.loss, self.actor = build_iql(
            obs_dim, action_dim, actor=str(config["actor"]), num_cells=tuple(config["num_cells"]),
            expectile=float(config["expectile"]), temperature=float(config["temperature"]),
            discount=float(config["discount"]),
        )  # fmt: skip
        state = torch.load(run_dir / "checkpoints" / "iql.pt", map_location="cpu")
        self.loss.load_state_dict(state["state"]["loss"])
        self.temperature = float(config["temperature"])

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            return self.actor(TensorDict(observation=obs, batch_size=obs.shape[:1]))["action"]

    @torch.no_grad()
    def qvalue(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The target twin Q heads, ``[n, 2]`` (the ``(obs, action) -> [n, K]`` form of
        :func:`~torchrl_aepo.aepo.weighting.advantage_weights`)."""
        td = TensorDict(observation=obs, action=action, batch_size=obs.shape[:1])
        heads = []
        for params in self.loss.target_qvalue_network_params.unbind(0):
            with params.to_module(self.loss.qvalue_network):
                heads.append(self.loss.qvalue_network(td.clone())["state_action_value"])
        return torch.cat(heads, -1)

    @torch.no_grad()
    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """``V(s)``, ``[n, 1]``."""
        td = TensorDict(observation=obs, batch_size=obs.shape[:1])
        with self.loss.value_network_params.to_module(self.loss.value_network):
            return self.loss.value_network(td)["state_value"]

    def advantage(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``min_k Q_k(s, a) - V(s)`` of the IQL critic (its target Q heads)."""
        return (self.qvalue(obs, action).amin(-1) - self.value(obs).squeeze(-1)).flatten()


def actions_of(actor: TensorDictModuleBase, obs: torch.Tensor) -> torch.Tensor:
    """The ``"action"`` a TensorDict policy writes for the ``[n, s]`` observations ``obs``."""
    return actor(TensorDict(observation=obs, batch_size=obs.shape[:1]))["action"]


@torch.no_grad()
def iql_states(iql: IQLRun, env_id: str, episodes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Every state of ``episodes`` episodes of IQL's deterministic policy (env seeds 12345..),
    and the episode index of each."""
    import gymnasium as gym

    env = gym.make(env_id)
    states, episode = [], []
    for seed in range(episodes):
        obs, _ = env.reset(seed=12345 + seed)
        done = False
        while not done:
            states.append(obs)
            episode.append(seed)
            action = iql.act(torch.as_tensor(obs, dtype=torch.float32)[None])[0]
            obs, _, terminated, truncated, _ = env.step(action.numpy())
            done = terminated or truncated
    env.close()
    return torch.as_tensor(np.array(states), dtype=torch.float32), torch.tensor(episode)


@torch.no_grad()
def compare(
    obs: torch.Tensor,
    actions: dict[str, torch.Tensor],
    critics: dict[str, Any],
    episode: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Each action set's advantage under each critic, distance to IQL's, saturation and, on
    consecutive states of one episode (``episode`` given), the mean change of the action
    from one state to the next (how smooth the policy is along the trajectory)."""
    reference = actions["iql"]
    out = {}
    for name, a in actions.items():
        row = {f"advantage_{c}": float(adv(obs, a).mean()) for c, adv in critics.items()}
        row["distance_to_iql"] = float((a - reference).norm(dim=-1).mean())
        row["saturated"] = float((a.abs() > 0.99).float().mean())
        if episode is not None:
            same = episode[1:] == episode[:-1]
            row["step_change"] = float((a[1:] - a[:-1]).norm(dim=-1)[same].mean())
        out[name] = row
    return out


@torch.no_grad()
def rollout_returns(
    env_id: str,
    obs: torch.Tensor,
    first_action: torch.Tensor | None,
    policy: Callable[[torch.Tensor], torch.Tensor],
    horizon: int,
    discount: float = 0.99,
) -> tuple[np.ndarray, float]:
    """From each state ``obs[i]`` (one simulator per state, set to it), take ``first_action[i]``
    (``None``: the policy's action), then follow ``policy`` (``[n, s] -> [n, d]``, called on the
    batch of states still running) for ``horizon`` steps in all: the discounted sums of the
    environment's rewards (nothing after a fall) and the share of starts that fell. The state
    is rebuilt from the observation (``qpos = [0, obs[:nq - 1]]``, ``qvel = obs[nq - 1:]``:
    MuJoCo locomotion observations leave out the x position, on which the dynamics do not
    depend); a layout where that does not give the observation back is refused."""
    import gymnasium as gym

    envs = [gym.make(env_id) for _ in range(len(obs))]
    states = obs.double().numpy()
    for env, s in zip(envs, states, strict=True):
        env.reset(seed=0)
        sim = env.unwrapped
        nq = sim.model.nq
        sim.set_state(np.concatenate([[0.0], s[: nq - 1]]), s[nq - 1 :])
        if not np.allclose(sim._get_obs(), s, atol=1e-5):
            raise ValueError(f"{env_id}: the observation does not rebuild the state")
    returns = np.zeros(len(envs))
    running = np.ones(len(envs), dtype=bool)
    current = states.copy()
    for step in range(horizon):
        alive = np.flatnonzero(running)
        if len(alive) == 0:
            break
        if step == 0 and first_action is not None:
            actions = first_action.numpy()
        else:
            actions = np.zeros((len(envs), envs[0].action_space.shape[0]))
            actions[alive] = policy(torch.as_tensor(current[alive], dtype=torch.float32)).numpy()
        for i in alive:
            next_obs, reward, terminated, _, _ = envs[i].step(actions[i])
            returns[i] += discount**step * float(reward)
            current[i] = next_obs
            running[i] = not terminated
    for env in envs:
        env.close()
    return returns, float((~running).mean())


def _paired_rows(results: dict[str, tuple[np.ndarray, float]]) -> dict[str, dict[str, float]]:
    """Mean return per row, and its paired difference to the ``"iql"`` row (same states)."""
    reference = results["iql"][0]
    rows = {}
    for name, (returns, falls) in results.items():
        diff = returns - reference
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        rows[name] = {
            "return": float(returns.mean()),
            "minus_iql": float(diff.mean()),
            "minus_iql_se": se,
            "falls": falls,
        }
    return rows


def continuation_returns(
    iql: Any,
    env_id: str,
    obs: torch.Tensor,
    actions: dict[str, torch.Tensor],
    horizon: int = 100,
    discount: float = 0.99,
) -> dict[str, dict[str, float]]:
    """Monte-Carlo ``Q^IQL(s, a)``: from each state, each set's action, then IQL's
    deterministic policy (:func:`rollout_returns`). Per action set: the mean discounted return,
    its mean difference to IQL's own action from the same states with the standard error of
    that paired difference, and the share of starts that fall within the horizon."""
    return _paired_rows(
        {
            name: rollout_returns(env_id, obs, a, iql.act, horizon, discount)
            for name, a in actions.items()
        }
    )


def closed_loop_returns(
    env_id: str,
    obs: torch.Tensor,
    policies: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    horizon: int = 100,
    discount: float = 0.99,
) -> dict[str, dict[str, float]]:
    """Each policy followed by itself from the same states (``"iql"`` among them, the
    reference of the paired differences): Monte-Carlo ``V^pi(s)`` over ``horizon`` steps."""
    return _paired_rows(
        {
            name: rollout_returns(env_id, obs, None, policy, horizon, discount)
            for name, policy in policies.items()
        }
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("aepo_run", type=Path)
    parser.add_argument("iql_run", type=Path)
    parser.add_argument("--guidance", type=float, nargs="+", default=[0.0])
    parser.add_argument("--weighted", type=Path)
    parser.add_argument("--rollouts", type=int, default=0, help="dataset states for the MC check")
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    run = load_trained_run(args.aepo_run)
    meta = run.metadata
    iql = IQLRun(args.iql_run, meta.obs_dim, meta.action_dim)
    aepo_critic, aepo_value = run.losses.critic.target_qvalue_network(), run.nets.value

    def aepo_advantage(obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return aepo_critic(obs, action).amin(-1) - aepo_value(obs).squeeze(-1)

    critics = {"aepo": aepo_advantage, "iql": iql.advantage}
    actors = {
        f"aepo w={w:g}": AEPOActor.from_checkpoint(
            args.aepo_run / "actor.pt", guidance_scale=w, latent_scale=0.0
        )
        for w in args.guidance
    }
    if args.weighted is not None:
        actors["aepo weighted w=0"] = AEPOActor.from_checkpoint(
            args.weighted / "actor.pt", guidance_scale=0.0, latent_scale=0.0
        )
    data = run.replay_buffer[:]
    index = torch.randint(0, len(data), (1024,), generator=torch.Generator().manual_seed(0))
    env_id = get_task(run.config["task"]["name"]).eval_env_id
    trajectory, episode = iql_states(iql, env_id)
    state_sets = {
        "dataset": (data["observation"][index], data["action"][index], None),
        "iql trajectory": (trajectory, None, episode),
    }
    result: dict[str, Any] = {"aepo_run": str(args.aepo_run), "iql_run": str(args.iql_run)}
    for name, (obs, dataset_action, episodes) in state_sets.items():
        actions = {"iql": iql.act(obs)}
        if dataset_action is not None:
            actions["dataset"] = dataset_action
        actions |= {label: actions_of(actor, obs) for label, actor in actors.items()}
        result[name] = {"states": len(obs), **compare(obs, actions, critics, episodes)}
        if name == "dataset" and args.rollouts > 0:
            n = args.rollouts
            first = {k: a[:n] for k, a in actions.items()}
            result["continuation"] = {
                "states": n,
                "horizon": args.horizon,
                **continuation_returns(iql, env_id, obs[:n], first, args.horizon),
            }
            policies = {"iql": iql.act} | {
                label: partial(actions_of, actor) for label, actor in actors.items()
            }
            result["closed_loop"] = {
                "states": n,
                "horizon": args.horizon,
                **closed_loop_returns(env_id, obs[:n], policies, args.horizon),
            }
    print(json.dumps(result, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
