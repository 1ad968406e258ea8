"""`envoy.source`: each operation inside a module's forward, readable and editable in a trace.

    print(model.transformer.h[0].attn.source)            # the forward, each line's operations named
    with model.trace("Hello"):
        attn = model.transformer.h[0].attn.source.attention_interface_1.output.save()
        model.transformer.h[0].attn.source.self_c_proj_0.output[:] = 0
        args, kwargs = model.transformer.h[0].attn.source.self_c_attn_1.inputs
        model.transformer.h[0].attn.source.split_1.skip(replacement)
        # one level deeper: the operations of the function that operation calls
        sdpa = model.transformer.h[0].attn.source.attention_interface_1.source.torch_nn_functional_scaled_dot_product_attention_0.output.save()

The forward is rewritten once per code object (rewrite.py) and given to the module's
Gate, which runs it in every trace from then on (whether a body will ask for one of
its operations is not known when the module starts); outside traces the module runs
its original forward at full speed.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

import torch

from .. import _native
from .. import mediator as _mediator
from ..values import ValueAccess
from .rewrite import RewrittenCode, rewritten

if TYPE_CHECKING:
    from ..gating import ModelGates


class SourceSite:
    """One use of a rewritten function: its operations bound to locations under `path`."""

    def __init__(self, gates: "ModelGates", path: str, code: RewrittenCode, owner_class: type | None = None):
        self.gates, self.path, self.code = gates, path, code
        dispatcher = gates.dispatcher
        self.locations = {}
        ops = []
        for op in code.operations:
            where = f"{path}.{op.name}"
            locations = tuple(dispatcher.intern(f"{where}.{kind}") for kind in ("callee", "input", "output"))
            self.locations[op.name] = locations
            ops.append(_native.make_source_op(dispatcher, *locations))
        self.function = code.instantiate(ops, owner_class)

    def listing(self) -> str:
        """The function's source, each line headed by the names of its operations."""
        by_line: dict[int, list[str]] = {}
        for op in self.code.operations:
            by_line.setdefault(op.line, []).append(op.name)
        width = max((len(op.name) for op in self.code.operations), default=0)
        out = []
        for offset, text in enumerate(self.code.lines):
            number = self.code.first_line + offset
            names = by_line.get(number, [""])
            out.append(f"{names[0]:<{width}} {'->' if names[0] else '  '} {number:4d} {text}")
            out += [f"{name:<{width}} ->    + ..." for name in names[1:]]
        return "\n".join(out)


def _owner_class(module_class: type, name: str = "forward") -> type | None:
    for klass in module_class.__mro__:
        if name in klass.__dict__:
            return klass
    return None


class SourceEnvoy:
    """The operations of one function at one site; attribute access gives an OperationEnvoy."""

    def __init__(self, site: SourceSite):
        self._site = site

    def __getattr__(self, name: str) -> "OperationEnvoy":
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._site.locations:
            available = ", ".join(op.name for op in self._site.code.operations)
            raise AttributeError(f"'{self._site.path}' has no operation '{name}'; available: {available}")
        return OperationEnvoy(self, name)

    def __dir__(self):
        return list(self._site.locations)

    def __str__(self) -> str:
        return self._site.listing()

    __repr__ = __str__


class OperationEnvoy(ValueAccess):
    """One operation: `.output`, `.input`, `.inputs` (read and assigned), `.skip(value)`, `.next()`
    (values.py), and `.source` one level deeper."""

    def __init__(self, source: SourceEnvoy, name: str):
        self._source, self.name = source, name
        self.path = f"{source._site.path}.{name}"
        self._callee, self._input_location, self._output_location = source._site.locations[name]

    @property
    def source(self) -> SourceEnvoy:
        """The operations of the function this operation calls (inside a trace only)."""
        mediator = _mediator.current_mediator()
        if mediator is None:
            raise ValueError(
                f"`{self.path}.source` is only available inside a trace: the function an operation calls "
                "is known only when it runs"
            )
        key = (self._callee, mediator.occurrence_of(self.path))
        known = mediator.nested_source(key)
        if known is not None:  # this execution's callee was already replaced
            return known
        callee = _mediator.request(self._callee, self.path, "source")
        function, bind = _python_function(callee, self.path)
        gates = self._source._site.gates
        site_key = (self.path, function.__code__)
        site = gates.source_sites.get(site_key)
        if site is None:
            site = gates.source_sites[site_key] = SourceSite(
                gates, f"{self.path}.source", rewritten(function),
                _owner_class(type(bind)) if bind is not None and not isinstance(bind, type) else None,
            )
        replacement = site.function if bind is None else types.MethodType(site.function, bind)
        _mediator.assign(self._callee, self.path, "source", replacement)
        nested = SourceEnvoy(site)
        mediator.remember_nested_source(key, nested)
        return nested

    def __repr__(self) -> str:
        site = self._source._site
        line = next(op.line for op in site.code.operations if op.name == self.name)
        start = max(line - 3, site.code.first_line)
        stop = min(line + 3, site.code.first_line + len(site.code.lines) - 1)
        lines = [("--> " if n == line else "    ") + f"{n:4d} {site.code.lines[n - site.code.first_line]}"
                 for n in range(start, stop + 1)]
        return f"{self.path}:\n" + "\n".join(lines)


def _python_function(callee: Any, path: str):
    """(function, object it is bound to or None) for a callee with Python source."""
    if isinstance(callee, torch.nn.Module):
        return type(callee).forward, callee
    if isinstance(callee, types.MethodType) and isinstance(callee.__func__, types.FunctionType):
        return callee.__func__, callee.__self__
    if isinstance(callee, types.FunctionType):
        return callee, None
    raise TypeError(f"`{path}` calls {callee!r}, which has no Python source: `.source` cannot reach inside it")


def module_source(envoy) -> SourceEnvoy:
    """The SourceEnvoy of a module's forward, built once per Envoy and given to its Gate."""
    gates = envoy._gates
    module = envoy._module
    site = SourceSite(gates, f"{envoy.path}.source", rewritten(type(module).forward), _owner_class(type(module)))
    _native.set_gate_source(gates.gate_of(module), types.MethodType(site.function, module))
    return SourceEnvoy(site)
