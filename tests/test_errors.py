"""Mistakes get clear errors at the user's line, and leave the model clean."""

from __future__ import annotations

import traceback

import pytest
import torch

from nnsight_fast import CONFIG, NNsight, OutOfOrderError

from models import MLP


@pytest.fixture
def setup(device):
    torch.manual_seed(0)
    net = MLP().to(device)
    x = torch.randn(2, 4, device=device)
    return net, NNsight(net), x, net(x).detach()


def last_frame(error: BaseException):
    return traceback.extract_tb(error.__traceback__)[-1]


def test_out_of_order_request(setup, clean):
    net, model, x, expected = setup
    with pytest.raises(OutOfOrderError, match=r"'model.fc1.output.i0' was requested but the model already ran past it"):
        with model.trace(x):
            late = model.fc2.output
            early = model.fc1.output  # the error points here
    clean(model, x, expected)


def test_out_of_order_error_is_raised_at_the_users_line(setup, clean):
    net, model, x, expected = setup
    try:
        with model.trace(x):
            late = model.head.output
            early = model.fc1.output
    except OutOfOrderError as error:
        frame = last_frame(error)
        assert frame.filename == __file__ and frame.line == "early = model.fc1.output"
    else:
        pytest.fail("no OutOfOrderError")
    clean(model, x, expected)


def test_input_after_output_of_the_same_module_is_out_of_order(setup, clean):
    net, model, x, expected = setup
    with pytest.raises(OutOfOrderError, match="model.fc2.input"):
        with model.trace(x):
            out = model.fc2.output
            given = model.fc2.input
    clean(model, x, expected)


def test_a_module_the_model_never_calls():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used = torch.nn.Linear(4, 4)
            self.unused = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.used(x)

    net = Branchy()
    model = NNsight(net)
    x = torch.randn(1, 4)
    with pytest.raises(OutOfOrderError, match="model.unused.output.i0"):
        with model.trace(x):
            value = model.unused.output.save()
    with model.trace(x):
        out = model.output.save()
    assert torch.equal(out, net(x))


def test_out_of_order_across_invokes(setup, clean):
    net, model, x, expected = setup
    with pytest.raises(OutOfOrderError, match="model.fc1.output"):
        with model.trace() as tracer:
            with tracer.invoke(x):
                late = model.head.output
            with tracer.invoke():
                late = model.head.output
                early = model.fc1.output
    clean(model, x, expected)


def test_output_outside_a_trace(setup, clean):
    net, model, x, expected = setup
    with pytest.raises(ValueError, match=r"Cannot access `model.fc1.output` outside of interleaving"):
        model.fc1.output
    with pytest.raises(ValueError, match="outside of interleaving"):
        model.fc1.output = 1
    with pytest.raises(ValueError, match=r"Cannot access `model.fc1.next` outside of interleaving"):
        model.fc1.next(step=2)
    with pytest.raises(TypeError, match=r"next\(step=1\)"):
        with model.trace(x):
            model.fc1.next(stride=2)
    clean(model, x, expected)


def test_save_outside_a_trace():
    with pytest.raises(ValueError, match="outside of a trace"):
        torch.ones(1).save()


def test_unknown_module(setup, clean):
    net, model, x, expected = setup
    with pytest.raises(AttributeError, match="has no submodule or attribute `fc9`"):
        with model.trace(x):
            model.fc9.output.save()
    clean(model, x, expected)


def test_exception_in_the_body_keeps_type_and_line(setup, clean):
    net, model, x, expected = setup
    with pytest.raises(KeyError, match="boom") as info:
        with model.trace(x):
            hidden = model.fc1.output
            raise KeyError("boom")
    frame = last_frame(info.value)
    assert frame.filename == __file__ and frame.line == 'raise KeyError("boom")'
    clean(model, x, expected)


def test_debug_keeps_library_frames(setup):
    net, model, x, expected = setup
    CONFIG.APP.DEBUG = True
    try:
        with pytest.raises(OutOfOrderError) as info:
            with model.trace(x):
                late = model.head.output
                early = model.fc1.output
    finally:
        CONFIG.APP.DEBUG = False
    frames = traceback.extract_tb(info.value.__traceback__)
    assert any("nnsight_fast" in frame.filename for frame in frames)  # the tracer's own frames
    assert frames[-1].line == "early = model.fc1.output"  # a read raises at the user's line (in C)


def test_error_raised_by_the_model_after_a_bad_edit(setup, clean):
    net, model, x, expected = setup
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        with model.trace(x):
            model.fc1.output = torch.zeros(2, 5, device=x.device)
            never = model.head.output
    clean(model, x, expected)


def test_several_input_invokes_need_a_batching_model(setup, clean):
    net, model, x, expected = setup
    with pytest.raises(NotImplementedError, match="cannot batch 2 input invokes"):
        with model.trace() as tracer:
            with tracer.invoke(x):
                a = model.fc1.output.save()
            with tracer.invoke(x):
                b = model.fc1.output.save()
    clean(model, x, expected)


def test_invoking_inside_an_invoke(setup, clean):
    net, model, x, expected = setup
    with pytest.raises(ValueError, match="Cannot invoke while the model runs"):
        with model.trace() as tracer:
            with tracer.invoke(x):
                with tracer.invoke(x):
                    pass
    clean(model, x, expected)


def test_trace_without_any_input(setup, clean):
    net, model, x, expected = setup
    with pytest.raises(ValueError, match="Nothing to run"):
        with model.trace() as tracer:
            with tracer.invoke():
                a = model.fc1.output.save()
    clean(model, x, expected)


def test_keyboard_interrupt_in_the_body(setup, clean):
    net, model, x, expected = setup
    with pytest.raises(KeyboardInterrupt):
        with model.trace(x):
            hidden = model.fc1.output
            raise KeyboardInterrupt
    clean(model, x, expected)


def test_keyboard_interrupt_in_the_model(setup, clean):
    net, model, x, expected = setup
    handle = net.fc2.register_forward_hook(lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with pytest.raises(KeyboardInterrupt):
            with model.trace(x):
                hidden = model.fc1.output.save()
                out = model.head.output.save()
    finally:
        handle.remove()
    clean(model, x, expected)


def test_same_line_body_is_refused(setup, clean):
    net, model, x, expected = setup
    with pytest.raises(ValueError, match="must start on its own line"):
        with model.trace(x): pass  # noqa: E701
    clean(model, x, expected)


def test_trace_from_source_less_code(setup):
    net, model, x, expected = setup
    namespace = {"model": model, "x": x}
    with pytest.raises(ValueError, match="Cannot find the source"):
        exec(compile("with model.trace(x):\n    y = 1\n", "<no source>", "exec"), namespace)


def test_ctrl_c_stops_a_runaway_body(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "runaway.py"
    script.write_text(
        "import os, signal, threading, torch\n"
        "from nnsight_fast import NNsight, _native\n"
        "from nnsight_fast.workers import POOL\n"
        "net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))\n"
        "model = NNsight(net)\n"
        "x = torch.randn(2, 4)\n"
        "threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()\n"
        "try:\n"
        "    with model.trace(x):\n"
        "        h = model[0].output\n"
        "        while True:\n"
        "            pass\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
        "print('clean', not _native.has_active_trace() and _native.parked_bodies() == 0)\n"
        "with model.trace(x):\n"
        "    out = model.output.save()\n"
        "print('plain', bool(torch.allclose(out, net(x))))\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["interrupted", "clean", "True", "plain", "True"], done.stderr
