"""LanguageModel: loading, inputs, invoke batching — against plain transformers."""

from __future__ import annotations

import pytest
import torch

from nnsight_fast import LanguageModel

PROMPTS = ["The Eiffel Tower is in the city of", "Hello world"]


def plain(lm, prompts, **kwargs):
    batch = lm.tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return lm._module(**batch, **kwargs)


def test_lazy_until_the_first_run(gpt2_folder):
    model = LanguageModel(gpt2_folder)
    assert not model.dispatched
    assert model.transformer.h[0].mlp.c_fc.weight.device.type == "meta"
    text = repr(model)
    assert "GPT2LMHeadModel(" in text and "(h): ModuleList" in text
    assert len(model.transformer.h) == 12
    assert model.tokenizer.pad_token == model.tokenizer.eos_token and model.tokenizer.padding_side == "left"
    with model.trace("Hello"):
        hidden = model.transformer.h[0].output.save()
    assert model.dispatched and hidden.device.type == "cpu"
    assert model.transformer.h[0].mlp.c_fc.weight.device.type == "cpu"


def test_dispatch_true_loads_at_once(gpt2_folder):
    model = LanguageModel(gpt2_folder, dispatch=True)
    assert model.dispatched and model.lm_head.weight.device.type == "cpu"


@pytest.mark.parametrize("form", ["str", "list", "ids", "tensor", "dict", "encoding", "keywords"])
def test_input_forms_give_the_plain_logits(lm, form):
    prompt = PROMPTS[0]
    encoding = lm.tokenizer(prompt, return_tensors="pt")
    ids = encoding["input_ids"]
    args, kwargs = {
        "str": ((prompt,), {}),
        "list": (([prompt],), {}),
        "ids": ((ids[0].tolist(),), {}),
        "tensor": ((ids,), {}),
        "dict": (({"input_ids": ids, "attention_mask": encoding["attention_mask"]},), {}),
        "encoding": ((encoding,), {}),
        "keywords": ((), {"input_ids": ids, "attention_mask": encoding["attention_mask"]}),
    }[form]
    with lm.trace(*args, **kwargs):
        logits = lm.output.logits.save()
    assert torch.allclose(logits, plain(lm, [prompt]).logits, atol=1e-5)


def test_labels_give_the_loss(lm):
    ids = lm.tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    with lm.trace(ids, labels=ids):
        loss = lm.output.loss.save()
    with torch.no_grad():
        expected = lm._module(input_ids=ids, labels=ids).loss
    assert torch.allclose(loss, expected)


@pytest.mark.parametrize("bad", ["", [], [""]])
def test_empty_prompt_is_refused(lm, bad, clean):
    with pytest.raises(ValueError, match="Empty prompt"):
        with lm.trace(bad):
            out = lm.output.save()
    clean()


def test_invokes_equal_the_padded_batch(lm):
    with lm.trace() as tracer:
        with tracer.invoke(PROMPTS[0]):
            hidden = lm.transformer.h[4].output.save()
            first = lm.lm_head.output.save()
        with tracer.invoke(PROMPTS[1]):
            second = lm.lm_head.output.save()
        with tracer.invoke():
            everything = lm.lm_head.output.save()
    expected = plain(lm, PROMPTS, output_hidden_states=True)
    assert first.shape[0] == 1 and second.shape[0] == 1
    assert torch.allclose(first, expected.logits[:1], atol=1e-5)
    assert torch.allclose(second, expected.logits[1:], atol=1e-5)
    assert torch.allclose(hidden, expected.hidden_states[5][:1], atol=1e-5)
    assert torch.allclose(everything, expected.logits, atol=1e-5)


def test_same_length_invokes_equal_separate_runs(lm):
    a, b = "one two three four", "five six seven eight"
    assert len(lm.tokenizer(a).input_ids) == len(lm.tokenizer(b).input_ids)
    with lm.trace() as tracer:
        with tracer.invoke(a):
            la = lm.output.logits.save()
        with tracer.invoke(b):
            lb = lm.output.logits.save()
    assert torch.allclose(la, plain(lm, [a]).logits, atol=1e-5)
    assert torch.allclose(lb, plain(lm, [b]).logits, atol=1e-5)


def test_in_place_edit_touches_only_its_invoke(lm):
    with lm.trace() as tracer:
        with tracer.invoke(PROMPTS[0]):
            lm.transformer.h[2].output[:] = 0
            first = lm.lm_head.output.save()
        with tracer.invoke(PROMPTS[1]):
            second = lm.lm_head.output.save()
    expected = plain(lm, PROMPTS)
    assert torch.allclose(second, expected.logits[1:], atol=1e-5)
    assert not torch.allclose(first, expected.logits[:1], atol=1e-3)


def test_assignment_is_widened_into_the_batch(lm):
    with lm.trace() as tracer:
        with tracer.invoke(PROMPTS[0]):
            first = lm.lm_head.output.save()
        with tracer.invoke(PROMPTS[1]):
            lm.transformer.ln_f.output = torch.zeros_like(lm.transformer.ln_f.output)
            second = lm.lm_head.output.save()
    expected = plain(lm, PROMPTS)
    assert torch.allclose(first, expected.logits[:1], atol=1e-5)
    assert torch.allclose(second, torch.zeros_like(second))  # lm_head has no bias


def test_skip_a_layer_across_invokes(lm):
    layer = lm._module.transformer.h[3]
    with lm.trace() as tracer:
        with tracer.invoke(PROMPTS[0]):
            lm.transformer.h[3].skip(lm.transformer.h[3].input)
            first = lm.lm_head.output.save()
        with tracer.invoke(PROMPTS[1]):
            lm.transformer.h[3].skip(lm.transformer.h[3].input)
            second = lm.lm_head.output.save()
    handle = layer.register_forward_hook(lambda module, args, output: args[0])
    try:
        expected = plain(lm, PROMPTS)
    finally:
        handle.remove()
    assert torch.allclose(first, expected.logits[:1], atol=1e-5)
    assert torch.allclose(second, expected.logits[1:], atol=1e-5)


def test_logit_lens_calls_modules_inside_a_trace(lm):
    prompt = PROMPTS[0]
    with lm.trace(prompt):
        hidden = lm.transformer.h[5].output
        lens = lm.lm_head(lm.transformer.ln_f(hidden)).save()
    batch = lm.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        states = lm._module(**batch, output_hidden_states=True).hidden_states
        expected = lm._module.lm_head(lm._module.transformer.ln_f(states[6]))
    assert torch.allclose(lens, expected, atol=1e-5)
