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
the base class runs one input invoke per trace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from . import _native
from .envoy import Envoy
from .naming import Naming
from .tracing.tracer import Tracer

if TYPE_CHECKING:
    from .tracing.session import Session


class NNsight(Envoy):
    def __init__(self, module: torch.nn.Module, rename: dict | None = None, envoys: Any = None,
                 threaded: bool = False):
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"NNsight wraps a torch.nn.Module, got {type(module).__name__}")
        self.__dict__.update(_dispatcher=_native.Dispatcher(), _gated={}, _source_sites={},
                             _naming=Naming(rename, envoys), _default_edits=[])
        self._dispatcher.threaded = threaded
        super().__init__(module, "model", None)
        self.__dict__["_result_location"] = self._dispatcher.intern("result")
        self._naming.mount(self)

    @property
    def threaded(self) -> bool:
        """True when the model runs some modules on other OS threads (a thread pool in its
        forward): bodies then run on worker threads, which any thread can serve, and module
        calls made on threads that run no trace join this model's running trace."""
        return self._dispatcher.threaded

    @threaded.setter
    def threaded(self, value: bool) -> None:
        self._dispatcher.threaded = bool(value)

    def _envoy_class_for(self, module: torch.nn.Module, path: str) -> type:
        return self._naming.envoy_class(module, path)

    def _gate_module(self, module: torch.nn.Module, path: str) -> tuple[int, int]:
        """Installs the Gate on `module` (once per model); returns its (input, output) locations."""
        known = self._gated.get(id(module))
        if known is not None:
            return known
        locations = (self._dispatcher.intern(f"{path}.input"), self._dispatcher.intern(f"{path}.output"))
        module.__dict__["forward"] = _native.make_gate(module.forward, self._dispatcher, *locations)
        self._gated[id(module)] = locations
        return locations

    def _path_aliases(self) -> dict[str, str]:
        """Alias path -> real path, for renamed modules."""
        return self._naming.alias_paths

    # ---- tracing ----
    def trace(self, *args: Any, trace: bool = True, **kwargs: Any) -> Tracer | Any:
        """A trace of one forward pass; with inputs, the `with` body is one invoke over them.

        trace=False runs the model once on the prepared inputs and returns its output."""
        if not trace:
            self._prepare_run()
            args, kwargs, _ = self._prepare_inputs(*args, **kwargs)
            return self._run(args, kwargs)
        return Tracer(self, args, kwargs)

    # ---- persistent edits (tracing/edit.py) ----
    def edit(self, *, inplace: bool = False):
        """`with model.edit() as edited:` binds an edited copy; inplace=True edits this model."""
        from .tracing.edit import EditTracer

        return EditTracer(self, inplace)

    def clear_edits(self) -> None:
        self._default_edits.clear()

    def export_edits(self, name: str, export_dir: str | None = None, variant: str = "__default__") -> str:
        from .tracing.edit import export_edits

        return export_edits(self, name, export_dir, variant)

    def import_edits(self, name: str, export_dir: str | None = None, variant: str = "__default__") -> None:
        from .tracing.edit import import_edits

        import_edits(self, name, export_dir, variant)

    def scan(self, *args: Any, **kwargs: Any) -> Tracer:
        """A trace with fake tensors: shapes without compute (see tracing/scan.py)."""
        from .tracing.scan import ScanTracer

        return ScanTracer(self, args, kwargs)

    def session(self) -> "Session":
        """Several traces in one block (see tracing/session.py)."""
        from .tracing.session import Session

        return Session(self)

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


def _batch_size(args: tuple, kwargs: dict) -> int:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    return 1
