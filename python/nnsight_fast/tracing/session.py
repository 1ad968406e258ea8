"""`model.session()`: several traces in one block; values flow between them freely.

    with model.session():
        with model.trace(x):
            hidden = model.layer1.output          # no .save() needed inside the session ...
        with model.trace(y):
            model.layer1.output = hidden          # ... the next trace sees it
            out = model.output.save()             # only saved values leave the session
    print(out)

Inside a session a trace writes all of its variables back to the session's body;
when the session ends, only values saved in it (or in its traces) reach the caller.
"""

from __future__ import annotations

import threading
from typing import Any

from ..saving import enter_scope
from ..capture import CapturedBlock, write_back

class _ThreadSession(threading.local):
    session: "Session | None" = None


_current = _ThreadSession()


def current_session() -> "Session | None":
    """The session whose block runs on this thread, or None."""
    return _current.session


class Session(CapturedBlock):
    """`model.session()`: several traces whose variables flow from one to the next.

    with model.session():
        with model.trace(x): hidden = model.layer1.output
        with model.trace(y): model.layer1.output = hidden
    """

    def __init__(self, model: Any):
        self.model = model
        self._saved: dict[int, Any] = {}

    def record_save(self, value: Any) -> None:
        """Keeps `value` (and its variable) after the session."""
        self._saved[id(value)] = value

    def run_block(self, body, capture) -> None:
        """Runs the session's body; saved values go back to the caller."""
        namespace: dict = {}
        outer_session, outer_scope = current_session(), enter_scope(self)
        _current.session = self
        try:
            body.run(namespace.update)
        finally:
            _current.session = outer_session
            enter_scope(outer_scope)
        saved = {name: value for name, value in namespace.items() if self._saved.get(id(value)) is value}
        if outer_session is not None:
            for value in saved.values():
                outer_session.record_save(value)
        write_back(body.frame, saved)
