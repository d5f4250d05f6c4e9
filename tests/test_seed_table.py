"""studies.locomotion.seed_table: per-seed rows and the seed mean read from results files."""

import json

import pytest

from studies.locomotion.seed_table import build_seed_table, main


def _aepo(seed, bc, faithful, deployed):
    return {
        "config": {"seed": seed},
        "behaviour": {"normalized_mean": bc},
        "final": {"normalized_mean": faithful, "guidance": 0.05},
        "deployed": {"normalized_mean": deployed},
    }


def test_seed_means_and_sample_std():
    table = build_seed_table(
        [_aepo(0, 8.0, 9.0, 29.0), _aepo(1, 6.0, 7.0, 11.0), _aepo(2, 7.0, 8.0, 20.0)],
        [
            {"config": {"seed": s}, "final": {"normalized_mean": v}}
            for s, v in enumerate([11, 9, 10])
        ],
    )
    rows = table.splitlines()
    assert rows[2] == "| 0 | 8.0 | 0.05 | 9.0 | 29.0 | 11.0 |"
    # deployed: mean 20, sample std 9; IQL: mean 10, std 1
    assert (
        rows[-1] == "| mean ± std (3 seeds) | 7.0 ± 1.0 | – | 8.0 ± 1.0 | 20.0 ± 9.0 | 10.0 ± 1.0 |"
    )


def test_main_reads_and_copies_the_files(tmp_path):
    paths = []
    for seed in (0, 1):
        path = tmp_path / f"s{seed}.json"
        path.write_text(json.dumps(_aepo(seed, 1.0 + seed, 2.0, 3.0)))
        paths.append(str(path))
    table = main(["--aepo", *paths, "--copy-to", str(tmp_path / "c"), "--name", "hop"])
    assert "| 1 | 2.0 | 0.05 | 2.0 | 3.0 | – |" in table
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "hop.aepo0.json",
        "hop.aepo1.json",
    ]
    copies = [str(tmp_path / "c" / f"hop.aepo{i}.json") for i in (0, 1)]
    again = main(["--aepo", *copies, paths[1], "--copy-to", str(tmp_path / "c"), "--name", "hop"])
    assert "(3 seeds)" in again  # its own copies as input (same files) plus a third one
    assert len(list((tmp_path / "c").iterdir())) == 3
    with pytest.raises(SystemExit):
        main([])  # --aepo is required


def test_a_different_deployed_policy_is_marked_and_left_out_of_the_mean():
    old = _aepo(1, 6.0, 7.0, 12.0)
    old["deployed"].update(num_candidates=16, latent_scale=None)
    table = build_seed_table([_aepo(0, 8.0, 9.0, 20.0), old, _aepo(2, 7.0, 8.0, 10.0)], [])
    rows = table.splitlines()
    assert (
        "12.0 (other deployed policy: critic's pick of 16, latent scale 1; not in the mean)"
        in rows[3]
    )
    assert (
        rows[-1]
        == "| mean ± std (3 seeds) | 7.0 ± 1.0 | – | 8.0 ± 1.0 | 15.0 ± 7.1 (2 seeds) | – |"
    )
