"""Sweeps on hydra's launchers: a joblib multirun of 2 seeds x 2 tasks, aggregated; optuna.

The launchers are optional extras (``pip install -e .[launchers]``); a test is skipped when
its plugin is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from recipe_overrides import tiny_recipe_overrides

from torchrl_aepo.report import aggregate, load_runs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import utils as recipe_utils  # noqa: E402

TASKS = ("pendulum-medium", "pendulum-medium-replay")
TINY = [
    *tiny_recipe_overrides(),
]


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from torchrl_aepo.data import build_local_dataset

    root = tmp_path_factory.mktemp("minari")
    for task in TASKS:
        build_local_dataset(task, root=root, num_steps=800, ref_episodes=2)
    return root


def _recipe(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        WANDB_MODE="disabled",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "aepo_offline.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.skipif(
    not _has("hydra_plugins.hydra_joblib_launcher"), reason="pip install .[launchers]"
)
def test_joblib_multirun_of_seeds_and_tasks_is_aggregated(data_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = _recipe(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "seed=0,1",
        f"task={','.join(TASKS)}",
        f"data.root={data_root}",
        f"hydra.sweep.dir={sweep}",
        *TINY,
    )
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    run_dirs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert run_dirs == [
        "0_pendulum-medium_seed0",
        "1_pendulum-medium-replay_seed0",
        "2_pendulum-medium_seed1",
        "3_pendulum-medium-replay_seed1",
    ]
    for name in run_dirs:  # every job has its own run dir with its own checkpoints
        results = json.loads((sweep / name / "results.json").read_text())
        assert results["run_dir"] == str(sweep / name)
        assert (sweep / name / "checkpoints" / "energy.pt").exists()

    runs = load_runs([sweep])  # the aggregation command of the ablation report
    assert sorted((r.task, r.seed) for r in runs) == sorted((t, s) for t in TASKS for s in (0, 1))
    summary = aggregate(runs)
    assert [(s["task"], s["runs"], s["seeds"]) for s in summary] == [
        (TASKS[0], 2, [0, 1]),
        (TASKS[1], 2, [0, 1]),
    ]
    for s in summary:
        finals = [r.final for r in runs if r.task == s["task"]]
        assert s["final_mean"] == pytest.approx(sum(finals) / 2)
        assert s["final_std"] == pytest.approx(abs(finals[0] - finals[1]) / 2)

    out = subprocess.run(
        [sys.executable, "-m", "torchrl_aepo.report", str(sweep), "--out", str(sweep / "report")],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert (sweep / "report" / "table.csv").read_text().count("\n") == 3  # header + 2 tasks


def test_aggregate_refuses_a_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_runs([tmp_path / "nope"])


@pytest.mark.skipif(
    not _has("hydra_plugins.hydra_optuna_sweeper"), reason="pip install .[launchers]"
)
def test_optuna_search_maximises_the_final_normalized_score(data_root, tmp_path):
    sweep = tmp_path / "optuna"
    _recipe(
        "hparams_search=aepo_optuna",
        "hydra.sweeper.n_trials=2",
        f"task={TASKS[0]}",
        f"data.root={data_root}",
        f"hydra.sweep.dir={sweep}",
        *TINY,
    )
    best = (sweep / "optimization_results.yaml").read_text()
    finals = [r.final for r in load_runs([sweep])]
    assert len(finals) == 2
    import yaml

    parsed = yaml.safe_load(best)
    assert parsed["best_value"] == pytest.approx(max(finals))
    params = parsed["best_params"]
    assert 1.0 <= params["aepo.beta"] <= 5.0 and 0.5 <= params["aepo.expectile"] <= 0.8
    assert 0.0 <= params["aepo.guidance"] <= 5.0


@pytest.mark.skipif(
    not _has("hydra_plugins.hydra_submitit_launcher"), reason="pip install .[launchers]"
)
def test_submitit_slurm_launcher_composes(tmp_path):
    proc = _recipe("hydra/launcher=submitit_slurm", "--cfg", "hydra", "-p", "hydra.launcher")
    assert "hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in proc.stdout


def test_eval_backend_is_checked_before_any_work():
    from omegaconf import OmegaConf

    base = {"episodes": 2, "num_envs": 2, "max_steps": None, "exploration": "random",
            "guidance_sweep": [0.0], "seed": 0}  # fmt: skip
    assert recipe_utils.eval_problems(OmegaConf.create({**base, "backend": "async"})) == []
    assert recipe_utils.eval_problems(OmegaConf.create(base)) == []  # older configs: sync
    problems = recipe_utils.eval_problems(OmegaConf.create({**base, "backend": "threads"}))
    assert problems == ["eval.backend='threads': use sync or async"]
