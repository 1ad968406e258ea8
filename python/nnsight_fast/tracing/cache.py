"""`tracer.cache(...)`: record module values (after edits) in one call.

    with model.generate("Hello", max_new_tokens=3) as tracer:
        cache = tracer.cache(modules=[model.transformer.h[0]], include_inputs=True)
    cache["model.transformer.h.0"].output     # one value per step (the value itself for one visit)
    cache.model.transformer.h[0].output       # attribute access; also .inputs and .input
    list(cache.keys())

The copy (detach, device, dtype) runs in the native dispatcher at each visit; the
CacheDict is filled when the trace ends. Declare the cache before the block reads or
edits any value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Entry:
    """A module's cached values: its output and/or its inputs as (args, kwargs). A module
    visited several times (generation steps) has a list of each, one item per visit."""

    output: Any = None
    inputs: Any = None
    visits: int = 1

    @property
    def input(self) -> Any:
        """The first input (per visit when there are several)."""
        if self.inputs is None:
            return None
        if self.visits > 1:
            return [_first_input(inputs) for inputs in self.inputs]
        return _first_input(self.inputs)


def _first_input(inputs: tuple | None) -> Any:
    if inputs is None:
        return None
    args, kwargs = inputs
    return args[0] if args else next(iter(kwargs.values()), None)


class CacheDict(dict):
    """Cached entries keyed by module path, with attribute access along the module tree."""

    def __init__(self, data: dict | None = None, aliases: dict[str, str] | None = None):
        super().__init__(data or {})
        self._aliases = dict(aliases or {})

    def _resolve(self, path: str) -> str:
        """The real path of `path`, whose components may be aliases (rename=) at any depth."""
        parts = path.split(".")
        resolved = parts[0]
        for part in parts[1:]:
            step = f"{resolved}.{part}"
            resolved = self._aliases.get(step, step)
        return resolved

    def __getitem__(self, key: str) -> Any:
        return super().__getitem__(self._resolve(key))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(self._resolve(key))

    def keys(self, alias: bool = False):
        """The cached module paths (real paths, not aliases)."""
        return super().keys()

    def __getattr__(self, name: str) -> "_CacheView":
        if name.startswith("_"):
            raise AttributeError(name)
        return _CacheView(self, "")._child(name)

    def _fill(self, records: list[tuple[str, str, list]]) -> None:
        by_path: dict[str, dict[str, list]] = {}
        for path, kind, sink in records:
            by_path.setdefault(path, {})[kind] = sink
        for path, kinds in by_path.items():
            visits = max(len(values) for values in kinds.values())
            if not visits:
                continue
            outputs, inputs = kinds.get("output"), kinds.get("inputs")
            if visits == 1:
                entry = Entry(output=outputs[0] if outputs else None, inputs=inputs[0] if inputs else None)
            else:
                entry = Entry(output=outputs, inputs=inputs, visits=visits)
            dict.__setitem__(self, path, entry)


class _CacheView:
    """A position in the module tree of a CacheDict: `.h[0].output`."""

    def __init__(self, cache: CacheDict, path: str):
        self._cache, self._path = cache, path

    def _child(self, name: str) -> "_CacheView":
        path = f"{self._path}.{name}" if self._path else name
        resolved = self._cache._resolve(path)
        if not any(key == resolved or key.startswith(resolved + ".") for key in dict.keys(self._cache)):
            raise AttributeError(f"the cache has no module `{path}` (cached: {', '.join(dict.keys(self._cache))})")
        return _CacheView(self._cache, path)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in ("output", "inputs", "input"):
            return getattr(self._cache[self._path], name)
        return self._child(name)

    def __getitem__(self, key: int | str) -> "_CacheView":
        return self._child(str(key))

    def __repr__(self) -> str:
        return f"<cache view {self._path}>"
