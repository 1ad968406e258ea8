"""TraceTarget: what a tracer needs from the model it runs (NNsight provides one).

    class MyTarget:                              # any object with these members
        dispatcher = gates.dispatcher            # the model's native Dispatcher
        input_location = root_input_location     # the root module's input: one visit per step
        result_location = dispatcher.intern("model.result")
        edits = []                               # persistent edits (tracing/edit.py), run first
        path_aliases = {}                        # alias path -> real path (rename=)
        module = net                             # the wrapped torch module
        def prepare(self): ...                   # before a run (a lazy model loads weights)
        def prepare_inputs(self, *args, **kwargs): return args, kwargs, batch_size
        def batch_inputs(self, prepared): return args, kwargs     # several invokes' inputs
        def run(self, args, kwargs): return net(*args, **kwargs)

    Tracer(envoy, MyTarget(), args, kwargs)

The model layer implements this; tracing/ never reaches into the model's own members.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class TraceTarget(Protocol):
    """What a tracer needs from the model it runs (see the module docstring)."""
    dispatcher: Any
    input_location: int
    result_location: int
    edits: list
    path_aliases: dict[str, str]

    @property
    def module(self) -> torch.nn.Module:
        """The wrapped torch module."""

    def prepare(self) -> None:
        """Readies the model for a run (a lazy model loads its weights)."""

    def prepare_inputs(self, *args: Any, **kwargs: Any) -> tuple[tuple, dict, int]:
        """One invoke's inputs as (args, kwargs, batch size)."""

    def batch_inputs(self, prepared: list[tuple[tuple, dict, int]]) -> tuple[tuple, dict]:
        """Several invokes' prepared inputs as one batch (args, kwargs)."""

    def run(self, args: tuple, kwargs: dict) -> Any:
        """Runs the model on the batch."""
