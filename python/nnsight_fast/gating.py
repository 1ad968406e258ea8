"""ModelGates: the native Gates of one wrapped module tree, installed once per module.

    gates = ModelGates()                                   # its own native Dispatcher
    input_location, output_location = gates.install(net.fc1, "model.fc1")
    net.fc1(x)               # the Gate runs the original forward (untraced: at full speed)
    gates.dispatcher.intern("model.result")                # any other location of the tree

Each Envoy asks the tree's gates for its module's locations; a tracer serves values at
those locations through the dispatcher. `naming` holds the tree's aliases (`rename=`)
and picks the Envoy class of each child (`envoys=`). Every Envoy of a tree shares one
ModelGates: it is what nnsight calls the tree's `interleaver`.
"""

from __future__ import annotations

import weakref

import torch

from . import _native
from .naming import Naming


class ModelGates:
    """The Gates of one module tree and the dispatcher that serves them (the tree's `interleaver`).

    gates = ModelGates()
    gates.install(net.fc1, "model.fc1")      # -> (input location, output location)
    """

    def __init__(self, naming: Naming | None = None):
        self.dispatcher = _native.Dispatcher()
        self.naming = naming if naming is not None else Naming(None, None)
        self.root_input_location = -1  # set by the root Envoy: one visit per step of a run
        self.source_sites: dict = {}  # `.source` of functions called inside forwards (source/envoy.py)
        self.location_hooks: dict = {}  # location -> the HookHandler hooks stacked there (hooks.py)
        # id(module) -> ((input, output) locations, its Gate, a weak reference to the module)
        self._gated: dict[int, tuple[tuple[int, int], object, weakref.ref]] = {}

    @property
    def interleaving(self) -> bool:
        """True while a trace of this tree runs."""
        return self.dispatcher.running

    def install(self, module: torch.nn.Module, path: str) -> tuple[int, int]:
        """Installs the Gate on `module` (once); returns its (input, output) locations."""
        known = self._gated.get(id(module))
        if known is not None:
            return known[0]
        locations = (self.dispatcher.intern(f"{path}.input"), self.dispatcher.intern(f"{path}.output"))
        gate = module.__dict__["forward"] = _native.make_gate(module.forward, self.dispatcher, *locations)
        self._gated[id(module)] = (locations, gate, weakref.ref(module))
        return locations

    def uninstall(self) -> None:
        """Takes this tree's Gates off its modules (a wrapper whose construction failed)."""
        for _, gate, module_ref in reversed(self._gated.values()):
            module = module_ref()
            if module is not None and module.__dict__.get("forward") is gate:
                del module.__dict__["forward"]
        self._gated.clear()

    def gate_of(self, module: torch.nn.Module):
        """The Gate this tree installed on `module` (another wrapper may gate it again)."""
        return self._gated[id(module)][1]
