"""Traces among the rest of Python: torch.compile, debuggers and coverage (sys.settrace),
bodies that start with `try:` or `pass`, `return` in a body, large source files."""

from __future__ import annotations

import ast
import sys
import warnings

import pytest
import torch

from nnsight_fast import NNsight
from nnsight_fast import capture

from models import MLP
from test_reliability import run_script


def test_torch_compile_works_after_import_and_edits_take_effect(tmp_path):
    """inductor lists its handler classes' methods when it is imported: `save` on object must not
    break it. Compiled whole models and compiled submodules still see edits."""
    out = run_script(tmp_path, """
        import torch
        import nnsight_fast                      # before torch._inductor is imported
        from nnsight_fast import NNsight
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        x = torch.randn(3, 4)
        plain = torch.compile(net)               # inductor, unwrapped
        ok = [bool(torch.allclose(plain(x), net(x), atol=1e-6))]
        model = NNsight(torch.compile(net))      # a compiled whole model, wrapped
        with model.trace(x):
            model._orig_mod[0].output[:] = 0
            out = model.output.save()
        ok.append(bool(torch.allclose(out, net[2](net[1](torch.zeros(3, 4))), atol=1e-6)))
        other = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        other[2] = torch.compile(other[2])       # a compiled submodule
        wrapped = NNsight(other)
        with wrapped.trace(x):
            wrapped[2].output[:] = 1
            edited = wrapped.output.save()
        ok.append(bool(torch.equal(edited, torch.ones(3, 2))))
        ok.append(bool(torch.allclose(wrapped(x), other(x))))
        print(*ok)
    """, timeout=600)
    assert out == ["True"] * 4


def test_bodies_are_not_compiled_by_dynamo(clean):
    """A body served from inside a compiled model runs as plain Python (dynamo would warn
    about, or compile, the body's frames)."""
    torch.manual_seed(0)
    net = MLP()
    model = NNsight(torch.compile(net, backend="eager"))
    x = torch.randn(3, 4)
    with _no_dynamo_warning():  # dynamo warns when it meets the body's native calls
        with model.trace(x):
            hidden = model._orig_mod.fc1.output.save()
            model._orig_mod.fc2.output[:] = 0
            out = model.output.save()
    assert torch.allclose(hidden, net.fc1(x))
    assert torch.allclose(out, net.head(net.act2(torch.zeros(3, 8))))


class _no_dynamo_warning:
    def __enter__(self):
        self._catcher = warnings.catch_warnings()
        self._catcher.__enter__()
        warnings.filterwarnings("error", message=".*Dynamo does not know how to trace")

    def __exit__(self, *exc):
        return self._catcher.__exit__(*exc)


@pytest.mark.parametrize("traces_lines", [False, True])
def test_a_debuggers_trace_function_survives_a_trace(traces_lines):
    # traces_lines: the debugger also traces the lines of each frame (as pdb does while stepping)
    model = NNsight(MLP())
    seen = []

    def tracer(frame, event, arg):
        seen.append(event)
        return tracer if traces_lines else None

    x = torch.randn(2, 4)
    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        with model.trace(x):
            inside = sys.gettrace()
            out = model.output.save()
        after = sys.gettrace()
    finally:
        sys.settrace(previous)
    assert after is tracer
    assert torch.equal(out, model._module(x))
    if traces_lines:  # the debugger saw the lines after the block too
        assert seen.count("line") >= 2


@pytest.mark.parametrize("first", ["try", "pass", "docstring"])
def test_bodies_starting_with_a_nop_statement(first, clean):
    torch.manual_seed(0)
    net = MLP()
    model = NNsight(net)
    x = torch.randn(2, 4)
    if first == "try":
        with model.trace(x):
            try:
                out = model.fc1.output.save()
            except ValueError:
                out = None
    elif first == "pass":
        with model.trace(x):
            pass
            out = model.fc1.output.save()
    else:
        with model.trace(x):
            "a docstring-like first statement"
            out = model.fc1.output.save()
    assert torch.allclose(out, net.fc1(x))
    clean(model, x, net(x))


def test_return_in_a_body_is_a_clear_error(clean):
    torch.manual_seed(0)
    net = MLP()
    model = NNsight(net)
    x = torch.randn(2, 4)

    def traced():
        with model.trace(x):
            out = model.output.save()
            return out
        return "after the block"  # Python would never get here

    with pytest.raises(SyntaxError, match="`return` inside a traced `with` block"):
        traced()
    clean(model, x, net(x))


def test_a_large_file_is_not_parsed_for_each_block(tmp_path, monkeypatch):
    """A new `with` site is parsed from its own lines, never the whole (large) file."""
    filler = "\n".join(f"value_{i} = {i}" for i in range(3000))
    source = filler + "\n" + "\n".join(
        f"with model.trace(x):\n    out_{i} = model.output.save()\n" for i in range(5))
    path = tmp_path / "big_script.py"
    path.write_text(source)
    parses = []
    real_parse = ast.parse
    monkeypatch.setattr(capture.ast, "parse", lambda source, *a, **k: parses.append(len(source)) or
                        real_parse(source, *a, **k))
    namespace = {"model": NNsight(MLP()), "x": torch.randn(2, 4)}
    exec(compile(source, str(path), "exec"), namespace)
    assert all(namespace[f"out_{i}"].shape == (2, 3) for i in range(5))
    assert len(parses) == 5 and max(parses) < 200


class _SeesHandledException(torch.nn.Module):
    """Records, at each forward, the exception Python is handling then (None in a plain call)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)
        self.handled = []

    def forward(self, x):
        self.handled.append(sys.exc_info()[1])
        return self.fc(x)


def test_the_model_runs_outside_the_with_blocks_exception(clean):
    # A trace runs the model from the `with` block's __exit__; the model must not run "during
    # handling of" the block's internal skip signal, as a plain call does not: code that checks
    # sys.exc_info() sees nothing, and torch's attribute lookups (which raise and catch
    # AttributeError for each parameter read) are not chained to it.
    torch.manual_seed(0)
    net = _SeesHandledException()
    model = NNsight(net)
    x = torch.randn(2, 4)
    expected = net(x)
    with model.trace(x):
        out = model.fc.output.save()
    with model.trace() as tracer:
        with tracer.invoke(x):
            also = model.output.save()
    assert net.handled == [None, None, None]
    assert torch.equal(out, expected) and torch.equal(also, expected)
    try:
        raise KeyError("the caller's own")
    except KeyError as own:
        with model.trace(x):
            inside = model.output.save()
        assert sys.exc_info()[1] is own  # the caller's handled exception is back after the trace
    assert net.handled[-1] is None and torch.equal(inside, expected)
    clean(model, x, expected)


class _Keywords(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x, scale=1.0, *, shift=0.0):
        return self.fc(x) * scale + shift


def test_calling_a_wrapped_model_passes_every_argument_through(clean):
    # `model(...)` is a native __call__ (no Python frame): arguments, keywords, bound-method use
    # and errors must be exactly the module's own; `hook=` is ours and never reaches the module.
    torch.manual_seed(0)
    net = _Keywords()
    model = NNsight(net)
    x = torch.randn(2, 4)
    assert torch.equal(model(x), net(x))
    assert torch.equal(model(x, 2.0, shift=1.0), net(x, 2.0, shift=1.0))
    assert torch.equal(model(x=x, scale=3.0), net(x=x, scale=3.0))
    assert torch.equal(model.__call__(x, 2.0), net(x, 2.0))
    assert torch.equal(model.fc(x, hook=False), net.fc(x))
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        model(x, colour=1)
    with model.trace(x):
        direct = model.fc(x).save()  # in a body: untraced, the module's value
        out = model.output.save()
    assert torch.equal(direct, net.fc(x)) and torch.equal(out, net(x))
    clean(model, x, net(x))
