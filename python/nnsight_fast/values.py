"""The values of one place in the model, as a trace body reads and edits them.

    class Place(ValueAccess):            # gives path, _input_location, _output_location
        ...
    place.output; place.output = v; place.inputs; place.input = v; place.skip(v); place.next()

Shared by module Envoys and `.source` operations.
"""

from __future__ import annotations

from typing import Any

from . import _native
from . import mediator as _mediator
from .errors import outside_trace_error

_request = _mediator.request


def _first_input(inputs: tuple) -> Any:
    args, kwargs = inputs
    if args:
        return args[0]
    if kwargs:
        return next(iter(kwargs.values()))
    return None


def _with_first_input(inputs: tuple, value: Any) -> tuple:
    args, kwargs = inputs
    if args:
        return ((value, *args[1:]), kwargs)
    if kwargs:
        first = next(iter(kwargs))
        return (args, {**kwargs, first: value})
    return ((value,), kwargs)


class ValueAccess:
    """The values of one place in the model: `.output`, `.inputs`, `.input`, `.skip`, `.next`.

    with model.trace(x):
        out = model.layer1.output.save()
    """

    path: str
    _input_location: int
    _output_location: int

    def _read_output(self) -> Any:
        """The output (in a trace)."""
        return _request(self._output_location, self.path, "output")

    def _assign_output(self, value: Any) -> None:
        _mediator.assign(self._output_location, self.path, "output", value)

    # `.output` reads in C (every read of every step goes through it); _read_output when there
    # is no body, in a backward block, or for a place that keeps its location elsewhere.
    output = _native.ValueRead("_output_location", _read_output, _assign_output)

    @property
    def inputs(self) -> tuple[tuple, dict]:
        """The inputs as (args, kwargs) (in a trace)."""
        return _mediator.request(self._input_location, self.path, "inputs")

    @inputs.setter
    def inputs(self, value: tuple[tuple, dict]) -> None:
        if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict)):
            raise TypeError(f"`{self.path}.inputs` must be assigned a pair (args: tuple, kwargs: dict)")
        _mediator.assign(self._input_location, self.path, "inputs", (tuple(value[0]), value[1]))

    @property
    def input(self) -> Any:
        """The first input: the first positional argument, else the first keyword one."""
        return _first_input(_mediator.request(self._input_location, self.path, "input"))

    @input.setter
    def input(self, value: Any) -> None:
        inputs = _mediator.request(self._input_location, self.path, "input")
        _mediator.assign(self._input_location, self.path, "input", _with_first_input(inputs, value))

    def skip(self, replacement: Any) -> None:
        """Don't run this at its next call in this trace; `replacement` is its output."""
        _mediator.skip(self._input_location, self.path, replacement)

    def _next_outside(self, step: int = 1):
        """next() where no body runs: the error that says so."""
        raise outside_trace_error(f"{self.path}.next")

    # next(step=1): later values refer to the call `step` calls further on (in this invoke).
    # In C (csrc/body_request.cpp): it moves the running body's count for this place.
    next = _native.place_next


_native.set_next_fallback(ValueAccess._next_outside)
