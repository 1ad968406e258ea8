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
    def __init__(self) -> None:
        super().__init__()
        self._prompt_pending = False

    def forward(self, value: Any) -> Any:
        return value

    def begin(self) -> None:
        """A generation starts: its first put is the prompt."""
        self._prompt_pending = True

    def put(self, value: Any) -> Any:
        if self._prompt_pending:
            self._prompt_pending = False
            return value
        return self.forward(value)

    def end(self) -> None:
        pass


class Generator(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.streamer = Streamer()

    def forward(self, value: Any) -> Any:
        return value
