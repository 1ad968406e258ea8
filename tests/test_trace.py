"""Reading, editing and replacing values in a trace, checked against plain PyTorch."""

from __future__ import annotations

import torch

import nnsight_fast
from nnsight_fast import NNsight, _native

from models import MLP, CalledTwice, Nested, Structured


def make(net_class, device, **kwargs):
    torch.manual_seed(0)
    net = net_class(**kwargs).to(device)
    return net, NNsight(net)


def test_save_output_and_final_output(device):
    net, model = make(MLP, device)
    x = torch.randn(5, 4, device=device)
    with model.trace(x):
        hidden = model.fc1.output.save()
        out = model.output.save()
    assert torch.equal(hidden, net.fc1(x))
    assert torch.equal(out, net(x))


def test_input_and_inputs(device):
    net, model = make(MLP, device)
    x = torch.randn(2, 4, device=device)
    with model.trace(x):
        first = model.fc2.input.save()
        args, kwargs = model.fc2.inputs
        all_inputs = model.fc2.inputs.save()
    expected = torch.relu(net.fc1(x))
    assert torch.equal(first, expected)
    assert all_inputs[1] == {} and torch.equal(all_inputs[0][0], expected)


def test_in_place_edit_changes_the_running_model(device):
    net, model = make(MLP, device)
    x = torch.randn(3, 4, device=device)
    with model.trace(x):
        model.act.output[:, :2] = 0
        out = model.output.save()
    h = torch.relu(net.fc1(x))
    h[:, :2] = 0
    assert torch.allclose(out, net.head(torch.relu(net.fc2(h))))


def test_assignment_replaces_the_value(device):
    net, model = make(MLP, device)
    x = torch.randn(3, 4, device=device)
    with model.trace(x):
        model.fc2.output = model.fc2.output * 2
        seen = model.fc2.output.save()
        out = model.output.save()
    expected_hidden = net.fc2(torch.relu(net.fc1(x))) * 2
    assert torch.allclose(seen, expected_hidden)
    assert torch.allclose(out, net.head(torch.relu(expected_hidden)))


def test_assign_input(device):
    net, model = make(MLP, device)
    x = torch.randn(3, 4, device=device)
    with model.trace(x):
        model.head.input = torch.zeros(3, 8, device=device)
        out = model.output.save()
    assert torch.allclose(out, net.head.bias.expand(3, 3))


def test_reading_twice_in_one_visit_gives_the_same_object(device):
    _, model = make(MLP, device)
    x = torch.randn(1, 4, device=device)
    with model.trace(x):
        a = model.fc1.output.save()
        b = model.fc1.output.save()
    assert a is b


def test_nested_modules_and_module_list(device):
    net, model = make(Nested, device)
    x = torch.randn(2, 4, device=device)
    with model.trace(x):
        states = [model.blocks[i].output.save() for i in range(len(model.blocks) - 1)]
        inner = model.blocks[-1].inner.output.save()
        states.append(model.blocks[-1].output)
        states.save()  # a container is written back only when saved itself
    h = net.embed(x)
    expected = []
    for block in net.blocks:
        h_in = h
        h = block(h)
        expected.append(h)
    assert all(torch.allclose(s, e) for s, e in zip(states, expected))
    assert torch.allclose(inner, net.blocks[-1].inner(h_in))


def test_module_called_twice(device):
    net, model = make(CalledTwice, device)
    x = torch.randn(2, 4, device=device)
    with model.trace(x):
        first = model.shared.output.save()
        second = model.shared.next().output.save()
    assert torch.allclose(first, net.shared(x))
    assert torch.allclose(second, net.shared(torch.tanh(net.shared(x))))
    with model.trace(x):  # the step as a keyword, counted from the body's start
        again = model.shared.next(step=1).output.save()
    assert torch.equal(again, second)


def test_edit_second_call_of_a_module(device):
    net, model = make(CalledTwice, device)
    x = torch.randn(2, 4, device=device)
    with model.trace(x):
        model.shared.next().output[:] = 0
        out = model.output.save()
    assert torch.allclose(out, net.last.bias.expand(2, 2))


def test_tuple_dict_and_keyword_only(device):
    net, model = make(Structured, device)
    x = torch.randn(3, 4, device=device)
    with model.trace(x):
        h, g = model.tuple_out.output
        h = h.save()
        pair = model.dict_out.output["pair"].save()
        args, kwargs = model.kw.inputs
        scale = kwargs["scale"]
        scale = nnsight_fast.save(scale)
        model.kw.inputs = (args, {**kwargs, "scale": 0.0})
        out = model.output.save()
    expected_h = net.tuple_out.proj(x)
    assert torch.allclose(h, expected_h)
    d = net.dict_out(expected_h * torch.sigmoid(expected_h))
    assert torch.allclose(pair.gate, d["pair"].gate) and type(pair).__name__ == "Pair"
    assert scale == 2.0
    assert torch.allclose(out, d["pair"].hidden)


def test_edit_inside_tuple_output(device):
    net, model = make(Structured, device)
    x = torch.randn(3, 4, device=device)
    with model.trace(x):
        model.tuple_out.output[1][:] = 1.0
        out = model.output.save()
    h = net.tuple_out.proj(x)
    d = net.dict_out(h)
    assert torch.allclose(out, net.kw(d["hidden"] + d["pair"].gate, scale=2.0, bias=d["pair"].hidden))


def test_skip_uses_the_replacement(device):
    net, model = make(MLP, device)
    x = torch.randn(2, 4, device=device)
    with model.trace(x):
        model.fc2.skip(model.fc2.input)
        skipped = model.fc2.output.save()
        out = model.output.save()
    h = torch.relu(net.fc1(x))
    assert torch.equal(skipped, h)
    assert torch.allclose(out, net.head(torch.relu(h)))


def test_unsaved_values_are_not_written_back(device):
    _, model = make(MLP, device)
    x = torch.randn(2, 4, device=device)
    before = "kept"
    with model.trace(x):
        before = model.fc1.output
        never = model.fc2.output
        kept = model.head.output.save()
    assert before == "kept"
    assert "never" not in dir()
    assert kept.shape == (2, 3)


def test_stop_ends_early_and_keeps_saved(device):
    calls = []
    net, model = make(MLP, device)
    net.head.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(2, 4, device=device)
    with model.trace(x) as tracer:
        hidden = model.fc1.output.save()
        tracer.stop()
    assert torch.equal(hidden, net.fc1(x))
    assert calls == []


def test_result_and_root_input(device):
    net, model = make(MLP, device)
    x = torch.randn(2, 4, device=device)
    with model.trace(x) as tracer:
        given = model.input.save()
        result = tracer.result.save()
    assert given is x
    assert torch.equal(result, net(x))


def test_plain_python_control_flow_on_real_values(device):
    net, model = make(MLP, device)
    x = torch.randn(4, 4, device=device)
    with model.trace(x):
        hidden = model.act.output
        if hidden.sum() > 0:
            branch = nnsight_fast.save("positive")
        else:
            branch = nnsight_fast.save("negative")
        norms = [float(row.detach().norm()) for row in hidden]
        norms = nnsight_fast.save(norms)
    h = torch.relu(net.fc1(x))
    assert branch == ("positive" if h.sum() > 0 else "negative")
    assert norms == [float(r.detach().norm()) for r in h]


def test_empty_invoke_sees_the_whole_batch(device):
    net, model = make(MLP, device)
    x = torch.randn(3, 4, device=device)
    with model.trace() as tracer:
        with tracer.invoke(x):
            model.fc1.output[:] = 0
            a = model.fc1.output.save()
        with tracer.invoke():
            b = model.fc1.output.save()  # runs after the first invoke: sees its edit
            out = model.output.save()
    assert torch.equal(a, torch.zeros(3, 8, device=device))
    assert b is not None and torch.equal(b, a)
    assert torch.allclose(out, net.head(torch.relu(net.fc2(torch.zeros(3, 8, device=device)))))


def test_capture_in_methods_and_nested_functions(device):
    net, model = make(MLP, device)
    x = torch.randn(2, 4, device=device)

    class Probe:
        def __init__(self, wrapped):
            self.model = wrapped

        def hidden(self, inputs):
            with self.model.trace(inputs):
                h = self.model.fc1.output.save()
            return h

    def outer(scale):
        def inner():
            with model.trace(x):
                h = (model.fc1.output * scale).save()
            return h

        return inner()

    assert torch.equal(Probe(model).hidden(x), net.fc1(x))
    assert torch.allclose(outer(3.0), net.fc1(x) * 3.0)


def test_variables_and_comprehensions_see_the_caller(device):
    net, model = make(Nested, device)
    x = torch.randn(2, 4, device=device)
    count = 0
    with model.trace(x):
        count = count + 1
        states = [model.blocks[i].norm.output for i in range(2)]
        total = nnsight_fast.save(sum(s.sum() for s in states))
    assert count == 0  # not saved: not written back
    h1 = net.blocks[0](net.embed(x))
    assert torch.allclose(total, h1.sum() + net.blocks[1](h1).sum())


def test_grad_mode_of_the_caller_reaches_the_body(device):
    _, model = make(MLP, device)
    x = torch.randn(2, 4, device=device)
    with torch.no_grad():
        with model.trace(x):
            inside = nnsight_fast.save(torch.is_grad_enabled())
            hidden = model.fc1.output.save()
    assert inside is False and hidden.grad_fn is None
    with torch.inference_mode():
        with model.trace(x):
            inference = nnsight_fast.save(torch.is_inference_mode_enabled())
    assert inference is True


def test_wrapped_model_outside_a_trace_is_the_plain_model(device):
    net, model = make(MLP, device)
    x = torch.randn(2, 4, device=device)
    assert torch.equal(net(x), model(x))
    assert _native.is_gate(net.fc1.__dict__["forward"])
    assert net.fc1.forward.__name__ == "forward"  # the Gate passes for the bound method it wraps


def test_tree_access_and_printing(device):
    net, model = make(Nested, device)
    assert len(model.blocks) == 3
    assert [e.path for e in model.blocks] == [f"model.blocks.{i}" for i in range(3)]
    assert model.blocks[-1].path == "model.blocks.2"
    assert model.embed.weight is net.embed.weight
    text = repr(model)
    assert "Nested(" in text and "(blocks): ModuleList" in text and "LayerNorm" in text


def test_save_of_plain_python_values(device):
    _, model = make(MLP, device)
    x = torch.randn(2, 4, device=device)
    with model.trace(x):
        shape = model.fc1.output.shape.save()
        label = "done".save()
    assert shape == (2, 8) and label == "done"


def test_sequential_outputs_in_a_saved_list():
    torch.manual_seed(0)
    seq = torch.nn.Sequential(*(torch.nn.Linear(6, 6) for _ in range(4)))
    model = NNsight(seq)
    x = torch.randn(2, 6)
    with model.trace(x):
        outs = nnsight_fast.save([model[i].output for i in range(4)])
    h = x
    for layer, out in zip(seq, outs):
        h = layer(h)
        assert torch.equal(out, h)


def test_a_wrapped_module_can_be_deep_copied_and_pickled(device, tmp_path):
    import copy

    net, model = make(MLP, device)
    x = torch.randn(2, 4, device=device)
    clone = copy.deepcopy(net)
    assert not _native.is_gate(clone.fc1.__dict__.get("forward", clone.fc1.forward))
    assert torch.equal(clone(x), net(x))
    torch.save(net, tmp_path / "net.pt")
    loaded = torch.load(tmp_path / "net.pt", weights_only=False)
    assert torch.equal(loaded(x), net(x))
    with model.trace(x):  # the original stays wrapped
        h = model.fc1.output.save()
    assert torch.equal(h, net.fc1(x))


def test_a_trace_inside_another_trace(clean):
    """Another model traced inside a trace body keeps its saves; the same model nested in
    itself runs again, inside, and the outer trace goes on after it."""
    torch.manual_seed(0)
    net, net2 = MLP(), MLP()
    model, other = NNsight(net), NNsight(net2)
    x = torch.randn(2, 4)
    with model.trace(x):
        a = model.fc1.output.save()
        with other.trace(x * 2):
            b = other.fc1.output.save()
        c = model.output.save()
    assert torch.allclose(a, net.fc1(x)) and torch.allclose(c, net(x))
    assert torch.allclose(b, net2.fc1(x * 2))
    with model.trace(x):
        first = model.fc1.output.save()
        with model.trace(x + 1):
            inner = model.output.save()
        outer = model.output.save()
    assert torch.allclose(first, net.fc1(x))
    assert torch.allclose(inner, net(x + 1)) and torch.allclose(outer, net(x))
    clean(model, x, net(x))
    clean(other, x, net2(x))


def test_batch_size_of_a_calls_inputs():
    # NNsight's default: dim 0 of the first tensor with a dimension, positional arguments first
    from nnsight_fast.model import _batch_size
    scalar, rows3, rows5 = torch.tensor(1.0), torch.zeros(3, 2), torch.zeros(5)
    assert _batch_size((scalar, rows3), {"x": rows5}) == 3
    assert _batch_size((scalar, "text"), {"flag": True, "x": rows5}) == 5
    assert _batch_size((), {}) == 1 and _batch_size((scalar,), {}) == 1
    assert _batch_size((torch.nn.Parameter(torch.zeros(4, 1)),), {}) == 4  # tensor subclasses count
