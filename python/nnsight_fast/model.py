"""NNsight: wrap any torch.nn.Module so its internals can be read and edited in a trace.

    net = torch.nn.Sequential(torch.nn.Linear(5, 10), torch.nn.Linear(10, 2))
    model = NNsight(net)
    with model.trace(torch.rand(1, 5)):
        hidden = model[0].output.save()
        out = model.output.save()
    model(torch.rand(1, 5))        # outside a trace: the plain module, at full speed

`NNsight(net, threaded=True)` for a model that calls modules from a thread pool.

Wrapping installs a native Gate as each module's `forward` (an instance attribute);
it calls the original forward directly unless this thread is tracing this model.
A subclass defines how several invokes' inputs form one batch (`_batch_inputs`);
the base class runs one input invoke per trace. Tracers reach the model only through
its `ModelTarget` (tracing/target.py).
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

import torch

from . import _native
from .envoy import Envoy
from .tracing.edit import EditTracer, export_edits, import_edits
from .tracing.scan import ScanTracer
from .tracing.session import Session
from .tracing.tracer import Tracer


class NNsight(Envoy):
    """Any torch.nn.Module, wrapped so its internals can be read and edited in a trace.

    model = NNsight(net)                    # rename=, envoys=, threaded= (see the module docstring)
    with model.trace(x) as tracer:
        hidden = model.layer1.output.save()
    model(x)                                # untraced: the plain module
    """

    def __init__(self, module: torch.nn.Module, rename: dict | None = None, envoys: Any = None,
                 threaded: bool = False):
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"NNsight wraps a torch.nn.Module, got {type(module).__name__}")
        if envoys is None:  # a subclass may name its Envoy classes: `class MyModel(NNsight): envoys = ...`
            envoys = getattr(type(self), "envoys", None)
        super().__init__(module, None, "model", rename, envoys)
        self._gates.dispatcher.threaded = threaded
        self.__dict__["_target"] = ModelTarget(self)

    @property
    def threaded(self) -> bool:
        """True when the model runs some modules on other OS threads (a thread pool in its
        forward): bodies then run on worker threads, which any thread can serve, and module
        calls made on threads that run no trace join this model's running trace."""
        return self._gates.dispatcher.threaded

    @threaded.setter
    def threaded(self, value: bool) -> None:
        self._gates.dispatcher.threaded = bool(value)

    # ---- tracing ----
    def trace(self, *args: Any, trace: bool = True, fn: Any = None, **kwargs: Any) -> Tracer | Any:
        """A trace of one forward pass; with inputs, the `with` body is one invoke over them.

        fn=callable runs `fn(*inputs, **kwargs)` instead of the model (e.g. `fn=hf_model.generate`):
        each call of the wrapped model inside it is one step (`tracer.iter`, `tracer.all()`).
        trace=False runs the model once on the prepared inputs and returns its output."""
        target = self._target if fn is None else CallTarget(self, fn)
        if not trace:
            args, kwargs, _ = target.prepare_batch([(args, kwargs)])
            return target.run(args, kwargs)
        return Tracer(self, target, args, kwargs)

    # ---- persistent edits (tracing/edit.py) ----
    def edit(self, *, inplace: bool = False) -> EditTracer:
        """`with model.edit() as edited:` binds an edited copy; inplace=True edits this model."""
        model = self if inplace else self._edited_copy()
        return EditTracer(model, model._target.edits)

    def _edited_copy(self) -> "NNsight":
        """A second handle on the same model (same modules and gates) with its own edits."""
        twin = copy.copy(self)
        twin.__dict__["_target"] = ModelTarget(twin, edits=list(self._target.edits))
        return twin

    def clear_edits(self) -> None:
        """Removes every persistent edit made with `model.edit(inplace=True)` on this model."""
        self._target.edits.clear()

    def export_edits(self, name: str, export_dir: str | None = None, variant: str = "__default__") -> str:
        """Writes this model's persistent edits to a file (see tracing/edit.py); returns its path."""
        return export_edits(self._target.edits, name, export_dir, variant)

    def import_edits(self, name: str, export_dir: str | None = None, variant: str = "__default__") -> None:
        """Adds the persistent edits saved by `export_edits` to this model."""
        import_edits(self.get, self._target.edits, name, export_dir, variant)

    def scan(self, *args: Any, **kwargs: Any) -> Tracer:
        """A trace with fake tensors: shapes without compute (see tracing/scan.py)."""
        return ScanTracer(self, self._target, args, kwargs)

    def session(self) -> Session:
        """Several traces in one block (see tracing/session.py)."""
        return Session(self)

    # ---- what a subclass may redefine ----
    def _prepare_run(self) -> None:
        """Called before a trace starts its mediators (a lazy model loads its weights here)."""

    def _prepare_inputs(self, *args: Any, **kwargs: Any) -> tuple[tuple, dict, int]:
        """One invoke's inputs as (args, kwargs, batch size)."""
        return args, kwargs, _batch_size(args, kwargs)

    def _batch_inputs(self, prepared: list[tuple[tuple, dict, int]]) -> tuple[tuple, dict]:
        """Several invokes' prepared inputs as one batch; a subclass defines how."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot batch {len(prepared)} input invokes: put all inputs in one "
            "invoke, or use a model class that defines `_batch_inputs` (e.g. LanguageModel)"
        )

    def _run(self, args: tuple, kwargs: dict) -> Any:
        return self._module(*args, **kwargs)


class ModelTarget:
    """An NNsight as tracers see it (tracing/target.py). Held by the model; holds it weakly,
    so a dropped model is freed at once."""

    def __init__(self, model: NNsight, edits: list | None = None):
        gates = model._gates
        self._model = weakref.ref(model)
        self.dispatcher = gates.dispatcher
        self.input_location = model._input_location
        self.result_location = gates.dispatcher.intern("model.result")
        self.edits = [] if edits is None else edits
        self.path_aliases = gates.naming.alias_paths
        self.spare_traces: list = []  # native Traces of finished traces, reset, for the next ones
        # What the model's class keeps of NNsight's defaults (their calls are skipped)
        cls = type(model)
        self._prepares = cls._prepare_run is not NNsight._prepare_run
        self._plain_inputs = cls._prepare_inputs is NNsight._prepare_inputs
        self._plain_run = cls._run is NNsight._run

    @property
    def module(self) -> torch.nn.Module:
        """The wrapped torch module."""
        return self._model()._module

    def prepare_batch(self, inputs: list[tuple[tuple, dict]], load: bool = True) -> tuple[tuple, dict, Any]:
        """The invokes' inputs as one batch: (args, kwargs, each invoke's batch size); with
        `load`, readies the model first (a lazy model loads its weights)."""
        model = self._model()
        if load and self._prepares:
            model._prepare_run()
        if len(inputs) == 1:
            args, kwargs = inputs[0]
            if self._plain_inputs:
                return args, kwargs, (_batch_size(args, kwargs),)
            args, kwargs, size = model._prepare_inputs(*args, **kwargs)
            return args, kwargs, (size,)
        prepared = [model._prepare_inputs(*args, **kwargs) for args, kwargs in inputs]
        args, kwargs = model._batch_inputs(prepared)
        return args, kwargs, [size for _, _, size in prepared]

    def run(self, args: tuple, kwargs: dict) -> Any:
        """Runs the model on the batch."""
        model = self._model()
        return model._module(*args, **kwargs) if self._plain_run else model._run(args, kwargs)


class CallTarget(ModelTarget):
    """A model's TraceTarget whose run is another callable (`trace(..., fn=hf_model.generate)`)."""

    def __init__(self, model: NNsight, fn: Any):
        super().__init__(model, edits=model._target.edits)
        self._fn = fn

    def run(self, args: tuple, kwargs: dict) -> Any:
        """Calls `fn` on the batch (each model call inside it is a step)."""
        return self._fn(*args, **kwargs)


# The batch size of a call's inputs: dim 0 of the first tensor with a dimension (positional
# arguments first, then keyword ones), 1 when there is none (csrc/batch_values.cpp).
_batch_size = _native.batch_size
