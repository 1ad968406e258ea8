"""tracer.cache(): post-edit values of modules, copied in the native dispatcher."""

from __future__ import annotations

import pytest
import torch

from nnsight_fast import NNsight

from models import MLP


def test_cache_every_module_output(device):
    torch.manual_seed(0)
    net = MLP().to(device)
    model = NNsight(net)
    x = torch.randn(2, 4, device=device)
    with model.trace(x) as tracer:
        cache = tracer.cache()
        model.act.output[:] = 0  # an edit the cache sees
    h = net.fc1(x)
    assert torch.equal(cache["model.fc1"].output, h.to("cpu"))
    assert torch.equal(cache["model.act"].output, torch.zeros(2, 8))
    assert torch.equal(cache.model.head.output, net.head(torch.relu(net.fc2(torch.zeros(2, 8, device=device)))).cpu())
    assert cache["model"].output.device.type == "cpu" and cache["model.fc2"].output.grad_fn is None
    assert set(cache.keys()) == {"model", "model.fc1", "model.act", "model.fc2", "model.act2", "model.head"}


def test_cache_chosen_modules_inputs_dtype_and_no_detach():
    torch.manual_seed(0)
    net = MLP()
    model = NNsight(net)
    x = torch.randn(2, 4)
    with model.trace(x) as tracer:
        cache = tracer.cache(modules=[model.fc2, "model.head"], dtype=torch.float16, detach=False,
                             include_inputs=True)
    assert set(cache.keys()) == {"model.fc2", "model.head"}
    entry = cache["model.fc2"]
    assert entry.output.dtype == torch.float16
    assert torch.allclose(entry.input.float(), torch.relu(net.fc1(x)), atol=1e-2)
    assert entry.inputs[1] == {}
    assert entry.output.grad_fn is not None  # detach=False keeps the graph


def test_cache_declared_after_a_read_is_refused(clean):
    net = MLP()
    model = NNsight(net)
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="must be declared before"):
        with model.trace(x) as tracer:
            hidden = model.fc1.output
            cache = tracer.cache()
    clean(model, x, net(x))


def test_cache_over_generation_steps(lm):
    with lm.generate("The Eiffel Tower", max_new_tokens=3, do_sample=False) as tracer:
        cache = tracer.cache(modules=[lm.transformer.h[0], lm.lm_head])
    steps = cache["model.lm_head"].output  # nnsight: one entry, its .output the per-step list
    assert isinstance(steps, list) and len(steps) == 3
    assert steps[1].shape[1] == 1
    assert len(cache.model.transformer.h[0].output) == 3
    assert torch.equal(cache["model.lm_head"].output[0], cache.model.lm_head.output[0])


def test_cache_per_invoke_rows(lm):
    prompts = ["The Eiffel Tower is in the city of", "Hello"]
    with lm.trace() as tracer:
        with tracer.invoke(prompts[0]):
            first = tracer.cache(modules=["model.lm_head"])
        with tracer.invoke(prompts[1]):
            second = tracer.cache(modules=["model.lm_head"])
    batch = lm.tokenizer(prompts, return_tensors="pt", padding=True)
    positions = (batch["attention_mask"].cumsum(-1) - 1).masked_fill(batch["attention_mask"] == 0, 1)
    with torch.no_grad():  # left padding: positions counted over the attended tokens, as generate does
        logits = lm._module(**batch, position_ids=positions).logits
    assert torch.allclose(first["model.lm_head"].output, logits[:1], atol=1e-5)
    assert torch.allclose(second["model.lm_head"].output, logits[1:], atol=1e-5)
    with torch.no_grad():  # and the short prompt's tokens as it gives them alone
        alone = lm._module(**lm.tokenizer(prompts[1], return_tensors="pt")).logits
    width = alone.shape[1]
    assert torch.allclose(second["model.lm_head"].output[:, -width:], alone, atol=1e-4)


def test_cache_inputs_over_generation_steps_match_hooks(lm):
    """`.output`, `.inputs` and `.input` of a generation cache are per-step lists, equal to what
    raw hooks see on the same `generate`."""
    with lm.generate("The Eiffel Tower", max_new_tokens=3, do_sample=False) as tracer:
        cache = tracer.cache(modules=[lm.transformer.h[1]], include_inputs=True)
    net = lm._module
    seen_inputs, seen_outputs = [], []
    def record(module, args, out):
        seen_inputs.append(args[0].detach())
        seen_outputs.append(out)

    handle = net.transformer.h[1].register_forward_hook(record)
    try:
        ids = lm.tokenizer("The Eiffel Tower", return_tensors="pt")
        net.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    finally:
        handle.remove()
    entry = cache["model.transformer.h.1"]
    assert len(entry.output) == len(entry.inputs) == len(entry.input) == 3
    for got, expected in zip(entry.input, seen_inputs):
        assert torch.allclose(got, expected, atol=1e-6)
    for got, expected in zip(entry.output, seen_outputs):
        expected = expected[0] if isinstance(expected, tuple) else expected
        got = got[0] if isinstance(got, tuple) else got
        assert torch.allclose(got, expected, atol=1e-6)
