"""studies.locomotion.distill: the MLP fitted to a policy's actions."""

import pytest
import torch
from tensordict import TensorDict

from studies.locomotion.distill import distill


def test_distill_fits_a_smooth_policy_and_generalises_to_new_states():
    torch.manual_seed(0)
    weight = torch.randn(3, 2)

    def teacher(obs):
        return 0.8 * torch.tanh(obs @ weight)

    obs = torch.randn(2000, 3)
    student = distill(obs, teacher(obs), steps=1500, num_cells=(64, 64))
    new = torch.randn(500, 3)
    with torch.no_grad():
        action = student(TensorDict(observation=new, batch_size=[500]))["action"]
    rmse = (action - teacher(new)).pow(2).mean().sqrt()
    # a constant policy (the teacher's mean action) is this far off: the fit is 10x closer
    baseline = (teacher(new) - teacher(obs).mean(0)).pow(2).mean().sqrt()
    assert rmse < 0.1 * baseline, (rmse, baseline)
    assert action.abs().max() < 1


def test_distill_refuses_mismatched_states_and_actions():
    with pytest.raises(ValueError, match="3 states but 2 actions"):
        distill(torch.zeros(3, 2), torch.zeros(2, 1), steps=1)


def test_weighted_distill_fits_the_weighted_conditional_mean():
    # at every state two actions, +0.5 and -0.5, weighted 3 : 1: the weighted mean is 0.25
    torch.manual_seed(0)
    obs = (torch.rand(1000, 2) * 2 - 1).repeat(2, 1)
    actions = torch.cat([torch.full((1000, 1), 0.5), torch.full((1000, 1), -0.5)])
    weights = torch.cat([torch.full((1000,), 3.0), torch.ones(1000)])
    student = distill(obs, actions, steps=800, num_cells=(32,), weights=weights)
    with torch.no_grad():
        action = student(TensorDict(observation=torch.rand(200, 2) * 2 - 1, batch_size=[200]))[
            "action"
        ]
    torch.testing.assert_close(action, torch.full_like(action, 0.25), atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="weights must be"):
        distill(obs, actions, steps=1, weights=-weights)


@pytest.mark.parametrize("extra", [[], ["--rollouts", "0", "--awr", "iql"]])
def test_main_needs_the_iql_run_before_loading_anything(extra, capsys):
    from studies.locomotion.distill import main

    # the run directory does not exist: the refusal comes before any loading
    with pytest.raises(SystemExit):
        main(["/nonexistent/run", *extra])
    assert "give --iql IQL_RUN" in capsys.readouterr().err
