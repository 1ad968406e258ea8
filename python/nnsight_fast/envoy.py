"""Envoy: a mirror of one module of the wrapped model, with its values in a trace.

    model = NNsight(net)
    model.layer1                  # the Envoy of net.layer1 (attribute access mirrors the tree)
    model.blocks[0], len(model.blocks), list(model.blocks)
    with model.trace(x):
        h = model.layer1.output.save()      # read
        model.layer1.output[:] = 0          # edit in place
        model.layer2.output = h * 2         # replace
        args, kwargs = model.layer2.inputs  # all inputs; `.input` is the first one
        model.layer3.skip(h)                # don't run layer3, use h as its output

Attributes that are not child modules fall through to the module (`model.layer1.weight`).
`Envoy(module, rename=..., envoys=...)` alone mirrors any module (NNsight adds tracing
around it); a submodule named like an Envoy attribute (`output`, `input`, `source`, ...)
is reachable as `E_<name>` (with a warning when the tree is built).
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator

import torch

from . import _native
from . import mediator as _mediator
from .gating import ModelGates
from .naming import Naming
from .source.envoy import module_source
from .steps import Iterations
from .values import ValueAccess


def _hooked_call(envoy: "Envoy", *args: Any, hook: bool = False, **kwargs: Any) -> Any:
    """`envoy(..., hook=True)` in a trace body: the call goes through the dispatcher (caches,
    hooks and other invokes' requests see it); untraced otherwise."""
    mediator = _mediator.current_mediator() if hook else None
    if mediator is None:
        return envoy._module(*args, **kwargs)
    return mediator.native_trace.run_here(lambda: envoy._module(*args, **kwargs))


class Envoy(ValueAccess, _native.FallThrough):
    """A module of the wrapped model, with its values in a trace.

    envoy = model.transformer.h[0]          # Envoys mirror the module tree
    with model.trace(x):
        hidden = envoy.output.save()        # read, edit in place, assign, skip (values.py)
    envoy.weight                            # other attributes are the module's
    """

    #: A submodule named like an Envoy attribute (`output`, `input`, ...) is reachable as `E_<name>`.
    OVERLOAD_PREFIX = "E_"

    def __init__(self, module: torch.nn.Module, interleaver: ModelGates | None = None, path: str = "model",
                 rename: dict | None = None, envoys: Any = None):
        root = interleaver is None
        if root:  # the root of a tree: its gates, aliases and Envoy classes
            interleaver = ModelGates(Naming(rename, envoys))
        self.__dict__.update(_module=module, path=path, _gates=interleaver, _children={})
        try:
            self._input_location, self._output_location = interleaver.install(module, path)
            if interleaver.root_input_location < 0:
                interleaver.root_input_location = self._input_location
            for name, child in module.named_children():
                self._add_child(name, child)
            if root:
                interleaver.naming.mount(self)
        except BaseException:
            if root:  # a bad rename= (or envoys=) leaves the module as it was
                interleaver.uninstall()
            raise

    @property
    def interleaver(self) -> ModelGates:
        """What runs this tree's traces (its Gates and dispatcher), shared by every Envoy of the tree."""
        return self._gates

    @property
    def interleaving(self) -> bool:
        """True while a trace of this model runs."""
        return self._gates.interleaving

    def _add_child(self, name: str, module: torch.nn.Module) -> "Envoy":
        path = f"{self.path}.{name}"
        gates = self._gates
        envoy = (gates.naming.envoy_class(module, path) or Envoy)(module, gates, path)
        self._children[name] = envoy
        if hasattr(type(self), name):
            attribute = self.OVERLOAD_PREFIX + name
            warnings.warn(
                f"`{self.path}` ({type(self._module).__name__}) has a submodule named '{name}', which is also an "
                f"Envoy attribute: `{self.path}.{name}` is the Envoy's, reach the submodule as "
                f"`{self.path}.{attribute}`", UserWarning, stacklevel=3)
        else:
            attribute = name
        self.__dict__[attribute] = envoy
        return envoy

    def __setattr__(self, name: str, value: Any) -> None:
        """Attaching a module (`model.layer.sae = SAE()`) adds it to the module and the tree."""
        if isinstance(value, torch.nn.Module) and not name.startswith("_"):
            setattr(self._module, name, value)
            self._add_child(name, value)
        elif hasattr(type(self), name) or name.startswith("_") or name in self.__dict__:
            object.__setattr__(self, name, value)
        else:
            setattr(self._module, name, value)

    def _rebind(self, module: torch.nn.Module) -> None:
        """Points this Envoy (and its children, by name) at `module`, e.g. once real weights are loaded."""
        self.__dict__["_module"] = module
        had_source = self.__dict__.pop("_source", None) is not None
        self._gates.install(module, self.path)
        for name, child in module.named_children():
            if name in self._children:
                self._children[name]._rebind(child)
        if had_source:  # give the new module's Gate its rewritten forward (same locations)
            self.source

    # ---- values in a trace: output, inputs, input, skip, next (values.py) ----
    @property
    def source(self):
        """The operations inside this module's forward (see source/envoy.py)."""
        found = self.__dict__.get("_source")
        if found is None:
            found = self.__dict__["_source"] = module_source(self)
        return found

    def all(self):
        """Every step of the run, for this module: `with model.layer.all(): ...` runs the
        block at each step (also `for step in model.layer.all():`)."""
        return Iterations(self._gates.root_input_location)

    # ---- the tree ----
    def modules(self, include_fn=None, names: bool = False) -> list:
        """This Envoy and every Envoy below it (filtered by `include_fn`), as (path, Envoy) with names=True."""
        found = []
        stack = [self]
        while stack:
            envoy = stack.pop()
            if include_fn is None or include_fn(envoy):
                found.append((envoy.path, envoy) if names else envoy)
            stack.extend(reversed(list(envoy._children.values())))
        return found

    def named_modules(self, *args: Any, **kwargs: Any) -> list:
        """modules(..., names=True)."""
        return self.modules(*args, names=True, **kwargs)

    def get(self, path: str) -> Any:
        """The Envoy (or value, in a trace) at a dotted path: `model.get("transformer.h.0.mlp.output")`."""
        parts = path.split(".")
        if parts and parts[0] == self.path and "." not in self.path:  # the root's own name
            parts = parts[1:]
        found: Any = self
        for part in parts:
            found = found[int(part)] if part.lstrip("-").isdigit() and isinstance(found, Envoy) else getattr(found, part)
        return found

    def to(self, *args: Any, **kwargs: Any) -> "Envoy":
        """Moves the module (`module.to(...)`); returns this Envoy."""
        self._module.to(*args, **kwargs)
        return self

    def cpu(self, *args: Any, **kwargs: Any) -> "Envoy":
        """Moves the module to the CPU; returns this Envoy."""
        self._module.cpu(*args, **kwargs)
        return self

    def cuda(self, *args: Any, **kwargs: Any) -> "Envoy":
        """Moves the module to a CUDA device; returns this Envoy."""
        self._module.cuda(*args, **kwargs)
        return self

    @property
    def device(self) -> torch.device | None:
        """The device of the module's first parameter."""
        return next((p.device for p in self._module.parameters()), None)

    @property
    def devices(self) -> set:
        """The devices of all the module's parameters."""
        return {p.device for p in self._module.parameters()}

    def _missing_attribute(self, name: str) -> Any:
        """An attribute found nowhere on the Envoy: the module's (FallThrough, csrc/fall_through.cpp)."""
        module = self.__dict__.get("_module")
        if module is None:
            raise AttributeError(name)
        try:
            return getattr(module, name)
        except AttributeError:
            raise AttributeError(
                f"`{self.path}` ({type(module).__name__}) has no submodule or attribute `{name}`"
            ) from None

    def __getitem__(self, key: int | str) -> "Envoy":
        if isinstance(key, str):
            return self._children[key]
        return list(self._children.values())[key]

    def __len__(self) -> int:
        return len(self._children)

    def __iter__(self) -> Iterator["Envoy"]:
        return iter(list(self._children.values()))

    # `envoy(*args, **kwargs)` calls the module itself, in C (no Python frame: a wrapped model
    # runs at bare speed). In a trace body the call is untraced, unless `hook=True` (_hooked_call).
    __call__ = _native.ModuleCall(_hooked_call)

    def __repr__(self) -> str:
        return repr(self._module)
