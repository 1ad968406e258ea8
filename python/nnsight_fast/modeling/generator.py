"""Modules that generation output passes through, so a trace can read it.

    with model.generate("Hello", max_new_tokens=3) as tracer:
        ids = model.generator.output.save()                 # the finished ids
        for step in tracer.all():
            new = model.generator.streamer.output.save()    # the token(s) sampled at this step

`Streamer` follows transformers' streamer protocol (`put` per step — the prompt
first, then each new token — and `end`). Each new token's `put` is one call of the
module's forward (its Gate once wrapped, without nn.Module's call machinery), so its
i-th call is step i's token and lines up with the model's i-th call; the prompt's put
(before step 0) is not a call. `begin()` starts a run.
"""

from __future__ import annotations

from typing import Any

import torch


class Streamer(torch.nn.Module):
    """`model.generator.streamer`: each generated token passes through it (`generate(streamer=...)`).

    with model.generate("Hello", max_new_tokens=3) as tracer:
        for step in tracer.all():
            token = model.generator.streamer.output.save()"""

    def __init__(self) -> None:
        super().__init__()
        self._prompt_pending = False

    def forward(self, value: Any) -> Any:
        """Returns the step's token ids unchanged (a trace reads them here)."""
        return value

    def begin(self) -> None:
        """A generation starts: its first put is the prompt."""
        self._prompt_pending = True

    def put(self, value: Any) -> Any:
        """transformers' streamer protocol: the prompt first (not a call), then each step's tokens."""
        if self._prompt_pending:
            self._prompt_pending = False
            return value
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
