"""model.session(): values flow between traces without .save(); only saved ones leave."""

from __future__ import annotations

import torch

from nnsight_fast import NNsight

from models import MLP


def test_values_flow_between_traces_and_only_saved_leave():
    torch.manual_seed(0)
    net = MLP()
    model = NNsight(net)
    x, y = torch.randn(2, 4), torch.randn(2, 4)
    with model.session():
        with model.trace(x):
            hidden = model.fc1.output          # not saved
        with model.trace(y):
            model.fc1.output = hidden          # the second trace uses the first's value
            out = model.output.save()
        label = "done"
    assert torch.allclose(out, net.head(torch.relu(net.fc2(torch.relu(net.fc1(x))))))
    assert "hidden" not in dir() and "label" not in dir()


def test_nested_saved_value_in_a_function():
    torch.manual_seed(0)
    net = MLP()
    model = NNsight(net)
    x = torch.randn(2, 4)

    def run():
        with model.session():
            with model.trace(x):
                first = model.fc2.output
            doubled = (first * 2).save()
        return doubled

    assert torch.allclose(run(), net.fc2(torch.relu(net.fc1(x))) * 2)
