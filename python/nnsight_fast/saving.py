"""`.save()`: mark a value to survive the trace.

    with model.trace(x):
        h = model.layer1.output.save()        # every object has .save()
        o = nnsight_fast.save(model.output)   # the explicit form
    print(h.shape)                            # saved names are written back

A value is kept (and its variable written back to the caller) only when saved.
`.save()` outside a trace raises ValueError.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from typing import Any, Protocol

from . import _native


class SaveScope(Protocol):
    """Whatever collects saves: the tracer of the body running now, else this thread's
    tracer or session (a trace body that only opens invokes, a session body)."""

    def record_save(self, value: Any) -> None:
        """Keeps `value` (and the variable holding it) after the block."""


class _ThreadScope(threading.local):
    scope: SaveScope | None = None


_current = _ThreadScope()


def current_scope() -> SaveScope | None:
    """This thread's save scope outside bodies (a trace or session being set up), or None."""
    return _current.scope


def enter_scope(scope: SaveScope | None) -> SaveScope | None:
    """Makes `scope` this thread's save scope; returns the previous one."""
    previous = _current.scope
    _current.scope = scope
    return previous


def _save_outside_bodies(value: Any) -> Any:
    """save() where no body runs: a trace or session being set up keeps the value."""
    scope = _current.scope
    if scope is None:
        raise ValueError(
            "Cannot save a value outside of a trace: call `.save()` inside `with model.trace(...)`"
        )
    scope.record_save(value)
    return value


# save(value): marks `value` to be kept after the trace; returns it unchanged. In C
# (csrc/saving.cpp): in a body, the body's tracer records it; elsewhere the function above.
save = _native.save
_native.configure_save(_save_outside_bodies)


def _define_strict_classes_first() -> None:
    """Imports the classes that refuse an unannotated public attribute on `object`.

    anyio's TypedAttributeSet subclasses check `dir(cls)` when they are defined and
    would reject the mounted `save`; defining them before the mount avoids that.
    """
    import importlib.util

    if importlib.util.find_spec("anyio") is None:
        return
    for name in ("anyio.abc", "anyio.streams.tls", "anyio.streams.file"):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - an optional dependency's own import problem is not ours
            pass


class _UnmountedWhileImported(importlib.abc.MetaPathFinder):
    """Takes `save` off `object` while the modules that list every method of their classes
    at import run: torch.compile's inductor builds its op table from `dir()` of a handler
    class at import (`torch._inductor.ops_handler`), and `save` must not become an op."""

    MODULES = frozenset({"torch._inductor.ops_handler"})

    def find_spec(self, name, path, target=None):
        if name not in self.MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _UnmountingLoader(spec.loader)
        return spec


class _UnmountingLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        _native.unmount_from_object("save")
        try:
            self._loader.exec_module(module)
        finally:
            _native.mount_on_object("save", _native.save_method)


_define_strict_classes_first()
sys.meta_path.insert(0, _UnmountedWhileImported())
_native.mount_on_object("save", _native.save_method)  # value.save(): save(value)
