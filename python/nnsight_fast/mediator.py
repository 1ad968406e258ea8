"""Mediator: one invoke's body, run on a worker thread in step with the model.

    value = request(envoy._output_location, envoy, "output")   # inside a trace body
    assign(envoy._output_location, new_value)

A body that asks for a value parks on its worker until the model reaches that
location (the native Gate hands the value over); the model waits meanwhile. Within
one invoke, requests follow execution order: asking for a location the model
already passed raises OutOfOrderError at the user's line.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from . import errors
from .errors import Cancelled, OutOfOrderError
from .saving import enter_scope

if TYPE_CHECKING:
    from .tracing.capture import CapturedBody
    from .tracing.tracer import Tracer
    from .workers import Worker

_current = threading.local()


def current_mediator() -> "Mediator | None":
    return getattr(_current, "mediator", None)


class Mediator:
    """Runs one invoke's captured body; its requests are served by the model thread."""

    def __init__(self, tracer: "Tracer", body: "CapturedBody", worker: "Worker", index: int, native_trace,
                 collects: bool = True):
        self.collects = collects  # False for a persistent edit: its variables are not written back
        self.tracer = tracer
        self.body = body
        self.worker = worker
        self.channel = worker.channel
        self.index = index
        self.native_trace = native_trace
        self.iteration = 0
        self.offsets: dict[str, int] = {}
        self.waiting: tuple[int, int] | None = None
        self.requests_made = 0
        self.loops: list = []  # the Iterations loops this body is inside, innermost last
        self.at_barrier = None  # the Barrier this body waits at
        self.nested_sources: dict = {}  # (callee location, occurrence) -> SourceEnvoy of the replaced callee
        self.history: dict = {}  # (location, occurrence) -> value served, for backward blocks
        self.backward_of: "Mediator | None" = None  # in a backward block: the invoke it belongs to
        self.location = -1
        self.occurrence = -1
        self.value: Any = None
        self.error: BaseException | None = None
        self.pending_error: BaseException | None = None
        self.namespace: dict | None = None

    # ---- runs on the worker thread ----
    def job(self) -> bool:
        previous_scope = enter_scope(self.tracer)
        _current.mediator = self
        try:
            self.body.run(self._collect)
            return False
        except BaseException as error:  # noqa: BLE001 - every failure goes back to the model thread
            self.error = error
            return True
        finally:
            _current.mediator = None
            enter_scope(previous_scope)
            self.value = None

    def _collect(self, namespace: dict) -> None:
        self.namespace = namespace

    def occurrence_of(self, path: str) -> int:
        return self.iteration + self.offsets.get(path, 0) if self.offsets else self.iteration

    def request(self, location: int, occurrence: int) -> Any:
        if location == self.location and occurrence == self.occurrence:
            return self.value
        if self.native_trace.visits(location) > occurrence and not self.native_trace.serving(location, occurrence):
            raise self.out_of_order(location, occurrence)
        self.native_trace.park(location, self.index, occurrence)
        self.requests_made += 1
        self.waiting = (location, occurrence)
        try:
            value = self.park()
        finally:
            self.waiting = None
        self.location = location
        self.occurrence = occurrence
        self.value = value
        self.history[(location, occurrence)] = value
        return value

    def park(self) -> Any:
        """Hands the turn to the model thread until it serves a value or resumes this body.

        When the trace ends instead, raises the error the tracer chose (`pending_error`)."""
        try:
            return self.channel.park()
        except Cancelled:
            if self.pending_error is not None:
                raise self.pending_error from None
            raise

    def out_of_order(self, location: int, occurrence: int) -> OutOfOrderError:
        name = self.tracer.model._dispatcher.name(location)
        return OutOfOrderError(f"'{name}.i{occurrence}' was requested but the model already ran past it")

    def assign(self, location: int, occurrence: int, value: Any) -> None:
        self.request(location, occurrence)
        self.value = value
        self.channel.set_swap(value)


def _require_mediator(what: str) -> Mediator:
    mediator = getattr(_current, "mediator", None)
    if mediator is None:
        raise errors.outside_trace_error(what)
    return mediator


def request(location: int, path: str, what: str) -> Any:
    """The value at `location` for the current invoke (`what` names it in errors)."""
    mediator = _require_mediator(f"{path}.{what}")
    forward = mediator.backward_of
    if forward is not None:  # in a backward block: the value this invoke read in the forward pass
        key = (location, forward.occurrence_of(path))
        if key not in forward.history:
            raise ValueError(
                f"`{path}.{what}` was not read in the forward part of this invoke: read it before "
                "`with loss.backward():` to use it (or its .grad) inside"
            )
        return forward.history[key]
    return mediator.request(location, mediator.occurrence_of(path))


def assign(location: int, path: str, what: str, value: Any) -> None:
    mediator = _require_mediator(f"{path}.{what}")
    mediator.assign(location, mediator.occurrence_of(path), value)


def skip(location: int, path: str, value: Any) -> None:
    """Skips the module whose input location is `location`: its output becomes `value`."""
    mediator = _require_mediator(f"{path}.skip")
    mediator.request(location, mediator.occurrence_of(path))
    mediator.channel.set_skip(value)


def advance(path: str, step: int) -> None:
    """Moves the current invoke's view of the module at `path` `step` calls forward."""
    mediator = _require_mediator(f"{path}.next")
    mediator.offsets[path] = mediator.offsets.get(path, 0) + step
