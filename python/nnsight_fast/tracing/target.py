"""TraceTarget: what a tracer needs from the model it runs (NNsight provides one).

    class MyTarget:                              # any object with these members
        dispatcher = gates.dispatcher            # the model's native Dispatcher
        input_location = root_input_location     # the root module's input: one visit per step
        result_location = dispatcher.intern("model.result")
        edits = []                               # persistent edits (tracing/edit.py), run first
        path_aliases = {}                        # alias path -> real path (rename=)
        spare_traces = []                        # finished native Traces (reset), reused by the next traces
        module = net                             # the wrapped torch module
        def prepare_batch(self, inputs, load=True):   # [(args, kwargs)] per invoke -> one batch
            return args, kwargs, sizes               # sizes: each invoke's rows, in order
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
    spare_traces: list  # finished `_native.Trace`s, reset, that the next traces of this model reuse

    @property
    def module(self) -> torch.nn.Module:
        """The wrapped torch module."""

    def prepare_batch(self, inputs: list[tuple[tuple, dict]], load: bool = True) -> tuple[tuple, dict, Any]:
        """The invokes' inputs as one batch: (args, kwargs, each invoke's batch size); with
        `load`, readies the model first (a lazy model loads its weights)."""

    def run(self, args: tuple, kwargs: dict) -> Any:
        """Runs the model on the batch."""
