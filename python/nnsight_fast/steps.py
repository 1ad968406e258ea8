"""Stepping through a run that calls the model several times (generation).

    with model.generate("Hello", max_new_tokens=5) as tracer:
        for step in tracer.iter[1:3]:          # steps 1 and 2 (also [i], [[0, 2]], [:])
            model.transformer.h[0].output[:] *= 2
        for step in tracer.all():              # every step the run makes
            logits = model.lm_head.output.save()
        with model.lm_head.all():              # the block form: runs once per step
            model.lm_head.output[:, :, 0] = 0
        tokens = tracer.result.save()          # code after the loop runs once the run is over

Each model call of the run is one step: a request made while the loop is at step
`i` binds to the module's `i`-th call. A step whose body asked for nothing waits
for the model to begin the next one, so a loop never spins ahead of the model.
When the run ends while a loop waits for a step that never came, the loop ends
there (the captured body catches `LoopEnd` around each `for`) and the code after it
runs; a loop that named that step (`iter[:10]`, `iter[[3]]`) also gets a UserWarning.
"""

from __future__ import annotations

from typing import Iterator

from .errors import LoopEnd, outside_trace_error
from .mediator import current_mediator
from .capture import CapturedBlock, write_back


class Iterations(CapturedBlock):
    """A selection of steps: iterate it (`for step in ...`) inside a trace body, or use it as a
    block that runs once per step (`with tracer.all():`, `with model.layer.all():`)."""

    def __init__(self, root_input_location: int, start: int = 0, stop: int | None = None,
                 steps: list[int] | None = None):
        self._sync_location = root_input_location
        self.start, self.stop, self.steps = start, stop, steps

    @property
    def bounded(self) -> bool:
        """True when the selection names its last step (`iter[:10]`, `iter[[3]]`)."""
        return self.stop is not None or self.steps is not None

    def __getitem__(self, key: slice | int | list[int]) -> "Iterations":
        if isinstance(key, slice):
            if key.step not in (None, 1):
                return Iterations(self._sync_location, steps=list(range(key.start or 0, key.stop, key.step)))
            return Iterations(self._sync_location, key.start or 0, key.stop)
        if isinstance(key, (list, tuple)):
            return Iterations(self._sync_location, steps=[int(k) for k in key])
        return Iterations(self._sync_location, int(key), int(key) + 1)

    def _indices(self) -> Iterator[int]:
        if self.steps is not None:
            yield from self.steps
            return
        step = self.start
        while self.stop is None or step < self.stop:
            yield step
            step += 1

    def run_block(self, body, capture) -> None:
        """The `with` form: the block runs once per step, then its variables go back to the caller."""
        namespace: dict = {}
        try:
            for _ in self:
                body.run(namespace.update)
        except LoopEnd as end:
            if end.loop is not self:
                raise
        write_back(body.frame, {k: v for k, v in namespace.items() if not k.startswith("__nnsight_fast")})

    def __iter__(self) -> Iterator[int]:
        mediator = current_mediator()
        if mediator is None:
            raise outside_trace_error("tracer.iter")
        previous = mediator.iteration
        mediator.enter_loop(self)
        try:
            requests_before = None
            for step in self._indices():
                if step < 0:
                    raise ValueError(f"tracer.iter: steps count from 0, got {step}")
                mediator.at_step(step)
                if requests_before == mediator.requests_made:
                    # The last step asked for nothing: wait for the model to begin this one.
                    if mediator.visits(self._sync_location) <= step:
                        mediator.request(self._sync_location, step)
                requests_before = mediator.requests_made
                yield step
        finally:
            mediator.leave_loop()
            mediator.at_step(previous)
