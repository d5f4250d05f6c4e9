"""Atomic writes (issue 17): a kill mid-write leaves the previous artifact, never a torn one."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import torchrl_aepo.atomic as atomic
from torchrl_aepo.atomic import atomic_open, save_torch_atomic, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]


def _recipe():
    spec = importlib.util.spec_from_file_location("aepo_recipe", ROOT / "recipes/aepo_offline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _killed_before_rename(monkeypatch):
    """Make the final ``os.replace`` of every atomic write fail like a kill at that moment."""

    def kill(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", kill)


def test_atomic_open_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("new, half writ")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no temporary left
    with atomic_open(path) as f:
        f.write("new")
    assert path.read_text() == "new"


def test_write_json_atomic_refuses_nan_instead_of_writing_null_or_NaN(tmp_path):
    with pytest.raises(ValueError, match="Out of range float"):
        write_json_atomic(tmp_path / "r.json", {"score": float("nan")})
    assert not (tmp_path / "r.json").exists()
    save_torch_atomic({"a": torch.ones(2)}, tmp_path / "t.pt")
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["a"], torch.ones(2))


def _actor_writer(path, version):
    from torchrl_aepo import AEPOActor, EnergyNetwork, MLPNoisePredictor

    torch.manual_seed(version)
    AEPOActor(MLPNoisePredictor(1, 2, num_cells=(4,)), EnergyNetwork(1, 2, num_cells=(4,))).save(
        path
    )


def _results_writer(path, version):
    _recipe().utils.write_results(path, {"final": {"normalized_mean": float(version)}})


def _plot_writer(path, version):
    from torchrl_aepo.plots import plot_guidance_sweep

    sweep = [{"guidance": 0.0, "normalized_mean": 1.0 + version, "normalized_std": 0.5}]
    plot_guidance_sweep(sweep, path)


def _checkpoint_writer(path, version):
    from torchrl_aepo.trainer import OfflineTrainer, Stage

    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(version)
    stage = Stage(path.stem, 1, lambda *_: {}, lambda: {"model": model}, batch_size=None)
    trainer = OfflineTrainer([stage], None, run_dir=path.parent.parent, progress_bar=False)
    trainer.save_checkpoint(stage)


@pytest.mark.parametrize(
    "writer, name",
    [
        (_actor_writer, "actor.pt"),
        (_results_writer, "results.json"),
        (_plot_writer, "plots/guidance_sweep.png"),
        (_checkpoint_writer, "checkpoints/energy.pt"),
    ],
)
def test_every_artifact_survives_a_kill_during_its_rewrite(tmp_path, monkeypatch, writer, name):
    path = tmp_path / name
    writer(path, 1)
    before = path.read_bytes()
    assert before
    with monkeypatch.context() as mp:
        _killed_before_rename(mp)
        with pytest.raises(KeyboardInterrupt):
            writer(path, 2)
    assert path.read_bytes() == before  # the complete previous version
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left
    writer(path, 2)
    assert path.read_bytes() != before
    if name == "results.json":
        assert json.loads(path.read_text()) == {"final": {"normalized_mean": 2.0}}
