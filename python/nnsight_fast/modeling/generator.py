"""Modules that generation output passes through, so a trace can read it.

    with model.generate("Hello", max_new_tokens=3) as tracer:
        ids = model.generator.output.save()                 # the finished ids
        for step in tracer.all():
            new = model.generator.streamer.output.save()    # the prompt, then each new token
        for step in tracer.iter[2:4]:
            hidden = model.transformer.h[-2].output
            token = model.generator.streamer.output.save()  # step i's token, after step i's forward

`Streamer` follows transformers' streamer protocol (`put` per step — the prompt
first, then each new token — and `end`); each `put` is one call of the module's
forward (its Gate once wrapped, without nn.Module's call machinery). Its output in a
trace is the next put from where the body is, as in nnsight: a loop that reads only
the streamer gets the prompt at step 0 and then each token, and one that reads a layer
first gets the token that step's forward produced.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import mediator as _mediator
from ..envoy import Envoy


class Streamer(torch.nn.Module):
    """`model.generator.streamer`: each generated token passes through it (`generate(streamer=...)`).

    with model.generate("Hello", max_new_tokens=3) as tracer:
        for step in tracer.all():
            token = model.generator.streamer.output.save()"""

    def forward(self, value: Any) -> Any:
        """Returns the step's token ids unchanged (a trace reads them here)."""
        return value

    def put(self, value: Any) -> Any:
        """transformers' streamer protocol: the prompt first, then each step's tokens."""
        return self.forward(value)

    def end(self) -> None:
        """transformers' streamer protocol: generation ended (nothing to do)."""
        pass


class Generator(torch.nn.Module):
    """The module a generation's final token ids pass through: `model.generator.output`.

    with model.generate("Hello", max_new_tokens=3):
        ids = model.generator.output.save()
    """

    def __init__(self) -> None:
        super().__init__()
        self.streamer = Streamer()

    def forward(self, value: Any) -> Any:
        """Returns the generated ids unchanged (a trace reads or replaces them here)."""
        return value


class StreamerEnvoy(Envoy):
    """The streamer's Envoy: `.output` is the next put the model makes from where the body is
    (not its put number `step`), so it lines up with whatever the body read before it."""

    @property
    def output(self) -> Any:
        """The next value put into the streamer (in a trace)."""
        mediator = _mediator.current_mediator()
        if mediator is None:
            return super().output  # the usual outside-a-trace error
        occurrence = max(mediator.occurrence_of(self.path), mediator.visits(self._output_location))
        return mediator.request(self._output_location, occurrence)
