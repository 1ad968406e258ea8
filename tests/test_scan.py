"""model.scan(): shapes and dtypes under FakeTensorMode, no real compute, no dispatch."""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensor

from nnsight_fast import LanguageModel, NNsight

from models import MLP


def test_scan_gives_shapes_without_compute():
    net = MLP()
    model = NNsight(net)
    calls = []
    net.fc2.register_forward_hook(lambda m, a, o: calls.append(type(o)))
    with model.scan(torch.randn(5, 4)):
        hidden = model.fc2.output.save()
        shape = model.fc2.output.shape.save()
        dtype = model.head.output.dtype.save()
    assert shape == (5, 8) and dtype == torch.float32
    assert isinstance(hidden, FakeTensor) and calls == [FakeTensor]


def test_scan_keeps_a_lazy_language_model_unloaded(gpt2_folder):
    model = LanguageModel(gpt2_folder)
    with model.scan("Hello world"):
        attn = model.transformer.h[0].attn.output[0].shape.save()
        logits = model.lm_head.output.shape.save()
    ids = model.tokenizer("Hello world", return_tensors="pt")["input_ids"]
    assert attn == (1, ids.shape[1], 64) and logits[:2] == (1, ids.shape[1])
    assert not model.dispatched
