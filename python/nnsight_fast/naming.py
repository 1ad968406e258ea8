"""Aliases (`rename=`) and Envoy classes (`envoys=`) of a wrapped model's tree.

    model = NNsight(net, rename={"self_attn": "attn",            # every child named self_attn
                                 "h.0": "first_layer",           # a dotted path, wherever it starts
                                 ".transformer": ["tf", "body"],  # anchored at the root; several aliases
                                 ".model.layers": ".layers"})    # a leading-dot alias mounts on the root
    model.tf.first_layer, model.transformer.h[0].attn            # same Envoys as the real paths

A key names a module by its name or by a dotted path that starts at some Envoy E of the
tree (a leading dot: at the root, when the root has that path); each alias is bound on
E. A dotted alias binds on the Envoy its prefix names, and that prefix must spell the
start of the key's path (`{"model.layers": "model.blocks"}` gives `model.model.blocks`);
a leading-dot alias binds on the root. A key that names nothing is skipped (one rename
dict can serve several architectures).
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
    """A tree's aliases (`rename=`) and Envoy classes (`envoys=`).

    naming = Naming({"self_attn": "attn"}, envoys={nn.Linear: MyEnvoy})
    naming.mount(root_envoy)            # binds the aliases once the tree is built
    """

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
            parts = key.strip(".").split(".")
            anchored = key.startswith(".") and _follow(root, parts) is not None
            found = [(e, _follow(e, parts)) for e in ([root] if anchored else root.modules())]
            found = [(start, target) for start, target in found if target is not None]
            for alias in aliases:
                if alias.startswith(".") and len(found) > 1:
                    raise ValueError(
                        f"`rename` alias {alias!r} mounts {key!r} on the root, but {len(found)} modules match it "
                        f"({', '.join(target.path for _, target in found[:3])}, ...): name one of them"
                    )
                for start, target in found:
                    self._attach(root, start, target, parts, alias, key)

    def _attach(self, root: "Envoy", start: "Envoy", target: "Envoy", parts: list[str], alias: str,
                key: str) -> None:
        if alias.startswith("."):  # mounted on the root
            parent, name = root, alias.strip(".")
        else:
            *prefix, name = alias.split(".")
            if prefix != parts[:len(prefix)] or len(prefix) >= len(parts):
                raise ValueError(
                    f"`rename` alias {alias!r} for {key!r} names no ancestor of it on `{start.path}`: a dotted "
                    f"alias binds on the Envoy its prefix names, so the prefix must spell the start of the key's "
                    f"path ({'.'.join(parts)})"
                )
            parent = _follow(start, prefix)
        if not name or "." in name:
            raise ValueError(f"`rename` alias {alias!r} for {key!r} is not an attribute name")
        parent.__dict__[name] = target
        self.alias_paths[f"{parent.path}.{name}"] = target.path


def _follow(envoy: "Envoy", parts: list[str]) -> "Envoy | None":
    """The Envoy at the real child path `parts` below `envoy`, or None."""
    for part in parts:
        envoy = envoy._children.get(part)
        if envoy is None:
            return None
    return envoy
