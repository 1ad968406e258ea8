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
    """Whatever collects saves on this thread: a tracer or a mediator's tracer."""

    def record_save(self, value: Any) -> None: ...


_current = threading.local()


def current_scope() -> SaveScope | None:
    return getattr(_current, "scope", None)


def enter_scope(scope: SaveScope | None) -> SaveScope | None:
    """Makes `scope` this thread's save scope; returns the previous one."""
    previous = getattr(_current, "scope", None)
    _current.scope = scope
    return previous


def save(value: Any) -> Any:
    """Marks `value` to be kept after the trace; returns it unchanged."""
    scope = getattr(_current, "scope", None)
    if scope is None:
        raise ValueError(
            "Cannot save a value outside of a trace: call `.save()` inside `with model.trace(...)`"
        )
    scope.record_save(value)
    return value


_native.mount_on_object("save", save)
