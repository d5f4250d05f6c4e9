"""Does AEPO's policy hold up in closed loop when a plain MLP carries it?

    python -m studies.locomotion.distill AEPO_RUN [--guidance 0 0.5] [--iql IQL_RUN] \\
        [--awr aepo iql] [--bc] [--states 50000] [--steps 20000] \\
        [--rollouts 256 --horizon 200] [--episodes] [--out FILE.json]

Section 8 of ``docs/locomotion.md`` found AEPO's single actions as good as IQL's (rated so by
both critics and by Monte-Carlo continuations) while its closed-loop returns fall far below:
the errors compound along the policy's own trajectory. IQL's actor is a small MLP fitted by
regression; AEPO's is a guided diffusion sampler. This study separates the two: for each
``--guidance`` degree it fits an MLP (``obs -> tanh``, 2 x 256, MSE, Adam) to the run's
zero-latent sampler on ``--states`` dataset states (drawn at random, or every transition when
``--states`` is at least the dataset's size; the distilled policy sees no environment
step) and compares, from the same ``--rollouts`` dataset states as
``studies.locomotion.iql_actions`` (the simulator set to each), the closed-loop returns of
the sampler, of its distillate and, with ``--iql``, of IQL's policy (the paired reference).
``--episodes`` also scores every policy on the recipe's evaluation episodes (env seeds
12345..): choosing among those rows is choosing on evaluation episodes.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.modules import MLP

from studies.locomotion.iql_actions import IQLRun, actions_of, closed_loop_returns
from studies.locomotion.runs import load_trained_run
from torchrl_aepo import AEPOActor
from torchrl_aepo.aepo.weighting import advantage_weights
from torchrl_aepo.data import get_task
from torchrl_aepo.evaluation import evaluate_policy


def distill(
    obs: torch.Tensor,
    actions: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 3e-4,
    num_cells: tuple[int, ...] = (256, 256),
    seed: int = 0,
    weights: torch.Tensor | None = None,
) -> TensorDictModule:
    """An MLP policy ``tanh(f(obs))`` fitted to ``actions`` (``[n, d]`` in ``[-1, 1]``) by MSE,
    each pair weighted by ``weights`` (``[n]``, e.g. advantage weights: the fit is then the
    weighted conditional mean, IQL's actor target with a fixed variance; ``None``: equal).

    Returns a :class:`~tensordict.nn.TensorDictModule` reading ``"observation"`` and writing
    ``"action"`` (usable in TorchRL rollouts).
    """
    if obs.shape[0] != actions.shape[0]:
        raise ValueError(f"{obs.shape[0]} states but {actions.shape[0]} actions")
    if weights is None:
        weights = torch.ones(len(obs))
    if weights.shape != (len(obs),) or not bool((weights >= 0).all()):
        raise ValueError(f"weights must be [{len(obs)}] and >= 0, got {tuple(weights.shape)}")
    weights = weights / weights.mean()  # the step size of the unweighted fit
    torch.manual_seed(seed)
    net = nn.Sequential(
        MLP(in_features=obs.shape[-1], out_features=actions.shape[-1], num_cells=list(num_cells)),
        nn.Tanh(),
    )
    optim = torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(0, len(obs), (batch_size,), generator=generator)
        error = (net(obs[index]) - actions[index]).pow(2).sum(-1)
        loss = (weights[index] * error).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
    return TensorDictModule(net.eval(), in_keys=["observation"], out_keys=["action"])


@torch.no_grad()
def sampler_targets(actor: AEPOActor, obs: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """The actor's actions on ``obs``, ``chunk`` states at a time."""
    return torch.cat([actions_of(actor, part) for part in obs.split(chunk)])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("aepo_run", type=Path)
    parser.add_argument("--guidance", type=float, nargs="*", default=[0.0])
    parser.add_argument("--iql", type=Path, help="an IQL run on the same data: the reference")
    parser.add_argument(
        "--states", type=int, default=50_000, help="drawn at random; all when >= the dataset's"
    )
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--rollouts", type=int, default=256)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument(
        "--awr",
        nargs="*",
        default=[],
        choices=["aepo", "iql"],
        help="also fit the dataset's actions weighted by this critic's exp(beta A) (IQL's actor)",
    )
    parser.add_argument(
        "--bc", action="store_true", help="also fit the dataset's actions unweighted (MLP BC)"
    )
    parser.add_argument("--episodes", action="store_true", help="also the recipe's eval episodes")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.iql is None and (args.rollouts > 0 or "iql" in args.awr):
        parser.error(
            "--rollouts compares to IQL's policy and --awr iql weights by IQL's critic: "
            "give --iql IQL_RUN"
        )
    run = load_trained_run(args.aepo_run)
    data = run.replay_buffer[:]
    observations, n = data["observation"], len(data)
    # the MC start states of studies.locomotion.iql_actions; the training states drawn apart
    starts = torch.randint(0, n, (1024,), generator=torch.Generator().manual_seed(0))
    if args.states >= n:  # every transition once
        train = torch.arange(n)
    else:
        train = torch.randint(0, n, (args.states,), generator=torch.Generator().manual_seed(1))
    env_id = get_task(run.config["task"]["name"]).eval_env_id

    policies: dict[str, Any] = {}
    result: dict[str, Any] = {"aepo_run": str(args.aepo_run), "iql_run": str(args.iql)}
    if args.iql is not None:
        iql = IQLRun(args.iql, run.metadata.obs_dim, run.metadata.action_dim)
        policies["iql"] = iql.act
    fits = {}
    for w in args.guidance:
        actor = AEPOActor.from_checkpoint(
            args.aepo_run / "actor.pt", guidance_scale=w, latent_scale=0.0
        )
        start = time.perf_counter()
        targets = sampler_targets(actor, observations[train])
        sampled = time.perf_counter() - start
        student = distill(observations[train], targets, steps=args.steps)
        with torch.no_grad():
            check = sampler_targets(actor, observations[starts])
            fit = actions_of(student, observations[starts]) - check
        fits[f"w={w:g}"] = {
            "sampling_s": sampled,
            "fit_s": time.perf_counter() - start - sampled,
            "rmse_on_start_states": float(fit.pow(2).mean().sqrt()),
        }
        policies[f"aepo w={w:g}"] = partial(actions_of, actor)
        policies[f"distilled w={w:g}"] = partial(actions_of, student)
        print(f"w={w:g}: {json.dumps(fits[f'w={w:g}'])}", flush=True)
    for critic_name in args.awr:
        # IQL's actor target from one run's critic: exp(beta A) (clipped at 100) weights on
        # the dataset's own actions; is the critic or the sampler behind the closed-loop gap?
        start = time.perf_counter()
        if critic_name == "aepo":
            beta, qvalue, value = (
                run.aepo.beta,
                run.losses.critic.target_qvalue_network(),
                run.nets.value,
            )
        else:
            beta, qvalue, value = iql.temperature, iql.qvalue, iql.value
        weights = advantage_weights(qvalue, value, data[train], beta=beta)
        student = distill(observations[train], data["action"][train], steps=args.steps,
                          weights=weights)  # fmt: skip
        fits[f"awr {critic_name}"] = {"fit_s": time.perf_counter() - start, "beta": beta}
        policies[f"distilled awr {critic_name}"] = partial(actions_of, student)
    if args.bc:  # the same MLP and fit on the dataset's actions, every pair weighted alike
        start = time.perf_counter()
        student = distill(observations[train], data["action"][train], steps=args.steps)
        fits["bc"] = {"fit_s": time.perf_counter() - start}
        policies["mlp bc"] = partial(actions_of, student)
    result["fits"] = fits
    if args.rollouts > 0:
        result["closed_loop"] = {
            "states": args.rollouts,
            "horizon": args.horizon,
            **closed_loop_returns(env_id, observations[starts[: args.rollouts]], policies,
                                  args.horizon),
        }  # fmt: skip
        for name, row in result["closed_loop"].items():
            if isinstance(row, dict):
                print(
                    f"closed loop {name}: {row['return']:.1f} ({row['minus_iql']:+.2f} ± "
                    f"{row['minus_iql_se']:.2f}), falls {row['falls']:.2f}",
                    flush=True,
                )
    if args.episodes:
        from recipes import utils  # the recipe's env and protocol

        results = json.loads((args.aepo_run / "results.json").read_text())
        eval_cfg = OmegaConf.create(results["config"]["eval"])
        env = utils.make_env(eval_cfg, run.metadata, int(eval_cfg.num_envs), torch.device("cpu"))
        kwargs = utils.eval_kwargs(eval_cfg, run.metadata, int(eval_cfg.episodes))
        episodes = {}
        for name, policy in policies.items():
            module = TensorDictModule(policy, in_keys=["observation"], out_keys=["action"])
            score = evaluate_policy(module, env, **kwargs)
            episodes[name] = {
                "normalized_mean": score.normalized_mean,
                "normalized_std": score.normalized_std,
                "mean_episode_length": sum(score.episode_lengths) / len(score.episode_lengths),
            }
            print(f"episodes {name}: {score}", flush=True)
        env.close()
        result["episodes (seen: a sweep)"] = episodes
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
