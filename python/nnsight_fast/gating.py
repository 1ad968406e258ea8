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

    def __init__(self, naming: Naming | None = None, threaded: bool = False):
        self.dispatcher = _native.Dispatcher()
        self.dispatcher.threaded = threaded
        self.naming = naming if naming is not None else Naming(None, None)
        self.root_input_location = -1  # set by the root Envoy: one visit per step of a run
        self.source_sites: dict = {}  # `.source` of functions called inside forwards (source/envoy.py)
        self.location_hooks: dict = {}  # location -> the HookHandler hooks stacked there (hooks.py)
        self._installed: dict[int, tuple[int, int]] = {}
        self._gate_of: dict[int, object] = {}  # id(module) -> its Gate (another wrapper may gate it again)
        self._gated: list = []  # (weakref to module, its Gate), to take them off again

    @property
    def interleaving(self) -> bool:
        """True while a trace of this tree runs."""
        return self.dispatcher.running

    def install(self, module: torch.nn.Module, path: str) -> tuple[int, int]:
        """Installs the Gate on `module` (once); returns its (input, output) locations."""
        known = self._installed.get(id(module))
        if known is not None:
            return known
        locations = (self.dispatcher.intern(f"{path}.input"), self.dispatcher.intern(f"{path}.output"))
        gate = module.__dict__["forward"] = _native.make_gate(module.forward, self.dispatcher, *locations)
        self._installed[id(module)] = locations
        self._gate_of[id(module)] = gate
        self._gated.append((weakref.ref(module), gate))
        return locations

    def uninstall(self) -> None:
        """Takes this tree's Gates off its modules (a wrapper whose construction failed)."""
        for module_ref, gate in reversed(self._gated):
            module = module_ref()
            if module is not None and module.__dict__.get("forward") is gate:
                del module.__dict__["forward"]
        self._gated.clear()
        self._installed.clear()
        self._gate_of.clear()

    def gate_of(self, module: torch.nn.Module):
        """The Gate this tree installed on `module`."""
        return self._gate_of[id(module)]
