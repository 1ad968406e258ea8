"""Aliases (`rename=`) and Envoy classes (`envoys=`) of a wrapped model's tree.

    model = NNsight(net, rename={"self_attn": "attn",            # every child named self_attn
                                 ".model.layers": "layers",      # mount a path on the root
                                 ".transformer": ["tf", "body"]})  # several aliases
    model.layers[0].attn                                         # same Envoys as the real paths
    NNsight(net, envoys=MyEnvoy)                                 # one Envoy class for all
    NNsight(net, envoys={torch.nn.Linear: LinearEnvoy,          # by module type (MRO) ...
                         "attn": AttnEnvoy})                     # ... or by path suffix (aliases count)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .envoy import Envoy


class Naming:
    def __init__(self, rename: dict | None, envoys: Any):
        self.rename = {key: [value] if isinstance(value, str) else list(value) for key, value in (rename or {}).items()}
        self.envoys = envoys
        self.alias_paths: dict[str, str] = {}  # alias path -> real path
        # single-component aliases: real name -> its aliases (for path-suffix matching)
        self.component_aliases = {key: set(a.lstrip(".") for a in aliases)
                                  for key, aliases in self.rename.items() if "." not in key}

    def envoy_class(self, module: torch.nn.Module, path: str) -> type | None:
        """The Envoy class `envoys=` gives the module at `path` (None: the plain Envoy)."""
        if self.envoys is None:
            return None
        if isinstance(self.envoys, type):
            return self.envoys
        for klass in type(module).__mro__:
            if klass in self.envoys:
                return self.envoys[klass]
        components = path.split(".")
        for key, envoy_class in self.envoys.items():
            if isinstance(key, str) and self._suffix_matches(components, key.strip(".").split(".")):
                return envoy_class
        return None

    def _suffix_matches(self, components: list[str], key: list[str]) -> bool:
        if len(key) > len(components):
            return False
        for real, wanted in zip(components[-len(key):], key):
            if real != wanted and wanted not in self.component_aliases.get(real, ()):
                return False
        return True

    def mount(self, root: "Envoy") -> None:
        """Adds the aliases as attributes of the tree (after it is built)."""
        for key, aliases in self.rename.items():
            if key.startswith(".") or "." in key:
                target = root.get(key.lstrip("."))
                for alias in aliases:
                    self._attach(root, alias.lstrip("."), target)
            else:
                for envoy in root.modules():
                    child = envoy._children.get(key)
                    if child is not None:
                        for alias in aliases:
                            self._attach(envoy, alias.lstrip("."), child)

    def _attach(self, parent: "Envoy", alias: str, target: "Envoy") -> None:
        *hops, name = alias.split(".")
        for hop in hops:
            parent = getattr(parent, hop)
        parent.__dict__[name] = target
        self.alias_paths[f"{parent.path}.{name}"] = target.path
