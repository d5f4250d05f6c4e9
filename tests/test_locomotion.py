"""Local MuJoCo locomotion datasets: the D4RL ladder from the committed SAC checkpoints.

Values are checked against direct rollouts: the recorded actions replayed through a fresh env
reproduce the recorded observations, rewards and terminations, and the recorded actions are
the checkpoint's action plus the documented noise stream.
"""

from __future__ import annotations

import json

import gymnasium as gym
import minari
import numpy as np
import pytest
import torch

from torchrl_aepo.data import get_task, make_offline_data
from torchrl_aepo.data.__main__ import main as cli
from torchrl_aepo.data.locomotion import (
    CHECKPOINT_DIR,
    D4RL_REF_SCORES,
    LOCOMOTION_QUALITIES,
    SIGMA,
    build_locomotion_dataset,
    episodes_fingerprint,
    ladder_plan,
    load_ladder,
    parse_locomotion_task,
)
from torchrl_aepo.data.policies import (
    PolicyNet,
    SACConfig,
    evaluate_policy,
    load_policy,
    train_policy,
)

STEPS = 3_000  # transitions per test dataset


def _load(root, family, quality):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        ds = minari.load_dataset(f"local/{family}/{quality}-v0")
        info = json.loads(ds.storage.metadata["torchrl_aepo_build"])
        return ds, list(ds.iterate_episodes()), info


@pytest.fixture(scope="module")
def hopper_root(tmp_path_factory):
    """All five hopper qualities, 3000 transitions each."""
    root = tmp_path_factory.mktemp("loco")
    for quality in LOCOMOTION_QUALITIES:
        build_locomotion_dataset(f"hopper-{quality}-local", root=root, num_steps=STEPS)
    return root


def test_task_names_and_table():
    assert parse_locomotion_task("hopper-medium-replay-local") == ("hopper", "medium-replay")
    with pytest.raises(KeyError, match="walker2d-medium-local"):
        parse_locomotion_task("walker-medium-local")
    spec = get_task("halfcheetah-medium-expert-local")
    assert spec.backend == "local" and spec.eval_env_id == "HalfCheetah-v5"
    assert (spec.ref_min_score, spec.ref_max_score) == D4RL_REF_SCORES["halfcheetah"]
    assert spec.dataset_id == "local/halfcheetah/medium-expert-v0"


def test_ladder_plan_follows_the_training_run():
    ladder = load_ladder("hopper")
    plan = ladder_plan("medium-replay", 10_000, ladder)
    assert sum(s.steps for s in plan) == 10_000
    assert plan[0].checkpoint is None  # the SAC warm-up: uniform random steps
    assert plan[0].steps == round(10_000 * ladder["warmup_steps"] / ladder["medium_env_steps"])
    assert [s.checkpoint for s in plan[1:]] == ladder["replay"]
    assert ladder["replay"][-1] == ladder["medium"]
    me = ladder_plan("medium-expert", 1001, ladder)
    assert [(s.steps, s.checkpoint) for s in me] == [
        (500, ladder["medium"]),
        (501, ladder["expert"]),
    ]
    with pytest.raises(ValueError, match="num_steps"):
        ladder_plan("medium", 0, ladder)


@pytest.mark.parametrize("family", ["halfcheetah", "hopper", "walker2d"])
def test_committed_checkpoints_are_complete(family):
    ladder = load_ladder(family)
    expert_ret = ladder["returns"][ladder["expert"]]["reeval_return"]
    medium_ret = ladder["returns"][ladder["medium"]]["reeval_return"]
    assert medium_ret < expert_ret
    for name in {ladder["medium"], ladder["expert"], *ladder["replay"]}:
        net, info = load_policy(CHECKPOINT_DIR / family / name)
        assert info["env_id"] == ladder["env_id"] and isinstance(net, PolicyNet)


def test_medium_checkpoint_reproduces_its_recorded_return():
    ladder = load_ladder("hopper")
    rec = ladder["returns"][ladder["medium"]]
    net, _ = load_policy(CHECKPOINT_DIR / "hopper" / ladder["medium"])
    returns = evaluate_policy(net, "Hopper-v5", rec["reeval_episodes"], seed=20_000)
    assert returns.mean() == pytest.approx(rec["reeval_return"], rel=1e-3)


def test_every_quality_loads_with_metadata(hopper_root):
    lo, hi = D4RL_REF_SCORES["hopper"]
    for quality in LOCOMOTION_QUALITIES:
        ds, episodes, info = _load(hopper_root, "hopper", quality)
        assert ds.total_steps == STEPS == sum(len(e.actions) for e in episodes)
        assert ds.spec.env_spec.id == "Hopper-v5"
        meta = ds.storage.metadata
        assert (meta["ref_min_score"], meta["ref_max_score"]) == (lo, hi)
        assert info["fingerprint"] == episodes_fingerprint(episodes)
        assert sum(s["steps"] for s in info["segments"]) == STEPS
        returns = [e.rewards.sum() for e in episodes]
        assert info["behaviour_return_mean"] == pytest.approx(np.mean(returns))
        if quality != "random":  # random data needs no checkpoints
            assert info["policy_returns"] == load_ladder("hopper")["returns"]


def _replay_and_check(env_id, episode, seed):
    """Replay ``episode``'s actions in a fresh env reset with ``seed``: same data?"""
    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    np.testing.assert_allclose(obs, episode.observations[0], atol=1e-12)
    for t, action in enumerate(episode.actions):
        obs, reward, term, trunc, _ = env.step(action)
        np.testing.assert_allclose(obs, episode.observations[t + 1], atol=1e-9)
        assert reward == pytest.approx(episode.rewards[t], abs=1e-9)
        assert term == episode.terminations[t]
    env.close()


@pytest.mark.parametrize("quality", ["random", "medium", "expert"])
def test_values_match_a_direct_rollout(hopper_root, quality):
    _, episodes, info = _load(hopper_root, "hopper", quality)
    first = episodes[0]  # env 0 of segment 0 starts with seed `seed`
    assert first.id == 0
    _replay_and_check("Hopper-v5", first, seed=info["seed"])
    # The actions are the checkpoint's plus row 0 of the documented noise stream.
    rng = np.random.default_rng([info["seed"], 0])
    n = 10
    if quality == "random":
        draws = np.stack([rng.random((n, 3))[0] for _ in first.actions])
        np.testing.assert_allclose(first.actions, -1 + 2 * draws, atol=1e-6)
    else:
        ladder = load_ladder("hopper")
        net, _ = load_policy(CHECKPOINT_DIR / "hopper" / ladder[quality])
        noise = np.stack([rng.standard_normal((n, 3))[0] for _ in first.actions])
        mean = net.act(torch.as_tensor(first.observations[:-1], dtype=torch.float32)).numpy()
        expected = np.clip(mean + SIGMA[quality] * noise, -1, 1)
        np.testing.assert_allclose(first.actions, expected, atol=1e-5)


def test_terminations_and_timeouts_are_kept_apart(hopper_root, tmp_path):
    for quality in LOCOMOTION_QUALITIES:
        _, episodes, _ = _load(hopper_root, "hopper", quality)
        for ep in episodes:
            assert not (ep.terminations & ep.truncations).any()
            assert ep.terminations[-1] ^ ep.truncations[-1]  # every episode ends exactly once
            assert not ep.terminations[:-1].any() and not ep.truncations[:-1].any()
    _, random_eps, _ = _load(hopper_root, "hopper", "random")
    assert sum(ep.terminations[-1] for ep in random_eps) > 50  # random hoppers fall
    # HalfCheetah never terminates: 1000-step time-outs, and the budget cuts the last one.
    path = build_locomotion_dataset(
        "halfcheetah-random-local", root=tmp_path, num_steps=5_000, num_envs=2
    )
    assert path == tmp_path / "local/halfcheetah/random-v0"
    _, eps, info = _load(tmp_path, "halfcheetah", "random")
    assert [len(e.actions) for e in eps] == [1000, 1000, 1000, 1000, 500, 500]
    assert all(e.truncations[-1] and not e.terminations.any() for e in eps)
    # The time-out keeps the true final observation (the vector env auto-reset after it).
    _replay_and_check("HalfCheetah-v5", eps[0], seed=info["seed"])
    assert not np.allclose(eps[0].observations[-1], eps[2].observations[0])


def test_build_is_deterministic_and_fingerprinted(hopper_root, tmp_path):
    _, _, info = _load(hopper_root, "hopper", "medium-replay")
    again = build_locomotion_dataset(
        "hopper-medium-replay-local", root=tmp_path / "a", num_steps=STEPS
    )
    _, _, info_again = _load(tmp_path / "a", "hopper", "medium-replay")
    assert info_again["fingerprint"] == info["fingerprint"]
    # Reused, not rebuilt, when nothing changed; rebuilt for another seed.
    assert build_locomotion_dataset("hopper-medium-replay-local", root=tmp_path / "a") == again
    build_locomotion_dataset(
        "hopper-medium-replay-local", root=tmp_path / "a", num_steps=STEPS, seed=1
    )
    _, _, other = _load(tmp_path / "a", "hopper", "medium-replay")
    assert other["seed"] == 1 and other["fingerprint"] != info["fingerprint"]


@pytest.mark.parametrize("family", ["halfcheetah", "walker2d"])
def test_other_families_build_from_committed_checkpoints(family, tmp_path):
    build_locomotion_dataset(f"{family}-medium-expert-local", root=tmp_path, num_steps=1_000)
    _, episodes, info = _load(tmp_path, family, "medium-expert")
    ladder = load_ladder(family)
    assert [s["checkpoint"] for s in info["segments"]] == [ladder["medium"], ladder["expert"]]
    assert info["fingerprint"] == episodes_fingerprint(episodes)


def test_missing_checkpoints_say_how_to_train_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-policies walker2d"):
        build_locomotion_dataset("walker2d-medium-local", root=tmp_path, policy_dir=tmp_path)
    (tmp_path / "ladder.json").write_text(
        json.dumps(
            {"medium": "step_1.pt", "expert": "step_2.pt", "replay": ["step_1.pt"]}
            | {"warmup_steps": 1, "medium_env_steps": 1}
        )
    )
    with pytest.raises(FileNotFoundError, match="step_1.pt not found. Train one with"):
        build_locomotion_dataset("walker2d-medium-local", root=tmp_path, policy_dir=tmp_path)


def test_make_offline_data_and_cli(hopper_root, capsys):
    rb, meta = make_offline_data(
        "hopper-medium-replay-local", root=hopper_root, batch_size=16, build_if_missing=False
    )
    assert meta.num_transitions == STEPS and meta.obs_dim == 11 and meta.action_dim == 3
    assert (meta.ref_min_score, meta.ref_max_score) == D4RL_REF_SCORES["hopper"]
    assert rb.sample()["observation"].shape == (16, 11)
    assert cli(["list", "--family", "hopper"]) == 0
    out = capsys.readouterr().out
    assert "hopper-medium-replay-local" in out and "behaviour" in out


def test_sac_training_writes_checkpoints_and_a_log(tmp_path):
    cfg = SACConfig(
        steps=400,
        warmup_steps=200,
        frames_per_batch=200,
        save_every=200,
        utd=0.25,
        batch_size=32,
        hidden=(32, 32),
        eval_episodes=1,
    )
    out = train_policy("hopper", tmp_path, cfg, verbose=False)
    log = (out / "log.csv").read_text().splitlines()
    assert log[0].startswith("env_steps,updates,wall_s,eval_return")
    assert [row.split(",")[:2] for row in log[1:]] == [["200", "50"], ["400", "100"]]
    first, _ = load_policy(out / "step_200.pt")
    last, info = load_policy(out / "step_400.pt")
    assert info["env_steps"] == 400 and info["env_id"] == "Hopper-v5"
    assert not torch.equal(first.body[0].weight, last.body[0].weight)  # SAC updated the actor
