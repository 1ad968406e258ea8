"""`model.edit()`: interventions applied to every later run of a model.

    with model.edit() as edited:               # binds an edited copy; `model` stays as it was
        edited.transformer.h[0].attn.output[0][:] = 0
    with edited.trace("Hello"): ...            # runs with the edit
    with model.edit(inplace=True):             # edits `model` itself
        model.lm_head.output[:, :, 0] = 0
    model.clear_edits()
    model.export_edits("zero-head")            # to ~/.cache/nnsight_fast/edits/zero-head/__default__.pt
    other.import_edits("zero-head")            # in another process, on another wrapper of the model

An edit is a captured block run as an extra whole-batch invoke, before the trace's
own invokes, in every trace of the edited model.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import linecache
import os
import textwrap
import types
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..capture import CapturedBlock, CapturedBody, site_of
from ..envoy import Envoy

@dataclass
class Edit:
    body: CapturedBody
    source: str  # the `with` statement, dedented, for export
    names: tuple  # the body's parameters, in order


class EditTracer(CapturedBlock):
    """Captures the `with` body as an Edit appended to `edits` (the model's persistent edits);
    `with ... as edited:` binds `model`."""

    def __init__(self, model: Any, edits: list):
        self.model, self.edits = model, edits

    def entered(self) -> Any:
        """The model the `with model.edit() as edited:` block binds."""
        return self.model

    def run_block(self, body, capture) -> None:
        """Stores the body as a persistent edit of the model."""
        statement = capture.site.statement
        lines = linecache.getlines(capture.site.filename)[statement.lineno - 1:statement.end_lineno]
        names = body.function.__code__.co_varnames[2:2 + len(body.arguments)]
        self.edits.append(Edit(body, textwrap.dedent("".join(lines)), names))


def _default_folder(name: str, export_dir: str | None) -> str:
    base = export_dir or os.path.join(os.path.expanduser("~"), ".cache", "nnsight_fast", "edits")
    return os.path.join(base, name)


def export_edits(edits: list, name: str, export_dir: str | None = None, variant: str = "__default__") -> str:
    """Writes a model's edits to a file; returns its path."""
    if not edits:
        raise ValueError("This model has no edits to export: make some with `model.edit()` first")
    records = []
    for edit in edits:
        values, modules = {}, {}
        for name_, value in zip(edit.names, edit.body.arguments):
            if isinstance(value, Envoy):
                values[name_] = ("envoy", value.path)
            elif isinstance(value, types.ModuleType):
                modules[name_] = value.__name__
            else:
                values[name_] = ("value", value)
        for name_ in edit.body.function.__code__.co_names:
            found = edit.body.function.__globals__.get(name_)
            if isinstance(found, types.ModuleType):
                modules[name_] = found.__name__
        records.append({"source": edit.source, "values": values, "modules": modules})
    folder = _default_folder(name, export_dir)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{variant}.pt")
    torch.save(records, path)
    return path


def import_edits(find_envoy: Callable[[str], Any], edits: list, name: str, export_dir: str | None = None,
                 variant: str = "__default__") -> None:
    """Adds the edits saved by `export_edits` to `edits`; `find_envoy(path)` resolves saved Envoys."""
    path = os.path.join(_default_folder(name, export_dir), f"{variant}.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"No exported edits '{name}' (variant '{variant}') at {path}")
    for number, record in enumerate(torch.load(path, weights_only=False)):
        filename = f"<nnsight_fast edit {name}/{variant}#{number}>"
        source = record["source"]
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        statement = ast.parse(source).body[0]
        site = site_of(filename, statement)
        arguments = {}
        for name_, (kind, value) in record["values"].items():
            arguments[name_] = find_envoy(value) if kind == "envoy" else value
        namespace = {"__builtins__": builtins}
        for name_, module_name in record["modules"].items():
            namespace[name_] = importlib.import_module(module_name)
        parameters = tuple(n for n in site.names if n in arguments)
        code = site.compile(parameters, ())
        function = types.FunctionType(code, namespace, "<imported edit>")
        body = CapturedBody(function, tuple(arguments[n] for n in parameters), None)
        edits.append(Edit(body, source, parameters))
