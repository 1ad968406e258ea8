"""Several invokes share one batch: each sees and edits only its own rows."""

from __future__ import annotations

import torch

from nnsight_fast import NNsight

from models import MLP, Structured


class ConcatNNsight(NNsight):
    """A model class that batches invokes by concatenating their first argument."""

    def _batch_inputs(self, prepared):
        return (torch.cat([args[0] for args, _, _ in prepared]),), {}


def make(device, net_class=MLP):
    torch.manual_seed(0)
    net = net_class().to(device)
    return net, ConcatNNsight(net)


def test_each_invoke_sees_its_rows(device):
    net, model = make(device)
    a, b = torch.randn(2, 4, device=device), torch.randn(3, 4, device=device)
    with model.trace() as tracer:
        with tracer.invoke(a):
            ha = model.fc1.output.save()
            out_a = model.output.save()
        with tracer.invoke(b):
            hb = model.fc1.output.save()
        with tracer.invoke():
            everything = model.fc1.output.save()
    assert torch.allclose(ha, net.fc1(a)) and torch.allclose(hb, net.fc1(b))
    assert torch.allclose(out_a, net(a))
    assert everything.shape == (5, 8) and torch.allclose(everything, net.fc1(torch.cat([a, b])))


def test_in_place_edit_touches_only_the_invokes_rows(device):
    net, model = make(device)
    a, b = torch.randn(2, 4, device=device), torch.randn(3, 4, device=device)
    with model.trace() as tracer:
        with tracer.invoke(a):
            model.act.output[:] = 0
            out_a = model.output.save()
        with tracer.invoke(b):
            out_b = model.output.save()
    assert torch.allclose(out_a, net.head(torch.relu(net.fc2(torch.zeros(2, 8, device=device)))))
    assert torch.allclose(out_b, net(b))


def test_assignment_is_widened_back_into_the_batch(device):
    net, model = make(device)
    a, b = torch.randn(2, 4, device=device), torch.randn(3, 4, device=device)
    with model.trace() as tracer:
        with tracer.invoke(a):
            out_a = model.output.save()
        with tracer.invoke(b):
            model.fc2.output = model.fc2.output * 0 + 1
            out_b = model.output.save()
        with tracer.invoke():
            seen = model.fc2.output.save()
    assert torch.allclose(out_a, net(a))
    assert torch.allclose(out_b, net.head(torch.ones(3, 8, device=device)))
    assert torch.allclose(seen[2:], torch.ones(3, 8, device=device))
    assert torch.allclose(seen[:2], net.fc2(torch.relu(net.fc1(a))))


def test_narrowing_recurses_through_tuples_dicts_and_namedtuples(device):
    net, model = make(device, Structured)
    a, b = torch.randn(1, 4, device=device), torch.randn(2, 4, device=device)
    with model.trace() as tracer:
        with tracer.invoke(a):
            h_a = model.tuple_out.output[0].save()
            pair_a = model.dict_out.output["pair"].save()
        with tracer.invoke(b):
            pair_b = model.dict_out.output["pair"].save()
    assert type(pair_a).__name__ == "Pair" and pair_a.hidden.shape == (1, 4) and pair_b.gate.shape == (2, 4)
    assert torch.allclose(h_a, net.tuple_out.proj(a))
    h, g = net.tuple_out(b)
    assert torch.allclose(pair_b.gate, net.dict_out(h * g)["pair"].gate)


def test_later_invoke_sees_earlier_invokes_edit_at_the_same_location(device):
    net, model = make(device)
    a, b = torch.randn(2, 4, device=device), torch.randn(2, 4, device=device)
    with model.trace() as tracer:
        with tracer.invoke(a):
            model.fc1.output[:] = 5
        with tracer.invoke(b):
            mine = model.fc1.output.save()
        with tracer.invoke():
            whole = model.fc1.output.save()
    assert torch.allclose(mine, net.fc1(b))
    assert torch.all(whole[:2] == 5)
