"""A noise predictor trained with DiffusionLoss, sampled with DPMSolver, reproduces bimodal data."""

import torch
from tensordict import TensorDict

from torchrl_aepo import DiffusionLoss, UMLPNoisePredictor
from torchrl_aepo.diffusion import DPMSolver

MODES = (-0.6, 0.6)
MODE_STD = 0.08


def bimodal_batch(n: int, generator: torch.Generator) -> TensorDict:
    side = torch.randint(0, 2, (n, 1), generator=generator)
    centres = torch.where(side == 0, MODES[0], MODES[1])
    action = centres + MODE_STD * torch.randn(n, 1, generator=generator)
    return TensorDict({"observation": torch.zeros(n, 1), "action": action}, batch_size=[n])


def test_learned_model_samples_both_modes_and_little_in_between():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    # QGPO's residual U-MLP at a small width; the plain concat-MLP learns this far more slowly.
    net = UMLPNoisePredictor(1, 1, widths=(128, 64, 32), embed_dim=16, cond_dim=32)
    loss = DiffusionLoss(net)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-3)
    for _ in range(700):
        optim.zero_grad()
        loss(bimodal_batch(256, gen))["loss_diffusion"].backward()
        optim.step()

    n = 4000
    observation = torch.zeros(n, 1)
    with torch.no_grad():
        samples = DPMSolver().sample(
            lambda x, t: net(x, t, observation), torch.randn(n, 1, generator=gen)
        )
    a = samples.squeeze(-1)
    near_low = ((a - MODES[0]).abs() < 3 * MODE_STD).float().mean().item()
    near_high = ((a - MODES[1]).abs() < 3 * MODE_STD).float().mean().item()
    between = (a.abs() < 0.3).float().mean().item()
    # Both modes hit with roughly equal mass, and the gap between them stays nearly empty
    # (a single Gaussian fitted to the data would put ~35% of its mass in |a| < 0.3).
    assert 0.35 < near_low < 0.65, near_low
    assert 0.35 < near_high < 0.65, near_high
    assert between < 0.08, between
