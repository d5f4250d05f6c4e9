"""Data-parallel training over torch.distributed: 2 CPU processes (torchrun, gloo) against one.

Each case launches ``tests/ddp_worker.py`` (a tiny AEPO plan through OfflineTrainer) as
subprocesses; no GPU, no network (the rendezvous is on localhost, ``--standalone``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "tests" / "ddp_worker.py")

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is needed",
)


def _run(out: Path, *args: str, nproc: int = 1) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if nproc == 1:
        cmd = [sys.executable, WORKER]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", WORKER]  # fmt: skip
    proc = subprocess.run(
        [*cmd, "--out", str(out), *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [torch.load(f"{out}.rank{r}.pt", weights_only=True) for r in range(nproc)]


def _assert_same(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=lambda m, k=key: f"{k}: {m}", **tol)


def test_two_ranks_match_one_process_with_the_same_global_batch(tmp_path):
    # The critic stage is deterministic given its batches: 2 ranks x 32 = 1 process x 64.
    (single,) = _run(tmp_path / "single", "--stages", "critic", "--steps", "5")
    ranks = _run(tmp_path / "ddp", "--stages", "critic", "--steps", "5", nproc=2)
    assert not single["distributed"] and all(r["distributed"] for r in ranks)
    assert [r["world_size"] for r in ranks] == [2, 2]
    for r in ranks:
        _assert_same(r["params"], single["params"], rtol=1e-5, atol=1e-6)
        _assert_same(r["grads"], single["grads"], rtol=1e-4, atol=1e-6)
    # and the parameters actually moved (the comparison is not between two initialisations)
    moved = [k for k in single["params"] if k.startswith("q.")]
    assert any(not torch.equal(single["initial_params"][k], single["params"][k]) for k in moved)


def test_batch_not_divisible_by_the_ranks_is_refused_before_training(monkeypatch):
    # In process: the trainer of a 2-rank group refuses the uneven stages when it is built,
    # and the recipe under torchrun (WORLD_SIZE=2) refuses the config before any work.
    from hydra import compose, initialize_config_dir

    from torchrl_aepo import distributed
    from torchrl_aepo.trainer import OfflineTrainer, Stage

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    stages = [Stage(name, 1, lambda b, i: {}, dict, batch_size=size)
              for name, size in (("critic", 64), ("diffusion", 63), ("gamma", None))]  # fmt: skip
    with pytest.raises(ValueError, match=r"^diffusion: batch_size=63 is not divisible by the 2"):
        OfflineTrainer(stages, None, run_dir=None, distributed=True, progress_bar=False)
    OfflineTrainer(stages[:1], None, run_dir=None, distributed=True, progress_bar=False)

    from recipes import utils as recipe_utils

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose(config_name="config", overrides=["train.energy.batch_size=63"])
    assert recipe_utils.torchrun_batch_problems(cfg) == []  # one process
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert recipe_utils.torchrun_batch_problems(cfg) == [
        "train.energy.batch_size=63 with torchrun (WORLD_SIZE=2): not divisible by the 2 ranks; "
        "use a multiple of 2"
    ]
    with pytest.raises(recipe_utils.RecipeError, match=r"train\.energy\.batch_size=63"):
        recipe_utils.algorithm_config(cfg)


def test_ranks_stay_in_sync_rank0_writes_and_a_killed_run_resumes_exactly(tmp_path):
    # Every stage of the plan (diffusion noise drawn per rank and step).
    args = ("--stages", "all", "--steps", "4")
    full = _run(tmp_path / "full", *args, "--run-dir", str(tmp_path / "run_full"), nproc=2)
    _assert_same(full[0]["params"], full[1]["params"], rtol=0, atol=0)  # bitwise identical
    assert full[0]["logger_calls"] > 0 and full[1]["logger_calls"] == 0
    checkpoints = sorted(p.name for p in (tmp_path / "run_full" / "checkpoints").glob("*.pt"))
    assert checkpoints == ["critic.pt", "diffusion.pt", "energy.pt", "gamma.pt"]
    # different noise on the two ranks: the diffusion stage differs from a single process's
    (single,) = _run(tmp_path / "single", *args)
    noise = [k for k in single["params"] if k.startswith("noise.")]
    assert any(not torch.allclose(single["params"][k], full[0]["params"][k]) for k in noise)

    run = str(tmp_path / "run_killed")
    killed = _run(tmp_path / "killed", *args, "--run-dir", run, "--kill-at", "diffusion:3", nproc=2)
    assert all(r["killed"] for r in killed)
    resumed = _run(tmp_path / "resumed", *args, "--run-dir", run, nproc=2)
    for r in range(2):
        _assert_same(resumed[r]["params"], full[r]["params"], rtol=0, atol=0)


def test_recipe_under_torchrun_trains_once_and_rank0_reports(tmp_path):
    from torchrl_aepo.data import build_local_dataset

    root = tmp_path / "minari"
    build_local_dataset("pendulum-medium", root=root, num_steps=800, ref_episodes=2)
    run_dir = tmp_path / "run"
    tiny = ["threads=1", "device=cpu", "progress_bar=false", "task=pendulum-medium",
            f"data.root={root}", f"run_dir={run_dir}", "model.noise_num_cells=[32,32]",
            "model.qvalue_num_cells=[32,32]", "model.value_num_cells=[32,32]",
            "model.energy_num_cells=[32,32]", "train.diffusion.steps=10", "train.critic.steps=10",
            "train.energy.steps=10", "train.diffusion.batch_size=64",
            "train.critic.batch_size=64", "train.energy.batch_size=64",
            "train.gamma_table.num_times=8", "train.gamma_table.samples_per_time=32",
            "train.log_interval=5", "train.checkpoint_interval=5", "eval.episodes=2",
            "eval.num_envs=2", "eval.max_steps=20", "eval.guidance_sweep=[0.0]",
            "aepo.solver.steps=4"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "recipes" / "aepo_offline.py"), *tiny]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    import json

    results = json.loads((run_dir / "results.json").read_text())
    assert results["distributed"]["world_size"] == 2
    assert proc.stdout.count("results.json") == 1  # one report, by rank 0
    for stage in ("diffusion", "critic", "gamma", "energy"):
        assert (run_dir / "checkpoints" / f"{stage}.pt").exists()
        assert results["train"]["stages"][stage]["steps"] == (1 if stage == "gamma" else 10)
    # resume: both ranks restore every stage from rank 0's checkpoints, nothing is retrained
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished in a previous run") == 2 * 4
