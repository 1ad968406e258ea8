"""ModelGates: the native Gates of one wrapped module tree, installed once per module.

    gates = ModelGates()                                   # its own native Dispatcher
    input_location, output_location = gates.install(net.fc1, "model.fc1")
    net.fc1(x)               # the Gate runs the original forward (untraced: at full speed)
    gates.dispatcher.intern("model.result")                # any other location of the tree

Each Envoy asks the tree's gates for its module's locations; a tracer serves values at
those locations through the dispatcher. `envoy_class(module, path)` picks the Envoy
class of a child (`NNsight(envoys=...)`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from . import _native


class ModelGates:
    def __init__(self, threaded: bool = False, envoy_class: Callable[[torch.nn.Module, str], Any] | None = None):
        self.dispatcher = _native.Dispatcher()
        self.dispatcher.threaded = threaded
        self.envoy_class = envoy_class  # None: every child is a plain Envoy
        self.root_input_location = -1  # set by the root Envoy: one visit per step of a run
        self.source_sites: dict = {}  # `.source` of functions called inside forwards (source/envoy.py)
        self._installed: dict[int, tuple[int, int]] = {}

    def install(self, module: torch.nn.Module, path: str) -> tuple[int, int]:
        """Installs the Gate on `module` (once); returns its (input, output) locations."""
        known = self._installed.get(id(module))
        if known is not None:
            return known
        locations = (self.dispatcher.intern(f"{path}.input"), self.dispatcher.intern(f"{path}.output"))
        module.__dict__["forward"] = _native.make_gate(module.forward, self.dispatcher, *locations)
        self._installed[id(module)] = locations
        return locations
