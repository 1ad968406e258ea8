"""Mediator: one body of a trace (an invoke, an edit, a backward block), run in step with the model.

    mediator = Mediator(tracer, body, native_trace, rows=(0, 2))   # a greenlet on this thread
    failed = mediator.start()          # the body runs until it asks for a value (or ends)
    ...                                # the model runs; Gates switch into the body at its locations
    namespace = mediator.finish()      # its variables; nothing of the run is kept

    # inside the body (values.py):
    value = request(envoy._output_location, envoy.path, "output")
    assign(envoy._output_location, envoy.path, "output", new_value)

By default the body is a greenlet on the model's own thread: asking for a value is a
stack switch back to the model, and the Gate switches in again when the model gets
there. With `threaded=True` (backward blocks, models that run modules on a thread
pool) the body runs on a pooled worker thread that any OS thread can serve. Within
one body, requests follow execution order: asking for a location the model already
passed raises OutOfOrderError at the user's line.
"""

from __future__ import annotations

from typing import Any, Protocol

from . import _native, errors
from .errors import Cancelled, LoopEnd, OutOfOrderError
from .workers import POOL

current_mediator = _native.current_mediator
_park, _waiting = _native.park, _native.waiting
_mediator_request, _occurrence_of = _native.mediator_request, _native.occurrence_of


# Finished greenlet handoffs that new mediators take (a pybind11 object costs ~2 k
# instructions to make and free); shared by the threads, under the GIL.
_SPARE_HANDOFFS: list = []
_MAX_SPARE_HANDOFFS = 8


class Owner(Protocol):
    """What a mediator asks of the trace it belongs to."""

    def record_save(self, value: Any) -> None:
        """Keeps `value` (and the variable holding it) after the trace."""


class Mediator:
    """Runs one captured body; the model side serves its requests through a native handoff."""

    # What most bodies never change (set on the instance when they do)
    iteration = 0  # the step requests bind to (generation)
    at_barrier = None  # the Barrier this body waits at
    error: BaseException | None = None
    _pending_error: BaseException | None = None
    _namespace: dict | None = None
    _worker = None
    _deferred: list | None = None  # actions to run before the body's turn ends (defer())
    _bases: list | None = None  # per location: visits made before this body joined (join_now())
    _offsets: dict | None = None  # path -> calls further on (envoy.next(), in C: csrc/body_request.cpp)
    loops: list | tuple = ()  # the Iterations loops this body is inside, innermost last
    _nested_sources: dict | None = None  # (callee location, occurrence) -> SourceEnvoy of the replaced callee
    saves_into: dict | None = None  # id(value) -> value: where save() puts values directly (else tracer.record_save)

    def __init__(self, tracer: Owner, body, native_trace, rows: tuple[int, int] = (0, -1), *,
                 threaded: bool = False, collects: bool = True, backward_of: "Mediator | None" = None,
                 saves_into: dict | None = None):
        self.tracer = tracer
        if saves_into is not None:  # the tracer's saved values, when nothing else must see each save
            self.saves_into = saves_into
        self.native_trace = native_trace
        self.collects = collects  # False for a persistent edit: its variables are not written back
        self.backward_of = backward_of  # in a backward block: the invoke whose forward values it reads
        self._body = body
        if threaded:
            self._worker = POOL.acquire()
            self._handoff = self._worker.handoff
        else:  # a finished one if there is one (reset when attached): no new native object per trace
            try:
                self._handoff = _SPARE_HANDOFFS.pop()  # atomic between threads
            except IndexError:
                self._handoff = _native.GreenletHandoff()
        self.index = native_trace.add_mediator(self._handoff, *rows)
        # (location, occurrence) -> value served while grad mode was on, for backward blocks. Under
        # no_grad nothing is kept: each value is freed as soon as the body and the model drop it.
        self.history: dict = {}

    # ---- model side ----
    def start(self) -> bool:
        """Runs the body until it parks or ends; True when it failed."""
        return self._handoff.start(self._job)

    @property
    def busy(self) -> bool:
        """True while the body is parked (it has not ended)."""
        return self._handoff.busy

    def cancel(self, error: BaseException | None = None) -> None:
        """Makes the parked body's wait raise `error` (Cancelled when None); returns when it
        parks again or ends."""
        self._pending_error = error
        try:
            self._handoff.cancel()
        finally:
            self._pending_error = None

    def finish(self, reuse_handoff: bool = False) -> dict | None:
        """Ends the body (if still parked) and drops what it held; returns its variables
        when they go back to the caller. `reuse_handoff`: the caller resets the native trace
        next (nothing serves this body's handoff again), so a later mediator may take it."""
        handoff = self._handoff
        try:
            while handoff.busy:
                handoff.cancel()
        finally:
            if self._worker is not None:
                POOL.release(self._worker)
                self._worker = None
            elif reuse_handoff and not handoff.busy and len(_SPARE_HANDOFFS) < _MAX_SPARE_HANDOFFS:
                _SPARE_HANDOFFS.append(handoff)
            namespace = self._namespace
            self._namespace = self._body = self._nested_sources = None
            if self.history:
                self.history.clear()
        return namespace if self.collects else None

    # ---- body side ----
    # In C (csrc/body_job.cpp): _job() makes this the thread's current mediator, runs
    # `self._body.run(self._collect)` and the deferred actions, and returns False, or True
    # with the failure in `self.error`; afterwards nothing deferred or served is kept.
    # _collect(namespace) keeps the body's locals when it ends.
    _job = _native.mediator_job
    _collect = _native.keep_namespace

    @property
    def requests_made(self) -> int:
        """How many values the body has asked for so far."""
        return self._handoff.requests_made

    def occurrence_of(self, path: str) -> int:
        """Which call of the module at `path` this body's next request binds to."""
        return _occurrence_of(self, path)

    def request(self, location: int, occurrence: int) -> Any:
        """The value at (location, occurrence): parks until the model gets there.

        In C (csrc/body_request.cpp), with this object's state: the last value served (asked
        again at the same place, it is not waited for twice), `requests_made`, deferred
        actions, a cancelled wait's chosen error, and the history backward blocks read."""
        return _mediator_request(self, location, occurrence)

    @property
    def waiting(self) -> tuple[int, int] | None:
        """The (location, occurrence) this body is parked on, None when it is not parked on a request."""
        return _waiting(self._handoff)

    def park(self) -> Any:
        """Gives the turn to the model until it serves a value or resumes this body.

        When the trace ends instead, raises the error the model side chose (`cancel(error)`)."""
        if self._deferred is not None:
            self._run_deferred()
        try:
            return _park(self._handoff)
        except Cancelled:
            self._raise_pending_error()
            raise

    def _raise_pending_error(self) -> None:
        """A wait was cancelled: raise the error the model side chose instead, if any."""
        if self._pending_error is not None:
            raise self._pending_error from None

    def defer(self, action) -> None:
        """Runs `action()` when this body's turn ends (its next request or wait, or its end),
        before the model goes on: e.g. writing an edited gathered value back to its shard."""
        if self._deferred is None:
            self._deferred = []
        self._deferred.append(action)

    def _run_deferred(self) -> None:
        actions, self._deferred = self._deferred, None
        for action in actions:
            action()

    def join_now(self) -> None:
        """This body's calls count from the model's visits so far (a body that joins a run which
        already made steps: its step 0 is the next one)."""
        self._bases = self.native_trace.visit_counts()

    def _base(self, location: int) -> int:
        bases = self._bases
        return bases[location] if location < len(bases) else 0

    def visits(self, location: int) -> int:
        """How many times the model reached `location`, counted from when this body joined."""
        visits = self.native_trace.visits(location)
        return visits - self._base(location) if self._bases is not None else visits

    def end_loops(self, step_location: int) -> list[str]:
        """The run made its last step: each `tracer.iter` loop this body waits in ends there
        (LoopEnd; the code after it runs). Returns the warnings of loops that named a step
        never made; `step_location` is the location visited once per step."""
        messages = []
        while self.loops and self.busy:
            waiting = self.waiting
            where = f"{self.native_trace.name(waiting[0])}.i{waiting[1]}" if waiting is not None else None
            end = LoopEnd(self.loops[-1], self.iteration, self.visits(step_location), where)
            message = end.warning()
            if message:
                messages.append(message)
            self.cancel(end)
        return messages

    def end_waits(self, keep_location: int = -1) -> None:
        """The run is over: a request still parked will never be served (OutOfOrderError at the
        user's line); one parked at `keep_location` stays parked (served later)."""
        while self.busy and self.waiting is not None and self.waiting[0] != keep_location:
            self.cancel(self.never_reached(*self.waiting))

    def never_reached(self, location: int, occurrence: int) -> OutOfOrderError:
        """The run ended with this body still waiting at (location, occurrence)."""
        name, visits = self.native_trace.name(location), self.visits(location)
        if self._bases is not None:
            occurrence -= self._base(location)
        return OutOfOrderError(
            f"'{name}.i{occurrence}' was never reached: the run reached `{name}` {visits} time(s). If the model "
            "calls that module on another OS thread (a thread pool), wrap it with `NNsight(module, "
            "threaded=True)`"
        )

    def assign(self, location: int, occurrence: int, value: Any) -> None:
        """Replaces the value at (location, occurrence) with `value` once the model gets there."""
        self.request(location, occurrence)
        self._handoff.set_swap(value)  # also what a read of that place again gives

    def skip(self, location: int, occurrence: int, value: Any) -> None:
        """Skips the module whose input location is `location` at that call; its output is `value`."""
        self.request(location, occurrence)
        self._handoff.set_skip(value)

    # ---- steps and loops ----
    def at_step(self, step: int) -> None:
        """Later requests bind to the model's `step`-th call (generation step)."""
        self.iteration = step
        self._offsets = None

    def enter_loop(self, loop) -> None:
        """The body enters a `tracer.iter` loop (innermost last): the run's end can end it."""
        if not self.loops:
            self.loops = []
        self.loops.append(loop)

    def leave_loop(self) -> None:
        """The body leaves its innermost `tracer.iter` loop."""
        self.loops.pop()

    def wait_at(self, barrier) -> None:
        """Parks at `barrier` until the model side resumes this body (the last participant arrived)."""
        self.at_barrier = barrier
        try:
            self.park()
        finally:
            self.at_barrier = None

    # ---- .source of an operation's callee, once per execution ----
    def nested_source(self, key: tuple) -> Any:
        """The SourceEnvoy already built for this execution of an operation's callee, if any."""
        return self._nested_sources.get(key) if self._nested_sources else None

    def remember_nested_source(self, key: tuple, source: Any) -> None:
        """Remembers the SourceEnvoy built for this execution of an operation's callee."""
        if self._nested_sources is None:
            self._nested_sources = {}
        self._nested_sources[key] = source


def mediator_of(tracer: Any, what: str) -> Mediator:
    """The body running now, which must belong to `tracer` (`what` names the call in the error)."""
    mediator = current_mediator()
    if mediator is None or mediator.tracer is not tracer:
        raise errors.outside_trace_error(what)
    return mediator


def _require_mediator(path: str, what: str) -> Mediator:
    mediator = current_mediator()
    if mediator is None:
        raise errors.outside_trace_error(f"{path}.{what}")
    return mediator


def request(location: int, path: str, what: str) -> Any:
    """The value at `location` for the current invoke (`what` names it in errors)."""
    mediator = _require_mediator(path, what)
    forward = mediator.backward_of
    if forward is not None:  # in a backward block: the value this invoke read in the forward pass
        key = (location, forward.occurrence_of(path))
        if key not in forward.history:
            raise ValueError(
                f"`{path}.{what}` was not read in the forward part of this invoke (with grad enabled): "
                "read it before `with loss.backward():` to use it (or its .grad) inside"
            )
        return forward.history[key]
    return _mediator_request(mediator, location, _occurrence_of(mediator, path))


def assign(location: int, path: str, what: str, value: Any) -> None:
    """Replaces the value at `location` for the current invoke (`what` names it in errors)."""
    mediator = _require_mediator(path, what)
    mediator.assign(location, mediator.occurrence_of(path), value)


def skip(location: int, path: str, value: Any) -> None:
    """Skips the module whose input location is `location`: its output becomes `value`."""
    mediator = _require_mediator(path, "skip")
    mediator.skip(location, mediator.occurrence_of(path), value)

