import pytest
import torch
from tensordict import TensorDict

from torchrl_aepo import (
    EnergyNetwork,
    GaussianFourierEmbedding,
    MLPNoisePredictor,
    TwinQNetwork,
    UMLPNoisePredictor,
    ValueNetwork,
    energy_module,
    noise_prediction_module,
    qvalue_module,
    value_module,
)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_umlp_has_the_paper_size():
    # AEPO Table 4 / QGPO's ScoreNet: 1.63M parameters for hopper (d=3, s=11).
    assert 1.60e6 < n_params(UMLPNoisePredictor(action_dim=3, obs_dim=11)) < 1.66e6


@pytest.mark.parametrize("batch", [(), (7,), (2, 5)])
@pytest.mark.parametrize("cls", [UMLPNoisePredictor, MLPNoisePredictor, EnergyNetwork])
def test_time_conditioned_nets_any_batch_rank(cls, batch):
    net = cls(action_dim=3, obs_dim=4)
    out = net(torch.randn(*batch, 3), torch.rand(*batch, 1), torch.randn(*batch, 4))
    assert out.shape == (*batch, 1 if cls is EnergyNetwork else 3)


def test_noise_predictor_rejects_wrong_sizes():
    net = UMLPNoisePredictor(action_dim=3, obs_dim=4, widths=(32, 16, 8))
    with pytest.raises(ValueError, match="observation must have last dimension 4"):
        net(torch.randn(2, 3), torch.rand(2, 1), torch.randn(2, 5))
    with pytest.raises(ValueError, match="noisy_action must have last dimension 3"):
        net(torch.randn(2, 2), torch.rand(2, 1), torch.randn(2, 4))


def test_fourier_embedding_is_fixed_and_saved():
    emb = GaussianFourierEmbedding(16, scale=30.0)
    assert "frequencies" in emb.state_dict() and not list(emb.parameters())
    t = torch.tensor([[0.25]])
    w = emb.frequencies
    expected = torch.cat([torch.sin(w * 0.25), torch.cos(w * 0.25)])
    torch.testing.assert_close(emb(t)[0], expected)


def test_twin_q_heads_are_independent_mlps():
    q = TwinQNetwork(obs_dim=5, action_dim=2, num_cells=(16, 16))
    obs, act = torch.randn(3, 4, 5), torch.randn(3, 4, 2)
    out = q(obs, act)
    assert out.shape == (3, 4, 2)
    for head in range(2):
        h = torch.cat([obs, act], -1)
        for i, (w, b) in enumerate(zip(q.weights, q.biases, strict=True)):
            h = h @ w[head] + b[head, 0]
            if i < len(q.weights) - 1:
                h = h.relu()
        torch.testing.assert_close(out[..., head], h.squeeze(-1))
    # a gradient through head 0 does not touch head 1's parameters
    q(obs, act)[..., 0].sum().backward()
    assert q.weights[0].grad[1].abs().sum() == 0 and q.weights[0].grad[0].abs().sum() > 0


def test_value_network_shape():
    assert ValueNetwork(obs_dim=5)(torch.randn(2, 3, 5)).shape == (2, 3, 1)


def test_tensordict_wrappers_read_and_write_documented_keys():
    td = TensorDict(
        {
            "observation": torch.randn(6, 4),
            "action": torch.randn(6, 2),
            "noisy_action": torch.randn(6, 2),
            "diffusion_time": torch.rand(6, 1),
        },
        batch_size=[6],
    )
    noise_prediction_module(MLPNoisePredictor(2, 4, num_cells=(8,)))(td)
    energy_module(EnergyNetwork(2, 4, num_cells=(8,)))(td)
    qvalue_module(TwinQNetwork(4, 2, num_cells=(8,)))(td)
    value_module(ValueNetwork(4, num_cells=(8,)))(td)
    assert td["noise_prediction"].shape == (6, 2)
    assert td["energy"].shape == (6, 1)
    assert td["state_action_value"].shape == (6, 2)
    assert td["state_value"].shape == (6, 1)


@pytest.mark.parametrize("rows", [1, 7, 300])  # 300 x 3 times: the per-evaluation branch
@pytest.mark.parametrize("activation", [torch.nn.SiLU, torch.nn.Tanh])
def test_sampling_context_matches_forward_and_autograd(rows, activation):
    """forward_context equals forward; the hand-written energy gradient equals autograd."""
    torch.manual_seed(0)
    times = [0.9, 0.37, 0.02]
    obs = torch.randn(rows, 11, dtype=torch.float64)
    noise = UMLPNoisePredictor(3, 11, activation=activation).double()
    energy = EnergyNetwork(3, 11, num_cells=(64, 32, 16), activation=activation).double()
    with torch.no_grad():
        noise_ctx = noise.sampling_context(obs, times)
        energy_ctx = energy.sampling_context(obs, times)
        for i, t in enumerate(times):
            x = torch.randn(rows, 3, dtype=torch.float64)
            time = torch.full((rows, 1), t, dtype=torch.float64)
            torch.testing.assert_close(
                noise.forward_context(x.clone(), i, noise_ctx), noise(x, time, obs)
            )
            torch.testing.assert_close(
                energy.forward_context(x, i, energy_ctx), energy(x, time, obs)
            )
            with torch.enable_grad():
                x_in = x.clone().requires_grad_(True)
                (expected,) = torch.autograd.grad(energy(x_in, time, obs).sum(), x_in)
            got = energy.action_gradient_context(x, i, energy_ctx)
            assert (got - expected).abs().max().item() < 1e-6 * max(
                1.0, expected.abs().max().item()
            )
