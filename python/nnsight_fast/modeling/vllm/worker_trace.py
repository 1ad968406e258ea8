"""One caller trace as a vLLM worker runs it: a mediator per invoke, fed step by step.

    trace = WorkerTrace(root_envoy)                  # root_envoy: NNsight over vLLM's model
    trace.add_invoke(index=0, body=body)             # a body shipped with a request
    trace.begin_step({0: (0, 5), 1: (5, 3)}, batch=8)  # this step's flat token rows per invoke
    with trace.running():                            # the model's forward for the step
        hidden = model(...)
    trace.invoke_finished(0)                         # vLLM finished that request
    for index, saved, error, lines in trace.end():   # per invoke: saved variables, error, its lines
        ...

vLLM packs the scheduled requests of a step into flat `[tokens, ...]` activations:
each invoke owns its request's rows (its prompt at step 0, one row per decode step);
the logits and sampled ids have one row per request. The body runs in a greenlet on
the worker's model thread, as in a local trace; the trace's steps are the model's
forward calls.
"""

from __future__ import annotations

import contextlib
import traceback
from typing import Any, Iterator

from ... import _native
from ...errors import Cancelled, EarlyStop, LoopEnd
from ...mediator import Mediator, mediator_of
from ...steps import Iterations


class ResultOf:
    """Stands for an invoke's finished request (vLLM's `RequestOutput`) until it reaches the caller."""

    def __init__(self, invoke: int):
        self.invoke = invoke


class _Invoke:
    def __init__(self, index: int, mediator: Mediator, filename: str):
        self.index = index
        self.mediator = mediator
        self.filename = filename  # where the body's lines are, for errors
        self.started = False
        self.finished = False


class WorkerTrace:
    """The body-side tracer (`tracer.iter`, `tracer.all()`, `tracer.next()`, `tracer.result`,
    `tracer.stop()`, `.save()`) and the server of one caller trace on a worker."""

    def __init__(self, model: Any):
        self.model = model
        target = model._target
        self._input_location = target.input_location
        self._result_location = target.result_location
        self.native = _native.Trace(target.dispatcher)
        self.native.set_failures_abort(False)  # one request's failing body must not stop the others
        self.invokes: dict[int, _Invoke] = {}
        self._saved: dict[int, Any] = {}
        self._in_step: list[_Invoke] = []

    # ---- the body's API ----
    @property
    def iter(self) -> Iterations:
        """Generation steps: `for step in tracer.iter[a:b]` (step 0 is the prefill)."""
        return Iterations(self._input_location)

    def all(self) -> Iterations:
        """Every generation step of this invoke's request."""
        return Iterations(self._input_location)

    def next(self, step: int = 1) -> "WorkerTrace":
        """Later requests in this invoke refer to the step `step` further on."""
        mediator = mediator_of(self, "tracer.next")
        mediator.at_step(mediator.iteration + step)
        return self

    @property
    def result(self) -> ResultOf:
        """This invoke's finished request (vLLM's RequestOutput, once back in the caller)."""
        mediator = mediator_of(self, "result")
        mediator.request(self._result_location, 0)
        return ResultOf(self._invoke_of(mediator).index)

    def stop(self) -> None:
        """Ends this invoke's body here; values saved so far are kept."""
        raise EarlyStop()

    def record_save(self, value: Any) -> None:
        """Keeps `value` (and the variable holding it) for the caller."""
        self._saved[id(value)] = value

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"tracer.{name} is not available in a vLLM trace (the body runs in vLLM's worker)")

    # ---- the server's side ----
    def add_invoke(self, index: int, body: Any) -> None:
        """Adds the body shipped with invoke `index`'s request; it starts with the request's first step."""
        mediator = Mediator(self, body, self.native)
        self.invokes[index] = _Invoke(index, mediator, body.function.__code__.co_filename)

    def _invoke_of(self, mediator: Mediator) -> _Invoke:
        return next(invoke for invoke in self.invokes.values() if invoke.mediator is mediator)

    def begin_step(self, rows: dict[int, tuple[int, int]], batch: int) -> None:
        """Gives each invoke of this step its rows of a batch of `batch` rows."""
        self.set_rows(rows, batch)
        self._in_step = [self.invokes[i] for i in rows]

    def set_rows(self, rows: dict[int, tuple[int, int]], batch: int) -> None:
        """Each invoke's (start, count) rows of the values served next."""
        owned = sum(count for _, count in rows.values())
        self.native.set_batch(batch, len(rows) if owned == batch else max(2, len(rows)))
        for index, (start, count) in rows.items():
            self.native.set_rows(self.invokes[index].mediator.index, start, count)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Makes this trace the worker thread's active trace while the model runs part of a step;
        invokes whose request runs for the first time start here."""
        self.native.activate()
        try:
            for invoke in self._in_step:
                if not invoke.started:
                    invoke.started = True
                    if self.native.visits(self._input_location):
                        invoke.mediator.join_now()  # its request starts after the trace's first step
                    invoke.mediator.start()  # a failure is kept in mediator.error
            yield
        finally:
            self.native.deactivate()

    def invoke_finished(self, index: int) -> None:
        """vLLM finished invoke `index`'s request: loops waiting for later steps end, and the
        code after them runs up to `tracer.result` (served at the end) or its end."""
        invoke = self.invokes[index]
        invoke.finished = True
        if invoke.started:
            invoke.mediator.end_loops(self._input_location)  # (a bounded loop's warning stays on the worker)
            invoke.mediator.end_waits(keep_location=self._result_location)

    def end(self) -> list[tuple[int, dict, BaseException | None, list[str]]]:
        """Ends every body (serving `tracer.result`); per invoke: (index, saved variables, error,
        the body's lines the error passed through)."""
        for invoke in self.invokes.values():
            if invoke.started:
                invoke.mediator.end_loops(self._input_location)
        self.native.set_batch(len(self.invokes), len(self.invokes))
        self.native.activate()
        try:
            self.native.serve(self._result_location, None)
        finally:
            self.native.deactivate()
        outcome = []
        for index, invoke in self.invokes.items():
            mediator = invoke.mediator
            if invoke.started:
                mediator.end_waits()
            namespace = mediator.finish() or {}
            saved = {name: value for name, value in namespace.items()
                     if not name.startswith("__nnsight_fast") and self._saved.get(id(value)) is value}
            error = mediator.error
            if isinstance(error, (EarlyStop, Cancelled, LoopEnd)):
                error = None
            if not invoke.started and error is None:
                error = RuntimeError(f"invoke {index}: its request never ran a step")
            outcome.append((index, saved, error, _user_lines(error, invoke.filename) if error is not None else []))
        self._saved.clear()
        return outcome


def _user_lines(error: BaseException, filename: str) -> list[str]:
    """The lines of the traced body (in `filename`) that `error` passed through, innermost last."""
    frames = traceback.extract_tb(error.__traceback__)
    return [f'  File "{frame.filename}", line {frame.lineno}, in the traced block\n    {frame.line}'
            for frame in frames if frame.filename == filename]
