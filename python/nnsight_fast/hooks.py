"""HookHandler: plain input/output hooks on named modules, applied by the dispatcher.

    def double(outputs, path):
        return outputs * 2
    with HookHandler(model, ["fc1", "fc2"], output_hook=double):
        y = model(x)             # fc1 and fc2 outputs doubled (in traces too)
    # on exit the hooks are gone

`input_hook(inputs, path) -> inputs` receives the module's inputs as (args, kwargs);
`output_hook(output, path) -> output` its output. `model` is an NNsight model (a plain
module is wrapped); module keys are paths like "transformer.h.0" (or "model.transformer.h.0"). Handlers on
the same module stack: inner ones run after outer ones, and each handler removes only
its own hooks (as torch's RemovableHandle does).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from . import _native
from .model import NNsight


class _LocationHooks:
    """The hooks stacked at one location: the dispatcher holds one callable that runs them all."""

    def __init__(self) -> None:
        self.hooks: list[tuple[object, Callable[[Any], Any]]] = []  # (owner, hook), outermost first

    def __call__(self, value: Any) -> Any:
        for _, hook in self.hooks:
            value = hook(value)
        return value


class HookHandler:
    """Plain input/output hooks on named modules for the duration of a `with` block.

    with HookHandler(model, ["transformer.h.0"], output_hook=lambda out, path: out * 2):
        model(x)                                   # and any trace run inside the block
    """

    def __init__(self, model: NNsight | torch.nn.Module, module_keys: list[str],
                 input_hook: Callable[[Any, str], Any] | None = None,
                 output_hook: Callable[[Any, str], Any] | None = None):
        self.model = model if isinstance(model, NNsight) else NNsight(model)
        self.modules = [(self.model.get(key), key) for key in module_keys]
        self.input_hook, self.output_hook = input_hook, output_hook
        self._installed: list[int] = []

    def __enter__(self) -> "HookHandler":
        try:
            for envoy, key in self.modules:
                path = envoy.path
                for hook, location in ((self.input_hook, envoy._input_location),
                                       (self.output_hook, envoy._output_location)):
                    if hook is None:
                        continue
                    self._stack(location).hooks.append((self, lambda value, hook=hook, path=path: hook(value, path)))
                    self._installed.append(location)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        stacks = self._stacks()
        for location in self._installed:
            stack = stacks.get(location)
            if stack is None:
                continue
            stack.hooks = [(owner, hook) for owner, hook in stack.hooks if owner is not self]
            if not stack.hooks:
                del stacks[location]
                _native.set_location_hook(self.model.interleaver.dispatcher, location, None)
        self._installed.clear()

    def _stacks(self) -> dict[int, _LocationHooks]:
        return self.model.interleaver.location_hooks

    def _stack(self, location: int) -> _LocationHooks:
        stacks = self._stacks()
        stack = stacks.get(location)
        if stack is None:
            stack = stacks[location] = _LocationHooks()
            _native.set_location_hook(self.model.interleaver.dispatcher, location, stack)
        return stack
