"""`tracer.barrier(n)`: invokes wait for each other, and share variables at that point.

    with model.generate(max_new_tokens=3) as tracer:
        barrier = tracer.barrier(2)
        with tracer.invoke("Madison Square Garden is in"):
            embeddings = model.transformer.wte.output
            barrier()                                  # waits for the other invoke
        with tracer.invoke("_ _ _ _ _"):
            barrier()                                  # ... and now sees `embeddings`
            model.transformer.wte.output = embeddings

Each participant publishes its variables when it arrives; when the n-th arrives,
every participant takes up the others' variables and goes on, in invoke order.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ..mediator import current_mediator
from ..capture import write_back

if TYPE_CHECKING:
    from .tracer import Tracer

_PRIVATE = "__nnsight_fast"


class Barrier:
    """A point several invokes of a trace reach together, sharing their variables.

    with model.trace() as tracer:
        barrier = tracer.barrier(2)
        with tracer.invoke(x1):
            h = model.layer1.output; barrier()
        with tracer.invoke(x2):
            barrier(); model.layer1.output[:] = h
    """

    def __init__(self, tracer: "Tracer", participants: int):
        if participants < 1:
            raise ValueError(f"tracer.barrier needs at least one participant, got {participants}")
        self.tracer = tracer
        self.participants = participants
        self.arrived: list = []

    def __call__(self) -> None:
        mediator = current_mediator()
        if mediator is None or mediator.tracer is not self.tracer:
            raise ValueError("Call a barrier inside one of its trace's `tracer.invoke(...)` blocks")
        frame = sys._getframe(1)
        shared = self.tracer.shared_variables
        shared.update((k, v) for k, v in frame.f_locals.items() if not k.startswith(_PRIVATE))
        self.arrived.append(mediator)
        if len(self.arrived) < self.participants:
            mediator.wait_at(self)  # resumed by the model side once the last one arrives
        else:
            waiting, self.arrived = self.arrived[:-1], []
            for other in waiting:
                mediator.native_trace.release(other.index)
        _take_up(frame, shared)

    def missing_message(self) -> str:
        """The error text when the run ends before every participant arrived."""
        return (
            f"tracer.barrier({self.participants}) was reached by only {len(self.arrived)} invoke(s); "
            "every participant must call it"
        )


def _take_up(frame, shared: dict) -> None:
    """Writes the shared variables this frame has as locals into it."""
    code = frame.f_code
    names = set(code.co_varnames) | set(code.co_cellvars) | set(code.co_freevars)
    write_back(frame, {k: v for k, v in shared.items() if k in names})
