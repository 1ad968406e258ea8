"""Many traces keep memory and threads flat; threads tracing at once don't see each other."""

from __future__ import annotations

import gc
import threading
import weakref

import psutil
import torch

from nnsight_fast import NNsight
from nnsight_fast import _native

from models import MLP, Nested


def test_thousand_traces_keep_memory_and_threads_flat():
    torch.manual_seed(0)
    model = NNsight(Nested(width=64))
    x = torch.randn(8, 4)

    def run(n):
        for _ in range(n):
            with model.trace(x):
                model.blocks[0].output[:] = 0
                h = model.blocks[1].output.save()

    run(100)
    gc.collect()
    process = psutil.Process()
    rss_before, threads_before = process.memory_info().rss, threading.active_count()
    run(1000)
    gc.collect()
    grown = process.memory_info().rss - rss_before
    assert threading.active_count() == threads_before
    assert grown < 8 * 2**20, f"memory grew by {grown / 2**20:.1f} MiB over 1,000 traces"


def test_saved_tensors_are_the_only_survivors():
    model = NNsight(MLP())
    x = torch.randn(2, 4)
    refs = []
    with model.trace(x):
        kept = model.fc1.output.save()
        refs.append(weakref.ref(model.fc2.output))
        refs.append(weakref.ref(model.output))
    gc.collect()
    assert kept.shape == (2, 8)
    assert [r() for r in refs] == [None, None]


def _traced_outputs(model, inputs, repeats):
    results = []
    for x in inputs:
        for _ in range(repeats):
            with model.trace(x):
                model.act.output[:, ::2] = 0
                h = model.fc2.output.save()
                out = model.output.save()
            results.append((h, out))
    return results


def test_two_threads_tracing_at_once_get_what_they_get_alone():
    torch.manual_seed(0)
    shared = NNsight(MLP())
    other = NNsight(MLP())
    inputs = [torch.randn(3, 4) for _ in range(4)]
    alone = {
        "shared": _traced_outputs(shared, inputs, 1),
        "other": _traced_outputs(other, inputs, 1),
    }
    results: dict[str, list] = {}
    errors: list[BaseException] = []

    def worker(name, model):
        try:
            results[name] = _traced_outputs(model, inputs, 50)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [
        threading.Thread(target=worker, args=("shared", shared)),
        threading.Thread(target=worker, args=("shared-again", shared)),
        threading.Thread(target=worker, args=("other", other)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for name, key in (("shared", "shared"), ("shared-again", "shared"), ("other", "other")):
        got = results[name]
        for i, (h, out) in enumerate(got):
            h_alone, out_alone = alone[key][i // 50]
            assert torch.equal(h, h_alone) and torch.equal(out, out_alone)
    assert _native.parked_bodies() == 0


def test_values_read_under_no_grad_are_freed_during_the_trace():
    # A body that drops a value it read leaves it to be freed while the model runs on (no
    # activation of a long generation stays alive until the trace ends); with grad enabled the
    # trace keeps what it served for backward blocks.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    model = NNsight(net)
    x = torch.randn(2, 4)
    for grad, expect_alive in ((False, False), (True, True)):
        with torch.set_grad_enabled(grad):
            with model.trace(x):
                first = weakref.ref(model[0].output)
                out = model[2].output.save()  # fc1's output is dropped by the model and the body by now
                alive = (first() is not None).save()
        assert alive is expect_alive, grad
        assert torch.allclose(out, net(x))
