"""Rewriting a forward so each of its operations is a SourceOp the dispatcher can see.

    code = rewritten(type(module).forward)       # parsed and compiled once per code object
    [op.name for op in code.operations]          # ['is_cross_attention_0', 'isinstance_0', ...]
    forward = code.instantiate(source_ops)       # a function calling source_ops[k] per operation

Every call becomes `ops[k](callee, *args, **kwargs)` and every assignment to one
name, attribute or item becomes `target = ops[k](None, value)` (a None callee passes
the value through). Operations are
named after what they call (`self.c_attn(...)` -> `self_c_attn`, `x.view(...)` ->
`x_view`, `f(...).split(...)` -> `split`) or assign (`attn_output = ...` ->
`attn_output`), plus a running index per name, in evaluation order. The rewritten
function keeps the original's file and line numbers, globals and closure.
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
import types
from dataclasses import dataclass
from typing import Callable

_OPS = "__nnsight_fast_ops__"
_CLASS = "__class__"


@dataclass(frozen=True)
class Operation:
    name: str
    line: int  # line in the source file
    kind: str  # "call" or "assign"


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}_{node.attr}" if base else None
    return None


def _callee_name(func: ast.AST) -> str:
    name = _dotted(func)
    if name:
        return name
    if isinstance(func, ast.Attribute):
        return func.attr
    return "call"


def _target_name(target: ast.AST) -> str | None:
    if isinstance(target, (ast.Name, ast.Attribute)):
        return _dotted(target) or (target.attr if isinstance(target, ast.Attribute) else None)
    if isinstance(target, ast.Subscript):
        return _dotted(target.value)
    return None


class _Rewriter(ast.NodeTransformer):
    def __init__(self, first_argument: str | None):
        self.operations: list[Operation] = []
        self.counts: dict[str, int] = {}
        self.first_argument = first_argument

    def _new(self, base: str, node: ast.AST, kind: str) -> ast.Subscript:
        index = self.counts.get(base, 0)
        self.counts[base] = index + 1
        self.operations.append(Operation(f"{base}_{index}", node.lineno, kind))
        return ast.Subscript(ast.Name(_OPS, ast.Load()), ast.Constant(len(self.operations) - 1), ast.Load())

    def _nested_scope(self, node):
        return node  # nested functions, lambdas and classes keep their own code

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = visit_ClassDef = _nested_scope

    def visit_Call(self, node: ast.Call):
        if isinstance(node.func, ast.Name) and node.func.id == "super" and not node.args and self.first_argument:
            # Zero-argument super() needs the class cell of a method: make it explicit.
            node.args = [ast.Name(_CLASS, ast.Load()), ast.Name(self.first_argument, ast.Load())]
            return node
        self.generic_visit(node)
        op = self._new(_callee_name(node.func), node, "call")
        return ast.copy_location(ast.Call(func=op, args=[node.func, *node.args], keywords=node.keywords), node)

    def _assign(self, node, target):
        self.generic_visit(node)
        name = _target_name(target)
        if name is None or node.value is None:
            return node
        op = self._new(name, node, "assign")
        node.value = ast.copy_location(ast.Call(func=op, args=[ast.Constant(None), node.value], keywords=[]),
                                       node.value)
        return node

    def visit_Assign(self, node: ast.Assign):
        if len(node.targets) != 1:
            self.generic_visit(node)
            return node
        return self._assign(node, node.targets[0])

    def visit_AnnAssign(self, node: ast.AnnAssign):
        return self._assign(node, node.target)


class RewrittenCode:
    """A function's source, its operations, and a factory for instrumented copies."""

    def __init__(self, function: Callable):
        function = inspect.unwrap(function)
        if not isinstance(function, types.FunctionType):
            raise TypeError(f"{function!r} has no Python source to rewrite")
        self.function = function
        try:
            lines, first_line = inspect.getsourcelines(function)
        except (OSError, TypeError) as error:
            raise TypeError(f"{function.__qualname__} has no Python source available: {error}") from None
        self.filename = inspect.getsourcefile(function) or function.__code__.co_filename
        self.first_line = first_line
        self.lines = [line.rstrip("\n") for line in lines]
        tree = ast.parse(textwrap.dedent("".join(lines)))
        definition = tree.body[0]
        if not isinstance(definition, (ast.FunctionDef, ast.AsyncFunctionDef)):
            raise TypeError(f"{function.__qualname__}: expected a function definition")
        definition.decorator_list = []
        ast.increment_lineno(tree, first_line - 1)
        arguments = definition.args.posonlyargs + definition.args.args
        rewriter = _Rewriter(arguments[0].arg if arguments else None)
        definition.body = [rewriter.visit(statement) for statement in definition.body]
        self.operations = rewriter.operations
        self.index = {op.name: i for i, op in enumerate(self.operations)}
        self.freevars = function.__code__.co_freevars
        factory_arguments = [_OPS, *[v for v in self.freevars if v != _CLASS], _CLASS]
        factory = ast.FunctionDef(
            name="__nnsight_fast_factory__",
            args=ast.arguments(posonlyargs=[], args=[ast.arg(a) for a in factory_arguments], kwonlyargs=[],
                               kw_defaults=[], defaults=[]),
            body=[definition, ast.Return(ast.Name(definition.name, ast.Load()))],
            decorator_list=[], returns=None,
        )
        if sys.version_info >= (3, 12):
            factory.type_params = []
        module = ast.Module(body=[factory], type_ignores=[])
        ast.copy_location(factory, definition)
        ast.fix_missing_locations(module)
        code = compile(module, self.filename, "exec")
        self._factory_code = next(c for c in code.co_consts if isinstance(c, types.CodeType))

    def instantiate(self, source_ops: list, owner_class: type | None = None) -> types.FunctionType:
        """A copy of the function whose k-th operation calls `source_ops[k]`."""
        closure = dict(zip(self.freevars, (cell.cell_contents for cell in self.function.__closure__ or ())))
        factory = types.FunctionType(self._factory_code, self.function.__globals__)
        free = [closure[v] for v in self.freevars if v != _CLASS]
        made = factory(source_ops, *free, closure.get(_CLASS, owner_class))
        made.__defaults__ = self.function.__defaults__
        made.__kwdefaults__ = self.function.__kwdefaults__
        return made


_rewritten: dict[types.CodeType, RewrittenCode] = {}


def rewritten(function: Callable) -> RewrittenCode:
    """The RewrittenCode of `function`, built once per code object."""
    code = inspect.unwrap(function).__code__ if hasattr(inspect.unwrap(function), "__code__") else None
    if code is None:
        raise TypeError(f"{function!r} has no Python source to rewrite")
    found = _rewritten.get(code)
    if found is None:
        found = _rewritten[code] = RewrittenCode(function)
    return found
