"""studies.locomotion.paired_eval: before/after rows of one option on the same runs."""

import json

import pytest

from studies.locomotion.paired_eval import main


def _results(w, faithful, deployed):
    return {
        "final": {"guidance": w, "normalized_mean": faithful},
        "deployed": {"normalized_mean": deployed},
    }


def test_paired_rows_and_mean_change(tmp_path, capsys):
    specs = []
    for name, before, after in (("a", (1.0, 9.0, 10.0), (0.5, 8.0, 13.0)),
                                ("b", (0.25, 5.0, 6.0), (0.25, 5.5, 5.0))):  # fmt: skip
        paths = []
        for tag, values in (("before", before), ("after", after)):
            path = tmp_path / f"{name}.{tag}.json"
            path.write_text(json.dumps(_results(*values)))
            paths.append(str(path))
        specs.append(f"{name}={paths[0]},{paths[1]}")
    main([*specs, "--out", str(tmp_path / "t.md")])
    rows = capsys.readouterr().out.splitlines()
    assert rows[2] == "| a | 1 / 0.5 | 9.0 / 8.0 | 10.0 / 13.0 | +3.0 |"
    assert rows[3] == "| b | 0.25 / 0.25 | 5.0 / 5.5 | 6.0 / 5.0 | -1.0 |"
    assert rows[4] == "| mean over 2 | – | – | 8.0 / 9.0 | +1.0 |"
    assert (tmp_path / "t.md").read_text().splitlines() == rows


def test_a_file_without_a_deployed_policy_is_refused(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"final": {"guidance": 1.0, "normalized_mean": 1.0}}))
    with pytest.raises(ValueError, match="deployed"):
        main([f"x={path},{path}"])
    with pytest.raises(SystemExit):
        main(["no-pair-here"])
