"""A captured body sent to vLLM's worker processes, and what it saved sent back.

    data = pack_body(body, refer)                  # caller: code + the values it reads
    body = unpack_body(data, resolve)              # worker: a body that runs there
    data = pack_values({"logits": tensor})         # worker -> caller
    values = unpack_values(data)

A body is its compiled code (marshal: the worker runs the same Python) plus the
caller's values it reads, pickled with cloudpickle (functions and classes defined
in the body's own module — a script, a notebook, a test file — travel by value). Objects that stand for the model — its Envoys, the
tracer — travel as references (`refer(obj)` gives a key, `resolve(key)` the worker's
object), so the body works on the worker's real modules.
"""

from __future__ import annotations

import contextlib
import io
import marshal
import pickle
import sys
import types
from typing import Any, Callable, Iterator

import cloudpickle

from ...capture import CapturedBody

_NEVER_BY_VALUE = {"nnsight_fast", "torch", "vllm", "transformers"}


class _RefPickler(cloudpickle.Pickler):
    def __init__(self, file, refer: Callable[[Any], Any]):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._refer = refer

    def persistent_id(self, obj: Any) -> Any:
        return self._refer(obj)


class _RefUnpickler(pickle.Unpickler):
    def __init__(self, file, resolve: Callable[[Any], Any]):
        super().__init__(file)
        self._resolve = resolve

    def persistent_load(self, key: Any) -> Any:
        return self._resolve(key)


def _dumps(value: Any, refer: Callable[[Any], Any]) -> bytes:
    buffer = io.BytesIO()
    _RefPickler(buffer, refer).dump(value)
    return buffer.getvalue()


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _global_names(constant)
    return names


def pack_body(body: CapturedBody, refer: Callable[[Any], Any]) -> bytes:
    """The body as bytes: its code, its arguments and the globals it may read."""
    function = body.function
    code = function.__code__
    parameters = code.co_varnames[2:2 + len(body.arguments)]  # after the collector and LoopEnd
    arguments = []
    for name, value in zip(parameters, body.arguments):
        try:
            arguments.append(_dumps(value, refer))
        except Exception as error:  # noqa: BLE001 - named for the user
            raise TypeError(
                f"`{name}` cannot be sent to vLLM's worker ({type(value).__name__}: {error}): the body runs in "
                "vLLM's process, so the values it reads must be picklable"
            ) from None
    module_globals = function.__globals__
    shipped = {}
    with _by_value(module_globals.get("__name__")):
        for name in _global_names(code):
            if name in module_globals and not name.startswith("__"):
                try:
                    shipped[name] = _dumps(module_globals[name], refer)
                except Exception:  # noqa: BLE001 - an unpicklable global the body may not even read
                    pass
    return pickle.dumps((marshal.dumps(code), arguments, shipped))


@contextlib.contextmanager
def _by_value(module_name: str | None) -> Iterator[None]:
    """Functions and classes of the body's own module travel by value: the worker may not be
    able to import it (a test module, a script's helper module, a notebook)."""
    module = sys.modules.get(module_name) if module_name not in (None, "__main__") else None
    if module is None or module_name.split(".")[0] in _NEVER_BY_VALUE:
        yield
        return
    try:
        cloudpickle.register_pickle_by_value(module)
    except ValueError:  # already registered
        yield
        return
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def unpack_body(data: bytes, resolve: Callable[[Any], Any]) -> CapturedBody:
    """The body packed by `pack_body`, runnable here; references resolve to this side's objects."""
    code, arguments, shipped = pickle.loads(data)

    def load(blob: bytes) -> Any:
        return _RefUnpickler(io.BytesIO(blob), resolve).load()

    namespace = {"__builtins__": __builtins__, "__name__": "__nnsight_fast_body__"}
    for name, blob in shipped.items():
        try:
            namespace[name] = load(blob)
        except Exception:  # noqa: BLE001 - not importable here: the body fails only if it reads it
            pass
    function = types.FunctionType(marshal.loads(code), namespace, "<traced block>")
    return CapturedBody(function, tuple(load(blob) for blob in arguments), None)


def pack_values(values: Any) -> bytes:
    """Values (saved variables, an error) as bytes for the caller."""
    return cloudpickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_values(data: bytes) -> Any:
    """The values packed by `pack_values`."""
    return pickle.loads(data)
