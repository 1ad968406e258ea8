"""Errors users see, and the control-flow signals the tracer uses internally.

    from nnsight_fast import OutOfOrderError
    try:
        with model.trace(x):
            late = model.layer2.output
            early = model.layer1.output   # the model already passed layer1
    except OutOfOrderError as e:
        print(e)   # 'model.layer1.output.i0' was requested but the model already ran past it
"""

from __future__ import annotations

import os
from types import TracebackType


class OutOfOrderError(Exception):
    """A value was requested after the model had already passed its location."""


class EarlyStop(BaseException):
    """Raised by `tracer.stop()`: ends the trace early without an error."""


class Cancelled(BaseException):
    """Raised inside a mediator whose request will never be served (the trace is ending)."""


class Abort(BaseException):
    """Raised by a Gate to unwind the model when a mediator failed."""


class LoopEnd(BaseException):
    """Raised at a request inside an iteration loop (`loop`) when the run ends before `step`.

    The captured body catches it around that very loop (capture.py), so the loop
    ends there and the code after it runs."""

    def __init__(self, loop, step: int, steps_made: int, where: str | None = None):
        super().__init__(step)
        self.loop, self.step, self.steps_made = loop, step, steps_made
        self.where = where  # the value the body waited for, as 'model.lm_head.output.i5'

    def warning(self) -> str | None:
        """The UserWarning text for a loop that named a step the run never made (None for open loops)."""
        if not self.loop.bounded:
            return None
        where = self.where or f"step {self.step}"
        return (
            f"'{where}' was never reached: tracer.iter asked for step {self.step} but the run made only "
            f"{self.steps_made} step(s); the loop ended there (values saved in earlier steps are kept). Ask for "
            "fewer steps, or pin the run's length (e.g. min_new_tokens=)."
        )


class SkipBody(BaseException):
    """Raised at the first line of a traced `with` body so Python skips it; we run it ourselves."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def outside_trace_error(what: str) -> ValueError:
    """The ValueError for `what` (e.g. 'model.fc1.output') used outside a trace body."""
    return ValueError(
        f"Cannot access `{what}` outside of interleaving: use it inside `with model.trace(...)`"
    )


def strip_library_frames(traceback: TracebackType | None) -> TracebackType | None:
    """The traceback without nnsight_fast's own frames, so it ends at the user's line."""
    kept = []
    while traceback is not None:
        if not traceback.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
            kept.append(traceback)
        traceback = traceback.tb_next
    head = None
    for entry in reversed(kept):
        head = TracebackType(head, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return head
