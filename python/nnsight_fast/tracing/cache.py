"""`tracer.cache(...)`: record module values (after edits) in one call.

    with model.generate("Hello", max_new_tokens=3) as tracer:
        cache = tracer.cache(modules=[model.transformer.h[0]], include_inputs=True)
    cache["model.transformer.h.0"]            # a list of Entry, one per step (an Entry for one visit)
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
    """One visit of a module: its output and/or its inputs as (args, kwargs)."""

    output: Any = None
    inputs: tuple | None = None

    @property
    def input(self) -> Any:
        if self.inputs is None:
            return None
        args, kwargs = self.inputs
        return args[0] if args else next(iter(kwargs.values()), None)


def _field(value: Any, name: str) -> Any:
    if isinstance(value, list):
        return [getattr(entry, name) for entry in value]
    return getattr(value, name)


class CacheDict(dict):
    """Cached entries keyed by module path, with attribute access along the module tree."""

    def __init__(self, data: dict | None = None, aliases: dict[str, str] | None = None):
        super().__init__(data or {})
        self._aliases = dict(aliases or {})

    def _resolve(self, path: str) -> str:
        for alias, real in self._aliases.items():
            if path == alias or path.startswith(alias + "."):
                return real + path[len(alias):]
        return path

    def __getitem__(self, key: str) -> Any:
        return super().__getitem__(self._resolve(key))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(self._resolve(key))

    def keys(self, alias: bool = False):
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
            entries = [
                Entry(output=_nth(kinds.get("output"), i), inputs=_nth(kinds.get("inputs"), i)) for i in range(visits)
            ]
            dict.__setitem__(self, path, entries[0] if visits == 1 else entries)


def _nth(values: list | None, index: int) -> Any:
    return values[index] if values is not None and index < len(values) else None


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
            return _field(self._cache[self._path], name)
        return self._child(name)

    def __getitem__(self, key: int | str) -> "_CacheView":
        return self._child(str(key))

    def __repr__(self) -> str:
        return f"<cache view {self._path}>"
