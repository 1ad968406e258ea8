"""Shared fixtures: devices to run on, and a check that a model is left clean."""

from __future__ import annotations

import threading

import pytest
import torch

from nnsight_fast import _native
from nnsight_fast.workers import MAX_IDLE, POOL

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def assert_clean(model=None, x=None, expected=None):
    """No trace active on this thread, no body parked mid-request, and (when given)
    the wrapped model gives plain results again, in and out of a trace."""
    assert not _native.has_active_trace()
    assert _native.parked_bodies() == 0
    if model is not None:
        assert torch.allclose(model(x), expected)
        with model.trace(x):
            out = model.output.save()
        assert torch.allclose(out, expected)


@pytest.fixture
def clean():
    return assert_clean


@pytest.fixture(autouse=True)
def _no_leftover_threads():
    yield
    assert not _native.has_active_trace()
    assert _native.parked_bodies() == 0
    named = [t for t in threading.enumerate() if t.name == "nnsight_fast-mediator"]
    assert len(named) == POOL.idle_count() <= MAX_IDLE


@pytest.fixture(scope="session")
def gpt2_folder(tmp_path_factory):
    """A random-init 12-block GPT-2 and its tokenizer, saved with save_pretrained (no download)."""
    pytest.importorskip("transformers")
    from nnsight_fast.local_gpt2 import build_local_gpt2

    return build_local_gpt2(str(tmp_path_factory.mktemp("gpt2")), n_layer=12, n_embd=64)


@pytest.fixture(scope="session")
def lm(gpt2_folder):
    """One LanguageModel shared by the language-model tests (lazy until the first run)."""
    from nnsight_fast import LanguageModel

    return LanguageModel(gpt2_folder)
