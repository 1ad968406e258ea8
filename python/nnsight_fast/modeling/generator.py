"""Modules that generation output passes through, so a trace can read it.

    with model.generate("Hello", max_new_tokens=3) as tracer:
        ids = model.generator.output.save()                 # the finished ids
        for step in tracer.all():
            new = model.generator.streamer.output.save()    # each put() of the streamer

`Streamer` follows transformers' streamer protocol (`put` per step — the prompt
first, then each new token — and `end`); each `put` is one call of the module's
forward (its Gate once wrapped), without nn.Module's call machinery: `generate` puts
every step, traced or not.
"""

from __future__ import annotations

from typing import Any

import torch


class Streamer(torch.nn.Module):
    def forward(self, value: Any) -> Any:
        return value

    def put(self, value: Any) -> Any:
        return self.forward(value)

    def end(self) -> None:
        pass


class Generator(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.streamer = Streamer()

    def forward(self, value: Any) -> Any:
        return value
