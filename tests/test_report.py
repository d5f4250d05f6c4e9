"""torchrl_aepo.report on synthetic results.json files: grouping, statistics, files."""

import csv
import json
import math

import pytest

from torchrl_aepo.report import (
    aggregate,
    load_runs,
    main,
    method_name,
    normalise_across_methods,
)


def _results(task, seed, final, sweep, *, method=None, rescale=True, **aepo):
    best = max(sweep.items(), key=lambda kv: kv[1])
    out = {
        "task": task,
        "seeds": {"train": seed},
        "final": {"guidance": 1.0, "normalized_mean": final},
        "best": {"over_guidance_sweep": {"guidance": best[0], "normalized_mean": best[1]}},
        "guidance_sweep": [{"guidance": w, "normalized_mean": s} for w, s in sweep.items()],
        "config": {"seed": seed, "aepo": {"rescale": rescale, **aepo}},
    }
    if method is not None:
        out["method"] = method
    return out


@pytest.fixture
def runs_dir(tmp_path):
    specs = [
        # task, seed, final, sweep, aepo keys
        ("hopper", 0, 60.0, {0.0: 40.0, 1.0: 60.0, 2.0: 70.0}, {}),
        ("hopper", 1, 80.0, {0.0: 44.0, 1.0: 80.0, 2.0: 90.0}, {}),
        ("hopper", 0, 50.0, {0.0: 40.0, 1.0: 50.0}, {"critic": "cql"}),
        ("hopper", 1, 30.0, {0.0: 40.0, 1.0: 30.0}, {"critic": "cql"}),
        ("walker", 0, 20.0, {0.0: 10.0, 1.0: 20.0}, {}),
        ("walker", 0, 40.0, {0.0: 10.0, 1.0: 40.0}, {"critic": "cql"}),
    ]
    for i, (task, seed, final, sweep, aepo) in enumerate(specs):
        d = tmp_path / "multirun" / "2025" / str(i)
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(_results(task, seed, final, sweep, **aepo)))
    # Figure 2 runs: rescale on/off, labelled by the run
    for rescale, scores in ((True, [10.0, 30.0]), (False, [10.0, 5.0])):
        for seed in (0, 1):
            d = tmp_path / "fig2" / f"{rescale}{seed}"
            d.mkdir(parents=True)
            sweep = {0.0: scores[0] + seed, 2.0: scores[1] + 2 * seed}
            r = _results("pen", seed, sweep[2.0], sweep, method=f"AEPO r{rescale}", rescale=rescale)
            (d / "results.json").write_text(json.dumps(r))
    return tmp_path


def test_method_names_follow_the_paper():
    assert method_name({}) == "AEPO"
    assert method_name({"aepo": {"posterior": 2}}) == "AEPO-Posterior-2"
    assert method_name({"aepo": {"critic": "isql"}}) == "AEPO-ISQL"
    assert method_name({"aepo": {"critic": "isql", "energy": "cep"}}) == "QGPO"
    assert method_name({"aepo": {"energy": "mse", "critic": "cql"}}) == "AEPO-CQL-MSE"


def test_aggregate_groups_by_task_and_method_with_mean_and_std(runs_dir):
    rows = {(r["task"], r["method"]): r for r in aggregate(load_runs([runs_dir / "multirun"]))}
    assert set(rows) == {("hopper", "AEPO"), ("hopper", "AEPO-CQL"), ("walker", "AEPO"),
                         ("walker", "AEPO-CQL")}  # fmt: skip
    aepo = rows["hopper", "AEPO"]
    assert aepo["runs"] == 2 and aepo["seeds"] == [0, 1]
    assert aepo["final_mean"] == 70.0 and aepo["final_std"] == 10.0  # ddof=0
    assert aepo["best_mean"] == 80.0 and aepo["best_std"] == 10.0  # max over w: 70, 90
    cql = rows["hopper", "AEPO-CQL"]
    assert cql["final_mean"] == 40.0 and cql["best_mean"] == 45.0 and cql["best_std"] == 5.0
    assert rows["walker", "AEPO"]["final_std"] == 0.0


def test_normalisation_across_methods():
    assert normalise_across_methods({"a": 20.0, "b": 40.0}) == {"a": 0.5, "b": 1.0}
    assert normalise_across_methods({"a": -1.0, "b": 3.0}) == {"a": 0.0, "b": 1.0}
    assert normalise_across_methods({"a": 0.0, "b": 0.0}) == {"a": 1.0, "b": 1.0}


def test_command_writes_tables_and_figures(runs_dir, capsys):
    out = runs_dir / "report"
    assert main([str(runs_dir / "multirun"), str(runs_dir / "fig2"), "--out", str(out)]) == 0
    for name in ("table.md", "table.csv", "guidance.md", "guidance.csv"):
        assert (out / name).exists()
    for name in ("radar.png", "guidance.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    table = list(csv.DictReader((out / "table.csv").open()))
    hopper = [r for r in table if r["task"] == "hopper" and r["method"] == "AEPO"][0]
    assert float(hopper["final_mean"]) == 70.0 and hopper["seeds"] == "0 1"
    md = (out / "table.md").read_text()
    assert "| hopper | AEPO | 2 | 70.0 ± 10.0 | 80.0 ± 10.0 |" in md
    assert "chosen on the evaluation episodes" in md
    # the figure-2 runs: labelled methods in the table, rescale split in the sweep table
    assert "| pen | AEPO rTrue | 2 | 31.0 ± 1.0 |" in md
    sweep = list(csv.DictReader((out / "guidance.csv").open()))
    pen = {(r["rescale"], float(r["guidance"])): r for r in sweep if r["task"] == "pen"}
    assert float(pen["True", 2.0]["mean"]) == 31.0 and float(pen["False", 2.0]["mean"]) == 6.0
    assert math.isclose(float(pen["False", 0.0]["std"]), 0.5)
    assert pen["True", 2.0]["method"] == "AEPO" and pen["True", 2.0]["runs"] == "2"


def test_errors_name_the_problem(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no results.json" in capsys.readouterr().out
    (tmp_path / "results.json").write_text(json.dumps({"task": "x"}))
    with pytest.raises(ValueError, match="not a complete results.json"):
        load_runs([tmp_path])
