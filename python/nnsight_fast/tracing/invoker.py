"""`tracer.invoke(...)`: one batch entry of a trace, with its own intervention body.

    with model.trace() as tracer:
        with tracer.invoke(x):            # rows of x in the batch
            a = model.layer1.output.save()
        with tracer.invoke():             # no input: sees the whole batch
            b = model.layer1.output.save()

The body is captured (not run) when the `with` ends; once every invoke of the trace
is collected, each body runs as a mediator (mediator.py) in step with the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..capture import CapturedBlock, CapturedBody

if TYPE_CHECKING:
    from .tracer import Tracer


@dataclass
class Invoke:
    """A collected invoke: its compiled body and its inputs (None: the whole batch)."""

    body: CapturedBody
    inputs: tuple[tuple, dict] | None


class Invoker(CapturedBlock):
    """`tracer.invoke(...)`: one batch entry of a trace with its own body.

    with model.trace() as tracer:
        with tracer.invoke(x1):
            a = model.layer1.output.save()
    """

    def __init__(self, tracer: "Tracer", args: tuple, kwargs: dict):
        if tracer.running:
            raise ValueError(
                "Cannot invoke while the model runs: open every `tracer.invoke(...)` directly in the "
                "trace body, not inside another invoke"
            )
        self.tracer = tracer
        self.inputs = (args, kwargs) if args or kwargs else None

    def run_block(self, body: CapturedBody, capture: Any) -> None:
        """Collects the body; it runs when the trace's own block ends."""
        self.tracer.add_invoke(Invoke(body, self.inputs))
