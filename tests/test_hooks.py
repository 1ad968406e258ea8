"""HookHandler: plain hooks on named modules through the dispatcher, removed on exit."""

from __future__ import annotations

import pytest
import torch

from nnsight_fast import HookHandler, NNsight

from models import MLP


def test_output_and_input_hooks_apply_and_go_away():
    torch.manual_seed(0)
    net = MLP()
    model = NNsight(net)
    x = torch.randn(2, 4)
    seen = []

    def double(output, path):
        seen.append(path)
        return output * 2

    def zero_first_input(inputs, path):
        args, kwargs = inputs
        return (torch.zeros_like(args[0]), *args[1:]), kwargs

    plain = net(x)
    with HookHandler(model, ["fc1", "model.head"], output_hook=double):
        hooked = model(x)
        with model.trace(x):
            hidden = model.fc1.output.save()
            traced = model.output.save()
    expected = net.head(torch.relu(net.fc2(torch.relu(net.fc1(x) * 2)))) * 2
    assert torch.allclose(hooked, expected) and torch.allclose(traced, expected)
    assert torch.allclose(hidden, net.fc1(x) * 2)
    assert seen[:2] == ["model.fc1", "model.head"]
    assert torch.equal(model(x), plain)

    with HookHandler(model, ["fc2"], input_hook=zero_first_input):
        zeroed = model(x)
    assert torch.allclose(zeroed, net.head(torch.relu(net.fc2.bias.expand(2, 8))))
    assert torch.equal(model(x), plain)


def test_hooks_are_removed_after_an_error():
    net = MLP()
    model = NNsight(net)
    x = torch.randn(2, 4)
    plain = net(x)

    def broken(output, path):
        raise KeyError(path)

    with pytest.raises(KeyError, match="model.fc2"):
        with HookHandler(model, ["fc2"], output_hook=broken):
            model(x)
    assert torch.equal(model(x), plain)
    with pytest.raises(AttributeError):
        HookHandler(model, ["nope"], output_hook=broken)


def test_nested_handlers_on_one_module_stack_and_remove_only_their_own():
    torch.manual_seed(0)
    net = MLP()
    model = NNsight(net)
    x = torch.randn(2, 4)
    plain = net(x)
    add_one = HookHandler(model, ["fc1"], output_hook=lambda out, path: out + 1)
    double = HookHandler(model, ["fc1"], output_hook=lambda out, path: out * 2)

    def rest(hidden):
        return net.head(torch.relu(net.fc2(torch.relu(hidden))))

    with add_one:
        with double:  # the inner runs after the outer, like torch hooks registered in that order
            both = model(x)
        outer_only = model(x)
    assert torch.allclose(both, rest((net.fc1(x) + 1) * 2))
    assert torch.allclose(outer_only, rest(net.fc1(x) + 1))
    assert torch.equal(model(x), plain)
    with add_one:
        with double:
            pass
        with double:  # leaving the first inner block removed nothing of the outer
            again = model(x)
    assert torch.allclose(again, both)
    assert torch.equal(model(x), plain)
