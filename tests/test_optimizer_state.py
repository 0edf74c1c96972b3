"""Adam's state by parameter name: it survives a module gaining or losing a part."""

import torch
from torch import nn

from dimlearn.optimizer_state import named_optimizer_state, set_named_optimizer_state


def trained(module):
    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    module(torch.ones(3, 2)).sum().backward()
    optimizer.step()
    return optimizer


def test_named_state_goes_to_a_module_of_other_parts_by_name():
    torch.manual_seed(0)
    first = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    state = named_optimizer_state(trained(first), first)
    assert set(state) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    second = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1), nn.Linear(1, 1))
    optimizer = torch.optim.Adam(second.parameters(), lr=0.5)
    fresh = set_named_optimizer_state(optimizer, second, state)
    assert fresh == ["2.weight", "2.bias"]  # the new part starts afresh
    weight = second[0].weight
    torch.testing.assert_close(optimizer.state[weight]["exp_avg"], state["0.weight"]["exp_avg"])
    assert optimizer.param_groups[0]["lr"] == 0.5  # its own hyperparameters stay


def test_parameters_without_a_gradient_have_no_state():
    module = nn.Sequential(nn.Linear(2, 1), nn.Linear(2, 1))
    optimizer = torch.optim.Adam(module.parameters())
    module[0](torch.ones(1, 2)).sum().backward()
    optimizer.step()
    assert set(named_optimizer_state(optimizer, module)) == {"0.weight", "0.bias"}
