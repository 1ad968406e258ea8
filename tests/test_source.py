"""`.source`: operations inside a forward, against plain PyTorch."""

from __future__ import annotations

import pytest
import torch

from nnsight_fast import NNsight

from source_models import Child, Looped, scale_and_shift


@pytest.fixture
def looped():
    torch.manual_seed(0)
    net = Looped()
    return net, NNsight(net)


def test_listing_names_each_operation(looped):
    net, model = looped
    text = str(model.source)
    for name in ("self_layer_0", "h_0", "h_1", "torch_chunk_0", "torch_cat_0", "scale_and_shift_0", "mixed_0",
                 "self_gate_0", "torch_relu_0"):
        assert name in text
    assert "def forward(self, x, *, shift=0.5):" in text


def test_operation_outputs_equal_plain_pytorch(looped):
    net, model = looped
    x = torch.randn(2, 4)
    with model.trace(x):
        first = model.source.self_layer_0.output.save()
        third = model.source.self_layer_0.next(2).output.save()
        chunks = model.source.torch_chunk_0.output.save()
        mixed = model.source.mixed_0.output.save()
        out = model.output.save()
    h1 = net.layer(x)
    h3 = net.layer(net.layer(h1))
    assert torch.allclose(first, h1) and torch.allclose(third, h3)
    assert torch.allclose(chunks[0], h3) and torch.allclose(chunks[1], h3 * 2)
    assert torch.allclose(mixed, scale_and_shift(h3 * 3, scale=2.0, shift=0.5))
    assert torch.allclose(out, net(x))


def test_inputs_with_keyword_arguments(looped):
    net, model = looped
    x = torch.randn(2, 4)
    with model.trace(x, shift=1.5):
        args, kwargs = model.source.scale_and_shift_0.inputs
        kwargs = kwargs.save()
        first = model.source.scale_and_shift_0.input.save()
    assert kwargs == {"scale": 2.0, "shift": 1.5}
    h3 = net.layer(net.layer(net.layer(x)))
    assert torch.allclose(first, h3 * 3)


def test_edit_assign_and_skip_operations(looped):
    net, model = looped
    x = torch.randn(2, 4)
    with model.trace(x):
        model.source.torch_relu_0.output[:] = 0
        zeroed = model.output.save()
    assert torch.allclose(zeroed, net.gate.bias.expand(2, 4))

    with model.trace(x):
        model.source.mixed_0.output = torch.ones(2, 4)
        replaced = model.output.save()
    assert torch.allclose(replaced, net.gate(torch.ones(2, 4)))

    with model.trace(x):
        model.source.self_layer_0.next(1).skip(model.source.self_layer_0.next(1).input)
        skipped = model.output.save()
    h = net.layer(x)
    h = net.layer(h)  # the second call is skipped: the third gets the first's output... twice applied once
    expected = net.gate(torch.relu(scale_and_shift(h * 3, scale=2.0, shift=0.5)))
    assert torch.allclose(skipped, expected)


def test_nested_source_of_a_helper_function(looped):
    net, model = looped
    x = torch.randn(2, 4)
    with model.trace(x):
        doubled = model.source.scale_and_shift_0.source.doubled_0.output.save()
        model.source.scale_and_shift_0.source.torch_tanh_0.output[:] = 0
        out = model.output.save()
    h3 = net.layer(net.layer(net.layer(x)))
    assert torch.allclose(doubled, h3 * 3 * 2.0)
    assert torch.allclose(out, net.gate(torch.relu(torch.zeros(2, 4) + 0.5)))


def test_nested_source_of_a_submodule_call(looped):
    net, model = looped
    x = torch.randn(2, 4)
    with model.trace(x):
        inner = model.source.self_gate_0.source.F_linear_0.output.save()
    h3 = net.layer(net.layer(net.layer(x)))
    assert torch.allclose(inner, net(x))
    assert torch.allclose(inner, net.gate(torch.relu(scale_and_shift(h3 * 3, scale=2.0, shift=0.5))))


def test_zero_argument_super_in_a_rewritten_forward():
    torch.manual_seed(0)
    net = Child()
    model = NNsight(net)
    x = torch.randn(2, 4)
    with model.trace(x):
        parent = model.source.forward_0.output.save()
        out = model.output.save()
    assert torch.allclose(parent * 3, out) and torch.allclose(out, net(x))


def test_errors(looped, clean):
    net, model = looped
    x = torch.randn(2, 4)
    with pytest.raises(AttributeError, match="has no operation 'nope'; available: .*self_layer_0"):
        model.source.nope
    with pytest.raises(ValueError, match="outside of interleaving"):
        model.source.mixed_0.output
    with pytest.raises(ValueError, match="only available inside a trace"):
        model.source.torch_relu_0.source
    with pytest.raises(TypeError, match="has no Python source"):
        with model.trace(x):
            model.source.torch_relu_0.source
    clean(model, x, net(x))


def test_gpt2_attention_operations(lm):
    lm.dispatch()
    attn = lm._module.transformer.h[0].attn
    seen = {}
    handles = [attn.c_attn.register_forward_hook(lambda m, a, o: seen.setdefault("c_attn", o)),
               attn.c_proj.register_forward_hook(lambda m, a, o: seen.setdefault("c_proj_in", a[0]))]
    prompt = "The Eiffel Tower is in the city of"
    try:
        with torch.no_grad():
            lm._module(**lm.tokenizer(prompt, return_tensors="pt"))
    finally:
        for h in handles:
            h.remove()
    source = lm.transformer.h[0].attn.source
    assert "attention_interface_1" in str(source) and "split_1" in str(source)
    with lm.trace(prompt):
        qkv = lm.transformer.h[0].attn.source.self_c_attn_1.output.save()
        split = lm.transformer.h[0].attn.source.split_1.output.save()
        attn_out, weights = lm.transformer.h[0].attn.source.attention_interface_1.output
        attn_out = attn_out.save()
        merged = lm.transformer.h[0].attn.source.attn_output_0.output.save()
    assert torch.allclose(qkv, seen["c_attn"], atol=1e-6)
    assert torch.allclose(torch.cat(split, dim=-1), qkv)
    assert torch.allclose(merged, seen["c_proj_in"], atol=1e-6)
    assert attn_out.shape[0] == 1


def test_source_built_before_the_weights_load(gpt2_folder):
    from nnsight_fast import LanguageModel

    model = LanguageModel(gpt2_folder)
    assert "attention_interface_1" in str(model.transformer.h[2].attn.source)
    with model.trace("Hello there"):
        out = model.transformer.h[2].attn.source.self_c_proj_0.output.save()
        attn = model.transformer.h[2].attn.output[0].save()
    assert model.dispatched and torch.allclose(out, attn)  # resid_dropout is the identity in eval


def test_gpt2_operations_per_step_and_per_invoke(lm):
    with lm.generate("The Eiffel Tower", max_new_tokens=3, do_sample=False) as tracer:
        steps = [].save()
        for step in tracer.all():
            steps.append(lm.transformer.h[1].attn.source.self_c_proj_0.output)
    assert len(steps) == 3 and steps[0].shape[1] > 1 and steps[1].shape[1] == 1

    prompts = ["The Eiffel Tower is in the city of", "Hello"]
    with lm.trace() as tracer:
        with tracer.invoke(prompts[0]):
            lm.transformer.h[1].attn.source.self_c_proj_0.output[:] = 0
            first = lm.transformer.h[1].attn.output[0].save()
        with tracer.invoke(prompts[1]):
            second = lm.transformer.h[1].attn.source.self_c_proj_0.output.save()
    assert torch.all(first == 0)
    assert second.shape[0] == 1 and not torch.all(second == 0)


def test_assign_an_operations_input(looped):
    net, model = looped
    x = torch.randn(2, 4)
    with model.trace(x):
        model.source.torch_relu_0.input = torch.ones(2, 4)
        out = model.output.save()
    assert torch.allclose(out, net.gate(torch.ones(2, 4)))


def test_source_operation_after_a_submodule_request_in_the_same_forward(lm):
    """Editing a submodule's output, then reading an operation of its parent's forward that runs
    after it: the parent's rewritten forward was chosen before the parent started."""
    str(lm.transformer.h[0].attn.source)
    prompt = "The Eiffel Tower is in the city of"
    with lm.trace(prompt):
        lm.transformer.h[0].attn.c_attn.output = torch.zeros_like(lm.transformer.h[0].attn.c_attn.output)
        split = lm.transformer.h[0].attn.source.split_1.output.save()
    assert all(torch.equal(piece, torch.zeros_like(piece)) for piece in split)
    with lm.trace(prompt):  # and without the edit, the same operation is the real split of c_attn's output
        qkv = lm.transformer.h[0].attn.c_attn.output.save()
        split = lm.transformer.h[0].attn.source.split_1.output.save()
    assert torch.equal(torch.cat(split, dim=-1), qkv)
