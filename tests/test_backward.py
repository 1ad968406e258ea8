"""Gradients in a trace: `with loss.backward():`, reading and assigning `.grad`."""

from __future__ import annotations

import pytest
import torch

from nnsight_fast import NNsight, OutOfOrderError

from models import MLP


def make():
    torch.manual_seed(0)
    net = MLP()
    return net, NNsight(net)


def plain_grads(net, x, scale_hidden_grad=None):
    h = net.fc1(x)
    h.retain_grad()
    a = torch.relu(h)
    if scale_hidden_grad is not None:
        a.register_hook(lambda g: g * scale_hidden_grad)
    out = net.head(torch.relu(net.fc2(a)))
    out.retain_grad()
    out.sum().backward()
    return h.grad, out.grad


def test_read_gradients_in_reverse_order():
    net, model = make()
    x = torch.randn(3, 4)
    with model.trace(x):
        hidden = model.fc1.output
        loss = model.output.sum()
        with loss.backward():
            out_grad = model.output.grad.save()
            hidden_grad = hidden.grad.save()
    expected_hidden, expected_out = plain_grads(net, x)
    assert torch.allclose(out_grad, expected_out) and torch.allclose(hidden_grad, expected_hidden)


def test_assign_a_gradient():
    net, model = make()
    x = torch.randn(3, 4)
    with model.trace(x):
        first = model.fc1.output
        activation = model.act.output
        loss = model.output.sum()
        with loss.backward():
            activation.grad = activation.grad * 3
            hidden_grad = first.grad.save()
    expected_hidden, _ = plain_grads(net, x, scale_hidden_grad=3)
    assert torch.allclose(hidden_grad, expected_hidden)


def test_wrong_order_is_out_of_order(clean):
    net, model = make()
    x = torch.randn(3, 4)
    with pytest.raises(OutOfOrderError, match="reverse order"):
        with model.trace(x):
            hidden = model.fc1.output
            loss = model.output.sum()
            with loss.backward():
                early = hidden.grad
                late = model.output.grad
    clean(model, x, net(x))


def test_a_tensor_without_grad_is_a_clear_error(clean):
    net, model = make()
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="does not require grad"):
        with model.trace(x):
            loss = model.output.sum()
            with loss.backward():
                x.grad
    clean(model, x, net(x))


def test_plain_backward_calls_are_untouched():
    net, model = make()
    x = torch.randn(3, 4)
    with model.trace(x):
        loss = model.output.sum()
        loss.backward()  # not a `with`: runs at once, as in plain PyTorch
        weight_grad = net.fc1.weight.grad.clone().save()
    net.zero_grad()
    net(x).sum().backward()
    assert torch.allclose(weight_grad, net.fc1.weight.grad)
    net.fc1.weight.grad = None
    assert net.fc1.weight.grad is None
