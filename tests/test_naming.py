"""rename=, envoys=, get/modules, trace=False, attached modules, overloaded names, several wrappers."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import nn

from nnsight_fast import Envoy, NNsight

from models import MLP, Nested


class Named(nn.Module):
    """Has submodules named `output` and `input`, like BERT's."""

    def __init__(self):
        super().__init__()
        self.input = nn.Linear(4, 4)
        self.output = nn.Linear(4, 2)

    def forward(self, x):
        return self.output(torch.relu(self.input(x)))


class MarkedEnvoy(Envoy):
    marked = True


def test_rename_plain_dotted_and_lists():
    torch.manual_seed(0)
    net = Nested()
    model = NNsight(net, rename={"inner": "proj", ".blocks": ["layers", "stack"], ".blocks.0.norm": "first_norm"})
    assert model.layers is model.blocks and model.stack is model.blocks
    assert model.blocks[1].proj is model.blocks[1].inner
    assert model.first_norm is model.blocks[0].norm
    x = torch.randn(2, 4)
    with model.trace(x) as tracer:
        cache = tracer.cache(modules=["model.layers.1"])
        hidden = model.layers[1].proj.output.save()
    h0 = net.blocks[0](net.embed(x))
    assert torch.allclose(hidden, net.blocks[1].inner(h0))
    assert torch.allclose(cache["model.layers.1"].output, net.blocks[1](h0))
    assert torch.allclose(cache.model.stack[1].output, net.blocks[1](h0))


def test_envoy_classes_by_type_by_suffix_and_for_all():
    net = Nested()
    by_type = NNsight(net, envoys={nn.LayerNorm: MarkedEnvoy})
    assert isinstance(by_type.blocks[0].norm, MarkedEnvoy) and not isinstance(by_type.embed, MarkedEnvoy)
    by_suffix = NNsight(Nested(), envoys={"blocks.1.inner": MarkedEnvoy})
    assert isinstance(by_suffix.blocks[1].inner, MarkedEnvoy) and not isinstance(by_suffix.blocks[0].inner, MarkedEnvoy)
    aliased = NNsight(Nested(), rename={"inner": "proj"}, envoys={"proj": MarkedEnvoy})
    assert all(isinstance(b.inner, MarkedEnvoy) for b in aliased.blocks)
    everything = NNsight(Nested(), envoys=MarkedEnvoy)
    assert isinstance(everything.blocks[2].norm, MarkedEnvoy)


class MarkedModel(NNsight):
    envoys = {nn.LayerNorm: MarkedEnvoy}


def test_envoy_classes_as_a_class_attribute_and_the_argument_wins():
    model = MarkedModel(Nested())
    assert isinstance(model.blocks[0].norm, MarkedEnvoy) and not isinstance(model.embed, MarkedEnvoy)
    overridden = MarkedModel(Nested(), envoys={nn.Linear: MarkedEnvoy})
    assert isinstance(overridden.embed, MarkedEnvoy) and not isinstance(overridden.blocks[0].norm, MarkedEnvoy)


def test_the_interleaver_is_shared_and_freed_with_the_model():
    net = Nested()
    model = NNsight(net)
    interleaver = model.interleaver
    assert model.blocks[1].inner.interleaver is interleaver
    x = torch.randn(2, 4)
    with model.trace(x):
        during = model.blocks[0].interleaving.save()
        out = model.output.save()
    assert during is True and model.interleaving is False
    ref = weakref.ref(interleaver)
    del model, interleaver
    assert ref() is None


def test_get_modules_and_devices():
    net = Nested()
    model = NNsight(net)
    assert model.get("blocks.0.inner") is model.blocks[0].inner
    assert model.get("model.blocks.1") is model.blocks[1]
    paths = [path for path, _ in model.named_modules()]
    assert paths[0] == "model" and "model.blocks.2.norm" in paths and len(paths) == len(list(net.modules()))
    linears = model.modules(include_fn=lambda e: isinstance(e._module, nn.Linear))
    assert len(linears) == 5
    assert model.device == torch.device("cpu") and model.devices == {torch.device("cpu")}
    assert model.to("cpu") is model
    x = torch.randn(2, 4)
    with model.trace(x):
        via_get = model.get("blocks.0.inner.output").save()
    assert torch.allclose(via_get, net.blocks[0].inner(net.embed(x)))


def test_trace_false_runs_once():
    torch.manual_seed(0)
    net = MLP()
    model = NNsight(net)
    x = torch.randn(2, 4)
    assert torch.equal(model.trace(x, trace=False), net(x))


def test_submodules_named_like_envoy_attributes():
    torch.manual_seed(0)
    net = Named()
    with pytest.warns(UserWarning, match="has a submodule named 'output'.*model.E_output"):
        model = NNsight(net)
    x = torch.randn(2, 4)
    with model.trace(x):
        first = model.E_input.output.save()
        last_in = model.E_output.input.save()
        out = model.output.save()
    assert torch.allclose(first, net.input(x)) and torch.allclose(last_in, torch.relu(net.input(x)))
    assert torch.allclose(out, net(x))


def test_attached_module_observed_with_hook():
    torch.manual_seed(0)
    net = MLP()
    model = NNsight(net)
    model.fc2.sae = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
    x = torch.randn(2, 4)
    with model.trace(x) as tracer:
        cache = tracer.cache(modules=[model.fc2.sae[1]])
        hidden = model.fc2.output
        plain = model.fc2.sae(hidden)              # untraced: the cache does not see it
        observed = model.fc2.sae(hidden, hook=True)  # through the dispatcher
        observed = observed.save()
    sae = net.fc2.sae
    h = net.fc2(torch.relu(net.fc1(x)))
    assert torch.allclose(observed, sae(h))
    assert torch.allclose(cache["model.fc2.sae.1"].output, torch.relu(sae[0](h)))


def test_two_wrappers_on_one_module():
    torch.manual_seed(0)
    net = MLP()
    first, second = NNsight(net), NNsight(net)
    x = torch.randn(2, 4)
    with first.trace(x):
        a = first.fc1.output.save()
    with second.trace(x):
        second.fc1.output[:] = 0
        b = second.output.save()
    with first.trace(x):
        c = first.output.save()
    assert torch.allclose(a, net.fc1(x))
    assert torch.allclose(b, net.head(torch.relu(net.fc2(torch.zeros(2, 8)))))
    assert torch.allclose(c, net(x))


def test_assigning_values_through_an_envoy_subclass():
    torch.manual_seed(0)
    net = MLP()
    model = NNsight(net, envoys=MarkedEnvoy)
    x = torch.randn(2, 4)
    with model.trace(x):
        model.fc2.output = torch.zeros(2, 8)
        out = model.output.save()
    assert isinstance(model.fc2, MarkedEnvoy) and "output" not in vars(net.fc2)
    assert torch.allclose(out, net.head(torch.zeros(2, 8)))


def test_a_bare_envoy_takes_rename_and_envoys():
    envoy = Envoy(Nested(), rename={"inner": "proj"}, envoys={nn.LayerNorm: MarkedEnvoy})
    assert envoy.blocks[0].proj is envoy.blocks[0].inner
    assert isinstance(envoy.blocks[0].norm, MarkedEnvoy)


def test_a_bare_envoy_mirrors_any_module():
    """`Envoy(module)` alone (no NNsight around it) mirrors the tree and runs the module unchanged."""
    torch.manual_seed(0)
    net = MLP()
    reference = MLP()
    reference.load_state_dict(net.state_dict())
    envoy = Envoy(net)
    x = torch.randn(3, 4)
    assert envoy.path == "model" and envoy.fc1._module is net.fc1
    assert [e.path for e in envoy.modules()] == ["model", "model.fc1", "model.act", "model.fc2", "model.act2", "model.head"]
    assert torch.equal(envoy(x), reference(x))
    assert torch.equal(envoy.fc1.weight, net.fc1.weight)
    linear = Envoy(nn.Linear(2, 2))
    assert linear(torch.ones(1, 2)).shape == (1, 2)


def _gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100,
                                                                n_positions=32)).eval()


@pytest.mark.parametrize("rename, found, missing", [
    # each case as nnsight 0.8.1 resolves it
    ({".h": "layers"}, {"transformer.layers": "model.transformer.h"}, ["layers"]),
    ({"h": "layers"}, {"transformer.layers": "model.transformer.h"}, ["layers"]),
    ({"transformer": "model", "h.0": "first_layer", "1": "second_layer"},
     {"model.first_layer": "model.transformer.h.0", "model.h.second_layer": "model.transformer.h.1",
      "transformer.h.0": "model.transformer.h.0"}, ["first_layer"]),
    ({".transformer": ["tf", "body"]}, {"tf": "model.transformer", "body.h": "model.transformer.h"}, []),
    ({"attn": "attention"}, {"transformer.h.1.attention": "model.transformer.h.1.attn"}, []),
    ({"transformer.h": "blocks"}, {"blocks": "model.transformer.h"}, ["transformer.blocks"]),
    ({".transformer.h.0.attn": "first_attn"}, {"first_attn": "model.transformer.h.0.attn"}, ["transformer.first_attn"]),
    ({"transformer.h": "transformer.blocks"}, {"transformer.blocks": "model.transformer.h"}, ["blocks"]),
    # the envoy seed: a leading-dot alias mounts on the root (nnsight 0.8.1 refuses it)
    ({".transformer.h": ".layers"}, {"layers": "model.transformer.h", "layers.0": "model.transformer.h.0"}, []),
    ({"nothing_here": "x"}, {}, ["x"]),  # a key that names nothing is skipped
])
def test_rename_cases(rename, found, missing):
    model = NNsight(_gpt2(), rename=rename)

    def resolve(path):
        envoy = model
        for part in path.split("."):
            envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
        return envoy.path

    for alias, real in found.items():
        assert resolve(alias) == real, alias
    for alias in missing:
        with pytest.raises((AttributeError, IndexError)):
            resolve(alias)


def test_rename_errors_leave_the_module_as_it_was():
    net = _gpt2()
    with pytest.raises(ValueError, match="names no ancestor"):
        NNsight(net, rename={"h": "transformer.blocks"})
    with pytest.raises(ValueError, match="2 modules match"):
        NNsight(net, rename={"c_attn": ".qkv"})
    assert all("forward" not in module.__dict__ for module in net.modules())  # no Gate left behind
    model = NNsight(net)
    assert all("forward" in module.__dict__ for module in net.modules())


def test_aliases_in_a_cache_and_in_a_trace():
    net = _gpt2()
    model = NNsight(net, rename={"transformer": "model", "h.0": "first_layer", "1": "second_layer"})
    ids = torch.randint(0, 100, (1, 6))
    with model.trace(ids) as tracer:
        cache = tracer.cache()
        first = model.model.first_layer.output.save()
    outputs = []
    handle = net.transformer.h[0].register_forward_hook(lambda m, a, out: outputs.append(out) and None)
    with torch.no_grad():
        net(ids)
    handle.remove()
    seen = outputs[0][0] if isinstance(outputs[0], tuple) else outputs[0]
    first = first[0] if isinstance(first, tuple) else first
    assert torch.allclose(first, seen, atol=1e-5)
    real_first = cache["model.transformer.h.0"].output
    assert cache.model.model.first_layer.output is real_first
    assert cache["model.model.h.second_layer"] is cache["model.transformer.h.1"]
    assert "model.model.first_layer" in cache
