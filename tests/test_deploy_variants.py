"""studies.locomotion.deploy_variants: variant parsing and the actor each variant builds."""

import pytest
import torch

from studies.locomotion.deploy_variants import build_variant, parse_variant
from torchrl_aepo import AEPOActor, EnergyNetwork, MLPNoisePredictor, TwinQNetwork
from torchrl_aepo.diffusion.solver import DPMSolver


def test_parse_variant_types_and_refusals():
    assert parse_variant("w=0.05,tau=0,K=16,sel=softmax_q,T=4.3") == {
        "w": 0.05, "tau": 0.0, "K": 16, "sel": "softmax_q", "T": 4.3,
    }  # fmt: skip
    for bad in ("beta=3", "w", "K=1.5"):
        with pytest.raises(ValueError):
            parse_variant(bad)


def test_build_variant_sets_the_sampling_settings(tmp_path):
    torch.manual_seed(0)
    AEPOActor(
        MLPNoisePredictor(2, 3, num_cells=(8,)),
        EnergyNetwork(2, 3, num_cells=(8,)),
        solver=DPMSolver(steps=3),
    ).save(tmp_path / "actor.pt")
    critic = TwinQNetwork(3, 2, num_cells=(8,))
    plain = build_variant(tmp_path, critic, {"w": 0.5, "tau": 0.0})
    assert (plain.guidance_scale, plain.latent_scale, plain.qvalue_network) == (0.5, 0.0, None)
    picked = build_variant(tmp_path, critic, {"K": 4})
    assert picked.config()["num_candidates"] == 4 and picked.config()["selection"] == "argmax_q"
    assert picked.qvalue_network is critic and picked.latent_scale == 1.0
    averaged = build_variant(tmp_path, critic, {"K": 4, "sel": "mean"})
    assert averaged.config()["selection"] == "mean" and averaged.qvalue_network is None
