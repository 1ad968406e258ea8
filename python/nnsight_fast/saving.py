"""`.save()`: mark a value to survive the trace.

    with model.trace(x):
        h = model.layer1.output.save()        # every object has .save()
        o = nnsight_fast.save(model.output)   # the explicit form
    print(h.shape)                            # saved names are written back

A value is kept (and its variable written back to the caller) only when saved.
`.save()` outside a trace raises ValueError.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from . import _native


class SaveScope(Protocol):
    """Whatever collects saves: the tracer of the body running now, else this thread's
    tracer or session (a trace body that only opens invokes, a session body)."""

    def record_save(self, value: Any) -> None: ...


class _ThreadScope(threading.local):
    scope: SaveScope | None = None


_current = _ThreadScope()


def current_scope() -> SaveScope | None:
    return _current.scope


def enter_scope(scope: SaveScope | None) -> SaveScope | None:
    """Makes `scope` this thread's save scope; returns the previous one."""
    previous = _current.scope
    _current.scope = scope
    return previous


def save(value: Any) -> Any:
    """Marks `value` to be kept after the trace; returns it unchanged."""
    mediator = _native.current_mediator()
    scope = mediator.tracer if mediator is not None else _current.scope
    if scope is None:
        raise ValueError(
            "Cannot save a value outside of a trace: call `.save()` inside `with model.trace(...)`"
        )
    scope.record_save(value)
    return value


def _define_strict_classes_first() -> None:
    """Imports the classes that refuse an unannotated public attribute on `object`.

    anyio's TypedAttributeSet subclasses check `dir(cls)` when they are defined and
    would reject the mounted `save`; defining them before the mount avoids that.
    """
    import importlib
    import importlib.util

    if importlib.util.find_spec("anyio") is None:
        return
    for name in ("anyio.abc", "anyio.streams.tls", "anyio.streams.file"):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - an optional dependency's own import problem is not ours
            pass


_define_strict_classes_first()
_native.mount_on_object("save", save)
