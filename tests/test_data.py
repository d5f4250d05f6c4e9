"""Offline data: task table, preprocessing oracles, local datasets through TorchRL, offline errors.

Everything runs without network on tiny datasets built into temporary directories.
"""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from torchrl_aepo.data import (
    PAPER_TASKS,
    QUALITIES,
    TASKS,
    DatasetUnavailableError,
    OfflineMetadata,
    PatchedMinariExperienceReplay,
    UnknownTaskError,
    build_local_dataset,
    get_task,
    import_eval_requirements,
    list_tasks,
    make_offline_data,
    normalized_score,
)
from torchrl_aepo.data import preprocessing as pre
from torchrl_aepo.data.__main__ import main as cli
from torchrl_aepo.data.experts import PendulumSwingUpExpert

# Tiny local datasets: (quality, transitions). Reference scores from few episodes.
TINY = {
    "pendulum": {
        "random": 600,
        "medium": 600,
        "expert": 600,
        "medium-replay": 800,
        "medium-expert": 800,
    },
    "inverted-double-pendulum": {"random": 150, "medium": 2500, "expert": 2000},
}
REF_EPISODES = {"pendulum": 6, "inverted-double-pendulum": 2}


def _block_network(monkeypatch):
    """Route all urllib traffic to a closed local port: the network is 'unavailable'."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def minari_dir(tmp_path_factory):
    """Minari root (via $MINARI_DATASETS_PATH) holding the tiny local datasets."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        for family, sizes in TINY.items():
            for quality, steps in sizes.items():
                build_local_dataset(
                    f"{family}-{quality}", num_steps=steps, ref_episodes=REF_EPISODES[family]
                )
        yield root


def _hdf5_episodes(path):
    with h5py.File(path / "data" / "main_data.hdf5", "r") as f:
        keys = sorted(f, key=lambda k: int(k.split("_")[1]))
        return [
            {k: f[ep][k][()] for k in ("observations", "rewards", "terminations", "truncations")}
            for ep in keys
        ]


# ----------------------------------------------------------------------------- task table


def test_task_table_has_the_33_paper_tasks():
    assert len(PAPER_TASKS) == 33
    families = [TASKS[n].family for n in PAPER_TASKS]
    counts = {f: families.count(f) for f in set(families)}
    assert counts == {"locomotion": 9, "maze2d": 6, "antmaze": 6, "adroit": 12}
    assert sorted(list_tasks(backend="d4rl")) == sorted(PAPER_TASKS)
    from torchrl.data.datasets.d4rl_infos import D4RL_DATASETS

    for name in PAPER_TASKS:
        spec = TASKS[name]
        assert spec.dataset_id in D4RL_DATASETS, name
        assert spec.ref_min_score < spec.ref_max_score
        expected = {"locomotion": "iql_locomotion", "antmaze": "antmaze"}.get(spec.family, "none")
        assert spec.reward_transform == expected
        assert (spec.requires == ()) == (spec.family == "locomotion")
        if spec.alternative:
            assert TASKS[spec.alternative].backend == "minari"
    for family in TINY:
        assert list_tasks(family=family) == [f"{family}-{q}" for q in QUALITIES]


def test_unknown_task_lists_close_names():
    with pytest.raises(UnknownTaskError, match="hopper-medium-v2") as err:
        get_task("hoper-medium-v2")
    assert isinstance(err.value, KeyError)
    with pytest.raises(KeyError, match="pendulum-medium-replay"):
        get_task("pendulum-medium-replya")
    assert get_task("D4RL/kitchen/mixed-v2").backend == "minari"  # any Minari id


def test_eval_requirements_fail_with_an_install_hint():
    import_eval_requirements("pendulum-medium-replay")  # no extra package
    spec = dataclasses.replace(get_task("door-human-v1"), requires=("no-such-package-xyz",))
    with pytest.raises(ImportError, match="pip install no-such-package-xyz"):
        import_eval_requirements(spec)


def test_normalized_score_uses_d4rl_references():
    assert normalized_score("hopper-medium-v2", 3234.3) == pytest.approx(100.0)
    assert normalized_score("halfcheetah-medium-v2", -280.178953) == pytest.approx(0.0)
    walker = normalized_score(get_task("walker2d-medium-v2"), [1.629008, 4592.3, 2296.96])
    np.testing.assert_allclose(walker, [0.0, 100.0, 50.0], atol=1e-3)
    assert normalized_score("antmaze-umaze-v2", 0.75) == pytest.approx(75.0)
    assert normalized_score("pen-human-v1", 3076.8331017826877) == pytest.approx(100.0)
    assert normalized_score({"ref_min_score": 10, "ref_max_score": 20}, 15) == 50.0
    with pytest.raises(ValueError, match="OfflineMetadata"):
        normalized_score("mujoco/hopper/medium-v0", 1.0)


# ---------------------------------------------------------------- preprocessing oracles


def _toy_transitions():
    # Three episodes: returns 3, -1, 5 (the last one cut, i.e. truncated).
    reward = torch.tensor([1.0, 2.0, -1.0, 2.0, 2.0, 1.0]).unsqueeze(-1)
    return TensorDict(
        {"episode": torch.tensor([0, 0, 1, 2, 2, 2]), "next": {"reward": reward}}, [6]
    )


def test_reward_transforms_against_hand_computed_values():
    td = _toy_transitions()
    returns = pre.episode_returns(td)
    assert returns.tolist() == [3.0, -1.0, 5.0]
    scale, shift = pre.reward_transform_params("iql_locomotion", returns)
    assert (scale, shift) == (1000.0 / 6.0, 0.0)
    pre.apply_reward_transform(td, scale, shift)
    expected = torch.tensor([1.0, 2.0, -1.0, 2.0, 2.0, 1.0]) * 1000.0 / 6.0
    torch.testing.assert_close(td["next", "reward"].squeeze(-1), expected)
    assert pre.reward_transform_params("antmaze", returns) == (1.0, -1.0)
    assert pre.reward_transform_params("none", returns) == (1.0, 0.0)
    with pytest.raises(ValueError, match="different returns"):
        pre.reward_transform_params("iql_locomotion", torch.tensor([2.0, 2.0]))
    with pytest.raises(ValueError, match="unknown reward_transform"):
        pre.reward_transform_params("cql", returns)


def test_observation_normalisation_against_hand_computed_values():
    obs = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    loc, scale = pre.observation_stats(obs)
    std0 = (8.0 / 3.0) ** 0.5  # population std of 0, 2, 4
    torch.testing.assert_close(loc, torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(scale, torch.tensor([std0 + 1e-3, 1e-3]))
    td = TensorDict({"observation": obs.clone(), "next": {"observation": obs + 2}}, [3])
    pre.normalize_observations(td, loc, scale)
    expected = torch.tensor([[-2.0, 0.0], [0.0, 0.0], [2.0, 0.0]]) / torch.tensor([std0 + 1e-3, 1])
    torch.testing.assert_close(td["observation"], expected)
    torch.testing.assert_close(
        td["next", "observation"][0], (torch.tensor([2.0, 3.0]) - loc) / scale
    )

    # The eval-env transform from the metadata applies the same map.
    meta = _metadata(obs_loc=loc.tolist(), obs_scale=scale.tolist())
    transform = meta.observation_norm_transform()
    out = transform(TensorDict({"observation": obs.clone()}, [3]))
    torch.testing.assert_close(out["observation"], expected)
    with pytest.raises(ValueError, match="normalize_observations=False"):
        _metadata().observation_norm_transform()


def test_episode_ids_from_dones_and_discontinuities():
    obs = torch.arange(6.0).unsqueeze(-1)
    nxt = obs + 1
    nxt[3] = 10.0  # jump: transition 4 does not continue transition 3
    done = torch.tensor([False, True, False, False, False, False]).unsqueeze(-1)
    td = TensorDict({"observation": obs, "next": {"observation": nxt, "done": done}}, [6])
    assert pre.episode_ids_from_dones(td).tolist() == [0, 0, 1, 1, 2, 2]


def _metadata(**kwargs) -> OfflineMetadata:
    base = dict(
        task="t",
        backend="local",
        dataset_id="local/x/medium-v0",
        obs_dim=2,
        action_dim=1,
        action_low=[-1.0],
        action_high=[1.0],
        eval_env_id="Pendulum-v1",
        eval_env_kwargs={},
        max_episode_steps=200,
        ref_min_score=-10.0,
        ref_max_score=10.0,
        num_transitions=3,
        num_episodes=1,
        return_min=0.0,
        return_max=0.0,
        return_mean=0.0,
        reward_transform="none",
        reward_scale=1.0,
        reward_shift=0.0,
    )
    base.update(kwargs)
    return OfflineMetadata(**base)


def test_metadata_round_trips_through_json():
    meta = _metadata(obs_loc=[0.5, 1.0], obs_scale=[2.0, 3.0])
    again = OfflineMetadata.from_dict(json.loads(json.dumps(meta.to_dict())))
    assert again == meta
    assert again.normalized_score(0.0) == 50.0
    with pytest.raises(ValueError, match="unknown OfflineMetadata fields"):
        OfflineMetadata.from_dict({**meta.to_dict(), "bogus": 1})


def test_pendulum_expert_kicks_from_rest_and_balances():
    expert = PendulumSwingUpExpert()
    np.testing.assert_array_equal(expert(np.array([-1.0, 0.0, 0.0])), [2.0])
    tilted = expert(np.array([[np.cos(0.1), np.sin(0.1), 0.0]]))  # batch of one, near the top
    assert tilted.shape == (1, 1) and tilted[0, 0] == pytest.approx(-1.0, abs=1e-6)


# ------------------------------------------------------------------------ local datasets


@pytest.mark.parametrize("family", list(TINY))
def test_local_family_through_minari_experience_replay(minari_dir, family):
    scores = {}
    for quality in TINY[family]:
        task = f"{family}-{quality}"
        rb, meta = make_offline_data(task, batch_size=32, reward_transform="none", seed=0)
        td = rb[:]
        n, obs_dim = meta.num_transitions, meta.obs_dim
        assert n == TINY[family][quality] == len(td)
        for key, shape, dtype in [
            ("observation", (n, obs_dim), torch.float32),
            (("next", "observation"), (n, obs_dim), torch.float32),
            ("action", (n, meta.action_dim), torch.float32),
            (("next", "reward"), (n, 1), torch.float32),
            (("next", "terminated"), (n, 1), torch.bool),
            (("next", "truncated"), (n, 1), torch.bool),
            (("next", "done"), (n, 1), torch.bool),
        ]:
            assert td[key].shape == shape and td[key].dtype == dtype, key

        # Values equal the HDF5 file, episode by episode (catches an all-zero conversion).
        episodes = _hdf5_episodes(minari_dir / meta.dataset_id)
        assert meta.num_episodes == len(episodes)
        cat = {k: np.concatenate([e[k] for e in episodes]) for k in episodes[0]}
        np.testing.assert_allclose(td["next", "reward"].squeeze(-1), cat["rewards"], rtol=1e-6)
        obs = np.concatenate([e["observations"][:-1] for e in episodes])
        nxt = np.concatenate([e["observations"][1:] for e in episodes])
        np.testing.assert_allclose(td["observation"], obs, rtol=1e-6)
        np.testing.assert_allclose(td["next", "observation"], nxt, rtol=1e-6)
        np.testing.assert_array_equal(td["next", "terminated"].squeeze(-1), cat["terminations"])
        np.testing.assert_array_equal(td["next", "truncated"].squeeze(-1), cat["truncations"])

        # Exactly one episode end per episode, at its last transition; done = term | trunc.
        done = td["next", "done"].squeeze(-1)
        assert torch.equal(done, (td["next", "terminated"] | td["next", "truncated"]).squeeze(-1))
        assert int(done.sum()) == len(episodes)
        assert bool(done[-1])
        ep = td["episode"]
        same = ep[1:] == ep[:-1]
        assert not done[:-1][same].any()
        assert torch.equal(td["next", "observation"][:-1][same], td["observation"][1:][same])

        term = int(td["next", "terminated"].sum())
        if family == "pendulum":
            assert term == 0  # Pendulum-v1 only truncates
        elif quality in ("random", "medium"):
            assert term > 0  # the double pendulum falls
        assert meta.eval_env_id == TASKS[task].eval_env_id
        scores[quality] = normalized_score(meta, meta.return_mean)

        batch = rb.sample()
        assert batch.batch_size == torch.Size([32]) and batch["observation"].shape[-1] == obs_dim
    assert scores["random"] < scores["medium"] < scores["expert"]
    assert scores["expert"] == pytest.approx(100.0, abs=15.0)
    assert abs(scores["random"]) < 35.0  # 3 random Pendulum episodes: std of the mean ~15


def test_reward_transform_and_normalisation_on_loaded_data(minari_dir):
    _, raw = make_offline_data("pendulum-medium", reward_transform="none")
    rb, meta = make_offline_data("pendulum-medium", normalize_observations=True, seed=1)
    td = rb[:]
    assert meta.reward_transform == "iql_locomotion"
    assert meta.reward_scale == pytest.approx(1000.0 / (raw.return_max - raw.return_min))
    returns = pre.episode_returns(td)
    assert float(returns.max() - returns.min()) == pytest.approx(1000.0, rel=1e-4)
    torch.testing.assert_close(td["observation"].mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    assert meta.observations_normalized and len(meta.obs_loc) == meta.obs_dim == 3
    # Same seed, same batches; the index key says which transitions were drawn.
    rb2, _ = make_offline_data("pendulum-medium", normalize_observations=True, seed=1)
    assert torch.equal(rb.sample()["index"], rb2.sample()["index"])


def test_build_is_idempotent_and_cache_follows_the_hdf5(minari_dir, tmp_path):
    path = build_local_dataset("pendulum-random", root=tmp_path, num_steps=400, ref_episodes=6)
    assert path == tmp_path / "local/pendulum/random-v0"
    h5 = path / "data" / "main_data.hdf5"
    stamp = h5.stat().st_mtime_ns
    assert build_local_dataset("pendulum-random", root=tmp_path) == path  # reused
    assert h5.stat().st_mtime_ns == stamp
    _, first = make_offline_data("pendulum-random", root=tmp_path, reward_transform="none")
    assert first.num_transitions == 400
    # A different size rebuilds; the TorchRL memmap cache notices the new HDF5 file.
    build_local_dataset("pendulum-random", root=tmp_path, num_steps=600, ref_episodes=6)
    _, second = make_offline_data("pendulum-random", root=tmp_path, reward_transform="none")
    assert second.num_transitions == 600
    assert (tmp_path / ".torchrl" / "local/pendulum/random-v0").is_dir()


def test_missing_local_dataset_without_build(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="build_if_missing=False") as err:
        make_offline_data("pendulum-expert", root=tmp_path, build_if_missing=False)
    assert str(tmp_path) in str(err.value) and "python -m torchrl_aepo.data build" in str(err.value)


def test_upstream_minari_conversion_bug_is_still_there(minari_dir, tmp_path):
    """If this fails, torchrl fixed MinariExperienceReplay: drop PatchedMinariExperienceReplay
    (torchrl_aepo/data/loading.py) and use the plain class."""
    from torchrl.data.datasets import MinariExperienceReplay

    dataset_id = "local/pendulum/medium-v0"
    plain = MinariExperienceReplay(dataset_id, 8, root=tmp_path / "a", load_from_local_minari=True)
    assert plain[:]["next", "reward"].abs().sum() == 0, "upstream fixed: remove the workaround"
    fixed = PatchedMinariExperienceReplay(
        dataset_id, 8, root=tmp_path / "b", load_from_local_minari=True
    )
    assert fixed[:]["next", "reward"].abs().sum() > 0
    # Reloading the patched memmap with the plain class (download=False) keeps the values.
    again = MinariExperienceReplay(dataset_id, 8, root=tmp_path / "b", download=False)
    assert torch.equal(again[:]["next", "reward"], fixed[:]["next", "reward"])


def test_dict_observations_are_flattened_in_sorted_key_order():
    from torchrl_aepo.data.loading import _flat_observation

    obs = {"observation": torch.ones(2, 4), "desired_goal": torch.zeros(2, 2)}
    td = TensorDict({"observation": obs, "next": {"observation": obs}}, [2])
    flat, flat_next, keys = _flat_observation(td)
    assert keys == ["desired_goal", "observation"]
    assert flat.shape == (2, 6) and torch.equal(flat[:, :2], torch.zeros(2, 2))
    assert torch.equal(flat, flat_next)


# ------------------------------------------------------------------- D4RL and remote Minari


def _fake_d4rl_cache(root):
    """A torchrl D4RL memmap (as ``D4RLExperienceReplay`` stores it) with one time-out."""
    obs = torch.arange(12.0).reshape(6, 2)
    nxt = obs + 2
    nxt[2] = 0.0  # torchrl zeroes the unknown next observation of a time-out
    terminated = torch.tensor([0, 0, 0, 0, 1, 0], dtype=torch.bool).unsqueeze(-1)
    truncated = torch.tensor([0, 0, 1, 0, 0, 0], dtype=torch.bool).unsqueeze(-1)
    td = TensorDict(
        {
            "observation": obs.double(),
            "action": torch.zeros(6, 3, dtype=torch.float64),
            "next": {
                "observation": nxt.double(),
                "reward": torch.tensor([1.0, 1.0, 1.0, 2.0, 4.0, 1.0]).unsqueeze(-1),
                "terminated": terminated,
                "truncated": truncated,
                "done": terminated | truncated,
            },
        },
        [6],
    )
    td.memmap(root / "hopper-medium-v2")


def test_d4rl_cached_data_drops_timeouts_and_masks_with_terminated(tmp_path, monkeypatch):
    _block_network(monkeypatch)  # a cached dataset must load without the network
    _fake_d4rl_cache(tmp_path)
    rb, meta = make_offline_data("hopper-medium-v2", root=tmp_path, batch_size=4)
    td = rb[:]
    assert meta.num_transitions == 5  # the time-out transition is gone
    assert td["observation"].dtype == torch.float32
    assert not td["next", "truncated"].any()
    assert td["next", "terminated"].squeeze(-1).tolist() == [False, False, False, True, False]
    # Episodes: [0, 1] (cut at the dropped time-out), [3, 4] (terminal), [5].
    assert td["episode"].tolist() == [0, 0, 1, 1, 2]
    assert [meta.return_min, meta.return_max] == [1.0, 6.0]
    assert meta.reward_scale == pytest.approx(1000.0 / 5.0)
    assert meta.eval_env_id == "Hopper-v4" and meta.action_low == [-1.0] * 3


def test_d4rl_download_without_network_fails_fast_and_clearly(tmp_path, monkeypatch):
    _block_network(monkeypatch)
    with pytest.raises(DatasetUnavailableError) as err:
        make_offline_data("hopper-medium-v2", root=tmp_path)
    message = str(err.value)
    assert "hopper-medium-v2" in message and str(tmp_path / "hopper-medium-v2") in message
    assert "unreachable" in message and "pendulum-medium-replay" in message


def test_remote_minari_without_network_fails_fast_and_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetUnavailableError, match="HF_HUB_OFFLINE") as err:
        make_offline_data("D4RL/door/human-v2", root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "D4RL/door/human-v2/data/main_data.hdf5") in message
    assert "pendulum-medium-replay" in message
    # Hub mode on, network off: the real download path still ends in the same error type.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    _block_network(monkeypatch)
    with pytest.raises(DatasetUnavailableError, match="antmaze/umaze-v1"):
        make_offline_data("D4RL/antmaze/umaze-v1", root=tmp_path)


# ---------------------------------------------------------------------------------- CLI


def test_cli_lists_and_builds(tmp_path, capsys):
    assert cli(["list", "--backend", "local"]) == 0
    out = capsys.readouterr().out
    assert "pendulum-medium-replay" in out and "25 tasks" in out
    assert (
        cli(
            [
                "build",
                "pendulum-random",
                "--root",
                str(tmp_path),
                "--steps",
                "400",
                "--ref-episodes",
                "6",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert str(tmp_path / "local/pendulum/random-v0") in out and "400 transitions" in out


# ------------------------------------------------------------- non-finite data (issue 17)


@pytest.fixture(scope="module")
def clean_pendulum(tmp_path_factory):
    """A tiny local dataset to corrupt (copied per test)."""
    root = tmp_path_factory.mktemp("clean")
    build_local_dataset("pendulum-medium", root=root, num_steps=600, ref_episodes=2)
    return root


def _corrupted(clean_root, tmp_path, field, value, episode=1, step=5):
    """A copy of the clean dataset with ``episode``'s ``field[step]`` set to ``value``."""
    import shutil

    root = tmp_path / "minari"
    shutil.copytree(clean_root, root, ignore=shutil.ignore_patterns(".torchrl"))
    h5 = root / "local/pendulum/medium-v0/data/main_data.hdf5"
    with h5py.File(h5, "r+") as f:
        data = f[f"episode_{episode}"][field]
        data[step] = value if np.ndim(data[step]) == 0 else np.full(data[step].shape, value)
    return root


@pytest.mark.parametrize(
    "field, key",
    [
        ("rewards", "('next', 'reward')"),
        ("actions", "'action'"),
        ("observations", "'observation'"),
    ],
)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_are_refused_naming_field_count_and_place(
    clean_pendulum, tmp_path, field, key, value
):
    root = _corrupted(clean_pendulum, tmp_path, field, value)
    with pytest.raises(pre.NonFiniteDataError) as err:
        make_offline_data("pendulum-medium", root=root)
    message = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "local/pendulum/medium-v0" in message and "drop_nonfinite=True" in message
    assert f"{key}: " in message and "first at episode 1, step 5" in message
    if field == "observations":  # o[5] is observation 5 and the next observation of step 4
        assert (
            "('next', 'observation'): 3 NaN/inf values in 1 transition; first at episode 1, step 4"
            in message
        )
        assert "drop the 2 affected transitions" in message
    else:
        assert "drop the 1 affected transitions" in message


def test_drop_nonfinite_drops_the_affected_transitions_and_says_how_many(clean_pendulum, tmp_path):
    _, clean = make_offline_data("pendulum-medium", root=clean_pendulum)
    root = _corrupted(clean_pendulum, tmp_path, "observations", float("nan"))
    with pytest.warns(UserWarning, match=r"dropped 2 of 600 transitions"):
        rb, meta = make_offline_data("pendulum-medium", root=root, drop_nonfinite=True)
    td = rb[:]
    assert meta.num_transitions == len(td) == clean.num_transitions - 2 == 598
    assert meta.num_dropped_nonfinite == 2 and meta.num_episodes == clean.num_episodes
    assert all(torch.isfinite(v).all() for v in td.values(True, True) if v.dtype.is_floating_point)
    assert OfflineMetadata.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta


def test_recipe_passes_data_drop_nonfinite(clean_pendulum, tmp_path):
    import importlib.util
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("aepo_recipe", repo / "recipes/aepo_offline.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    root = _corrupted(clean_pendulum, tmp_path, "rewards", float("inf"))
    overrides = ["task=pendulum-medium", f"data.root={root}", f"run_dir={tmp_path}/run"]
    with initialize_config_dir(version_base="1.3", config_dir=str(repo / "configs")):
        cfg = compose(config_name="config", overrides=overrides)
        dropping = compose(config_name="config", overrides=[*overrides, "data.drop_nonfinite=true"])
    task = recipe.utils.make_task(cfg.task)
    # the recipe reports the loader's NonFiniteDataError as a RecipeError (no traceback)
    with pytest.raises(recipe.RecipeError, match="data.drop_nonfinite=true"):
        recipe.utils.make_data(cfg.data, task, None, torch.device("cpu"), 0)
    with pytest.warns(UserWarning, match="dropped 1 of 600"):
        _, meta = recipe.utils.make_data(dropping.data, task, None, torch.device("cpu"), 0)
    assert meta.num_dropped_nonfinite == 1 and meta.reward_scale > 0


@pytest.mark.parametrize(
    "returns, match",
    [
        ([1.0, float("inf"), 3.0], r"0 are NaN and 1 infinite \(first: episode 1, return inf\)"),
        ([float("nan"), 2.0], r"1 are NaN and 0 infinite \(first: episode 0, return nan\)"),
        ([1e-320, 2e-320], r"unusable"),
        ([], r"at least one episode"),
    ],
)
def test_iql_reward_transform_says_what_is_wrong(returns, match):
    with pytest.raises(ValueError, match=match) as err:
        pre.reward_transform_params("iql_locomotion", torch.tensor(returns, dtype=torch.float64))
    assert "max - min = nan" not in str(err.value)  # the old, misleading advice


def test_check_finite_on_a_hand_built_dataset():
    td = TensorDict(
        {
            "observation": torch.zeros(5, 2),
            "action": torch.tensor([[0.0], [0.0], [float("nan")], [0.0], [float("nan")]]),
            "episode": torch.tensor([0, 0, 1, 1, 1]),
            "next": {"reward": torch.zeros(5, 1), "done": torch.zeros(5, 1, dtype=torch.bool)},
        },
        [5],
    )
    with pytest.raises(
        pre.NonFiniteDataError,
        match=r"'action': 2 NaN/inf values in 2 transitions; first at episode 1, step 0 \(transition 2\): nan",
    ):
        pre.check_finite(td, source="toy")
    kept, report = pre.check_finite(td, drop=True)
    assert report.num_dropped == 2 and kept["episode"].tolist() == [0, 0, 1]
    same, report = pre.check_finite(kept)
    assert same is kept and report.fields == [] and report.num_dropped == 0
    with pytest.raises(pre.NonFiniteDataError, match="would leave nothing"):
        pre.check_finite(td[2:3], drop=True)


def test_remote_minari_without_network_names_the_network_first(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    _block_network(monkeypatch)
    with pytest.raises(DatasetUnavailableError) as err:
        make_offline_data("D4RL/door/human-v2", root=tmp_path)
    message = str(err.value)
    assert "no network connection to the Minari remote" in message and "unreachable" in message
    assert not message.split("Looked in:")[0].rstrip().endswith("`pip install huggingface_hub`")
