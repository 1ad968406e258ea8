"""`model.trace(...)`: run the model once while the `with` body reads and edits it.

    with model.trace(x) as tracer:               # the body is one invoke over x
        h = model.layer1.output.save()
        model.layer2.output[:] = 0
        out = model.output.save()

    with model.trace() as tracer:                # several invokes, batched by the model
        with tracer.invoke(x1): a = model.layer1.output.save()
        with tracer.invoke(): b = model.layer1.output.save()   # the whole batch

On exit the body (or each invoke's body) runs as a mediator (a greenlet on this
thread, mediator.py) in step with the model; only values marked `.save()` are written back to the
caller's variables. Errors raised in the body surface here with their own type and
a traceback that ends at the user's line; after any error the model is clean.
"""

from __future__ import annotations

import functools
import sys
import warnings
from typing import TYPE_CHECKING, Any

import torch

from .. import _native
from ..capture import CapturedBlock, write_back
from ..config import CONFIG
from ..errors import Abort, Cancelled, EarlyStop, LoopEnd, strip_library_frames
from ..mediator import Mediator, current_mediator, mediator_of
from ..saving import enter_scope
from ..steps import Iterations
from .barrier import Barrier
from .cache import CacheDict
from .invoker import Invoke, Invoker
from .session import current_session

if TYPE_CHECKING:
    from ..envoy import Envoy
    from .target import TraceTarget


class Tracer(CapturedBlock):
    """`model.trace(...)`: one run of the model while the `with` body reads and edits it.

    with model.trace(x) as tracer:
        hidden = model.layer1.output.save()
        tracer.stop()                       # also invoke, iter, all, next, cache, barrier, result
    """

    running = False
    _native = None
    # Made on first use (most traces have none)
    _warnings: list[str] | tuple = ()
    _caches: list | tuple = ()  # tracer.cache() requests
    _cache_records: list | tuple = ()  # (CacheDict, [(path, kind, sink)]) once registered

    def __init__(self, model: "Envoy", target: "TraceTarget", args: tuple, kwargs: dict):
        self.model = model  # the root Envoy, as the user knows it
        self.target = target
        self._session = current_session()  # inside model.session(): everything flows back to it
        outer = current_mediator()  # a trace opened inside another trace's body: its saves are that body's too
        self._outer = outer.tracer if outer is not None else None
        self._inputs = (args, kwargs) if args or kwargs else None
        self._invokes: list[Invoke] = []
        self._saved: dict[int, Any] = {}
        self._namespaces: list[dict] = []
        self.mediators: list[Mediator] = []

    @functools.cached_property
    def shared_variables(self) -> dict[str, Any]:
        """Variables handed between invokes at a barrier."""
        return {}

    # ---- the `with` statement ----
    def run_block(self, body, capture) -> None:
        """Runs the model with the trace's bodies, then writes saved variables back."""
        try:
            if self._inputs is not None:
                self._invokes.append(Invoke(body, self._inputs))
            else:
                self._run_trace_body(body)
            self._execute()
        except EarlyStop:  # tracer.stop(): what was saved so far is kept
            pass
        except BaseException as failure:  # noqa: BLE001 - re-raised with a clean traceback
            if not CONFIG.APP.DEBUG:
                failure = failure.with_traceback(strip_library_frames(failure.__traceback__))
            raise failure
        finally:
            self._invokes.clear()
        # The caller's variables get the values marked .save() (in a session, every variable)
        saved, namespaces = self._saved, self._namespaces
        if saved or self._session is not None:
            if self._session is None:
                values = _native.pick_saved(namespaces, saved)
            else:
                values = {name: value for namespace in namespaces for name, value in namespace.items()
                          if not name.startswith("__nnsight_fast") or saved.get(id(value)) is value}
            self._saved = {}
            write_back(body.frame, values)
        namespaces.clear()

    def _run_trace_body(self, body) -> None:
        previous = enter_scope(self)
        try:
            body.run(self._namespaces.append)
        finally:
            enter_scope(previous)

    # ---- API used in the body ----
    def invoke(self, *args: Any, **kwargs: Any) -> Invoker:
        """A batch entry with its own body; no arguments: the whole batch."""
        return Invoker(self, args, kwargs)

    @property
    def iter(self) -> Iterations:
        """Steps of the run: `for step in tracer.iter[a:b]` (also `[i]`, `[[i, j]]`, `[:]`)."""
        return Iterations(self.target.input_location)

    def all(self) -> Iterations:
        """Every step the run makes: `for step in tracer.all(): ...`."""
        return Iterations(self.target.input_location)

    def next(self, step: int = 1) -> "Tracer":
        """Later requests in this invoke refer to the step `step` further on."""
        mediator = mediator_of(self, "tracer.next")
        mediator.at_step(mediator.iteration + step)
        return self

    def cache(self, modules=None, device=torch.device("cpu"), dtype=None, detach: bool = True,
              include_output: bool = True, include_inputs: bool = False) -> CacheDict:
        """Records the chosen modules' values (all modules when None) after edits; see tracing/cache.py."""
        mediator = current_mediator()
        if mediator is not None and mediator.requests_made:
            raise ValueError(
                "tracer.cache() must be declared before the block reads or edits any value: move it to the "
                "top of the block"
            )
        envoys = self.model.modules() if modules is None else [
            self.model.get(m) if isinstance(m, str) else m for m in modules
        ]
        kinds = [kind for kind, wanted in (("output", include_output), ("inputs", include_inputs)) if wanted]
        cache = CacheDict(aliases=self.target.path_aliases)
        request = (cache, [(e.path, kind, e._output_location if kind == "output" else e._input_location)
                           for e in envoys for kind in kinds],
                   torch.device(device) if device is not None else None, dtype, detach,
                   mediator.index if mediator is not None else -1)
        self._caches = [*self._caches, request]
        if self._native is not None:
            self._register_cache(request)
        self.record_save(cache)
        return cache

    def _register_cache(self, request) -> None:
        cache, locations, device, dtype, detach, mediator_index = request
        records = []
        for path, kind, location in locations:
            sink: list = []
            self._native.add_cache_observer(location, sink, detach, device, dtype, mediator_index)
            records.append((path, kind, sink))
        self._cache_records = [*self._cache_records, (cache, records)]

    def barrier(self, participants: int) -> Barrier:
        """A point that `participants` invokes reach together (see tracing/barrier.py)."""
        return Barrier(self, participants)

    def stop(self) -> None:
        """Ends the trace here: the model stops, values saved so far are kept."""
        raise EarlyStop()

    @property
    def result(self) -> Any:
        """The return value of the traced call."""
        return mediator_of(self, "result").request(self.target.result_location, 0)

    def record_save(self, value: Any) -> None:
        """Keeps `value` (and the variable holding it) after the trace."""
        self._saved[id(value)] = value
        if self._session is not None:
            self._session.record_save(value)
        if self._outer is not None:
            self._outer.record_save(value)

    def add_invoke(self, invoke: Invoke) -> None:
        """Adds an invoke collected from the trace's body."""
        self._invokes.append(invoke)

    # ---- running ----
    loads_model = True  # False: the run needs no weights (model.scan)
    # A subclass's own run of the model, `_call_model(args, kwargs)` (generate, fake tensors);
    # None: the target's run.
    _call_model = None

    def _execute(self) -> None:
        target = self.target
        invokes = self._invokes
        if len(invokes) == 1 and invokes[0].inputs is not None:  # the usual trace: one body over its inputs
            with_inputs = invokes
            inputs = [invokes[0].inputs]
        else:
            with_inputs = [invoke for invoke in invokes if invoke.inputs is not None]
            if not with_inputs:
                raise ValueError(
                    "Nothing to run: give the trace an input (`model.trace(x)`) or open at least one "
                    "`tracer.invoke(x)` with an input"
                )
            inputs = [invoke.inputs for invoke in with_inputs]
        args, kwargs, sizes = target.prepare_batch(inputs, self.loads_model)
        try:  # the model's last trace, reset: no new native object per trace (pop: atomic between threads)
            native = target.spare_traces.pop()
        except IndexError:
            native = _native.Trace(target.dispatcher)
        native.set_batch(sum(sizes), len(with_inputs))
        threaded = target.dispatcher.threaded
        # Saves go straight into self._saved unless a session or an outer trace must see each one
        saves_into = self._saved if self._session is None and self._outer is None else None
        mediators = self.mediators
        model_error: BaseException | None = None
        try:
            for edit in target.edits:  # persistent edits run first, over the whole batch
                mediators.append(Mediator(self, edit.body, native, (0, -1), threaded=threaded, collects=False,
                                          saves_into=saves_into))
            start = 0
            for invoke, size in zip(with_inputs, sizes):  # each input invoke owns its rows
                mediators.append(Mediator(self, invoke.body, native, (start, size), threaded=threaded,
                                          saves_into=saves_into))
                start += size
            if len(with_inputs) < len(invokes):
                for invoke in invokes:
                    if invoke.inputs is None:  # no input: the whole batch
                        mediators.append(Mediator(self, invoke.body, native, (0, -1), threaded=threaded,
                                                  saves_into=saves_into))
            # ---- the run: bodies and model in step ----
            native.activate()
            self._native = native
            self.running = True
            try:
                for request in self._caches:  # declared at trace level, before the run
                    self._register_cache(request)
                for mediator in mediators:
                    if mediator.start():
                        raise Abort()
                    native.resume_released()
                call_model = self._call_model
                result = target.run(args, kwargs) if call_model is None else call_model(args, kwargs)
                if native.parked:
                    self._end_loops()  # before the result is served: the code after a loop may ask for it
                native.serve(target.result_location, result)
                if native.parked:
                    self._end_unserved_requests()
            except Abort:
                pass
            except BaseException as error:  # noqa: BLE001 - the model's own error, or Ctrl-C
                model_error = error
            finally:
                self.running = False
                self._native = None
                native.deactivate()
                if native.parked:
                    for mediator in mediators:
                        if mediator.busy:
                            mediator.cancel()
            failed = False
            for mediator in mediators:
                if mediator.error is not None:
                    failed = True
                    break
            if failed or model_error is not None or self._cache_records or self._warnings:
                self._report(mediators, model_error)
        finally:
            self.mediators = []
            namespaces = self._namespaces
            failed = False
            for mediator in mediators:
                namespace = mediator.finish(reuse_handoff=True)
                if namespace is not None:
                    namespaces.append(namespace)
                failed = failed or mediator.error is not None
            native.reset()  # drops what the run held (the bodies' handoffs, cache sinks)
            if len(target.spare_traces) < 2:
                target.spare_traces.append(native)
            if failed:
                _raise_late_interrupt(mediators)

    def _report(self, mediators: list, model_error: BaseException | None) -> None:
        """After the run: fills the caches, warns, and raises the first body's error (else the model's)."""
        if self._cache_records:
            for cache, records in self._cache_records:
                cache._fill(records)
            self._cache_records = ()
        if self._warnings:
            for message in self._warnings:
                warnings.warn(message, UserWarning, stacklevel=4)
            self._warnings = ()
        for mediator in mediators:
            failure = mediator.error
            if failure is None:
                continue
            if isinstance(failure, LoopEnd):  # a loop the body could not catch (e.g. in a comprehension)
                warnings.warn(f"tracer.iter: the run ended at step {failure.steps_made}; the loop at step "
                              f"{failure.step} was cut and the rest of that invoke did not run", UserWarning,
                              stacklevel=4)
            elif not isinstance(failure, Cancelled):
                raise failure
        if model_error is not None:
            raise model_error

    def _end_loops(self) -> None:
        """The model made its last step: loops waiting for another step end there, and the
        code after them runs (it may still ask for what comes after the steps)."""
        for mediator in self.mediators:
            if mediator.loops:
                self._warnings = [*self._warnings, *mediator.end_loops(self.target.input_location)]

    def _end_unserved_requests(self) -> None:
        """The run is over: a request still parked will never be served (OutOfOrderError)."""
        self._end_loops()
        for mediator in self.mediators:
            if not mediator.busy:
                continue
            mediator.end_waits()
            if mediator.busy and mediator.at_barrier is not None:
                mediator.cancel(ValueError(mediator.at_barrier.missing_message()))


def _raise_late_interrupt(mediators: list) -> None:
    """A Ctrl-C that reached a body while the trace was ending (its error was stored, not
    raised) surfaces here, unless it is already on its way out."""
    for mediator in mediators:
        if isinstance(mediator.error, KeyboardInterrupt) and mediator.error is not sys.exc_info()[1]:
            raise mediator.error
