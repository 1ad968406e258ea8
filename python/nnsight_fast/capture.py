"""Capture of a `with` block's body: Python skips it, we compile and run it ourselves.

    class MyContext:
        def __enter__(self):
            self._capture = _native.begin_capture(sys._getframe(1))
            return self
        def __exit__(self, kind, error, tb):
            if not self._capture.skipped(kind):
                return False                       # a real error, or no body captured
            body = self._capture.compile()         # CapturedBody, cached per code site
            namespace = body.run(collect=print)    # runs the body as a function
            return True                            # swallow the skip signal

`begin_capture` (csrc/body_capture.cpp) arms a C trace function that raises `SkipBody`
as the body's first line starts in the caller's frame. The body is compiled once per
code site (file, line, the names it reads from the caller) into a function whose
parameters are those names, so reads see the caller's variables, closures and
comprehensions work, and the body's locals come back in one dict when it ends
(normally or not). This file finds and compiles the sites; the per-trace path is native.
"""

from __future__ import annotations

import ast
import copy
import dis
import linecache
import sys
import tokenize
import types
from dataclasses import dataclass
from typing import Any

from . import _native
from .errors import LoopEnd, SkipBody

_SINK = "__nnsight_fast_collect__"
_LOOP_END = "__nnsight_fast_LoopEnd__"


class _EndableLoops(ast.NodeTransformer):
    """Rewrites each `for` of the body (not of nested functions) so that a `LoopEnd`
    raised for that very loop ends it and the code after it runs:

        __it = <iterable>
        try:
            for <target> in __it: <body>
        except LoopEnd as end:
            if end.loop is not __it: raise
    """

    def __init__(self) -> None:
        self.count = 0

    def _keep(self, node):
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = visit_ClassDef = _keep

    def visit_For(self, node: ast.For):
        self.generic_visit(node)
        name = f"__nnsight_fast_loop_{self.count}__"
        self.count += 1
        assign = ast.Assign(targets=[ast.Name(name, ast.Store())], value=node.iter)
        node.iter = ast.Name(name, ast.Load())
        ended = ast.If(
            test=ast.Compare(
                left=ast.Attribute(ast.Name("__nnsight_fast_end__", ast.Load()), "loop", ast.Load()),
                ops=[ast.IsNot()],
                comparators=[ast.Name(name, ast.Load())],
            ),
            body=[ast.Raise()],
            orelse=[],
        )
        handler = ast.ExceptHandler(type=ast.Name(_LOOP_END, ast.Load()), name="__nnsight_fast_end__", body=[ended])
        guarded = ast.Try(body=[node], handlers=[handler], orelse=[], finalbody=[])
        for new in (assign, ended, handler, guarded):
            ast.copy_location(new, node)
        return [assign, guarded]



# A compiled `with` body bound to its caller's values: CapturedBody(function, arguments, frame);
# body.run(collect) calls function(collect, LoopEnd, *arguments) (csrc/body_capture.cpp).
CapturedBody = _native.CapturedBody


class CapturedBlock:
    """A context manager whose `with` body is captured instead of run.

        class Twice(CapturedBlock):
            def run_block(self, body, capture):
                body.run(print); body.run(print)

    `__enter__` arms the capture (and returns `entered()`); when the body is skipped,
    `__exit__` compiles it and hands it to `run_block`."""

    _capture: Any = None  # the native Capture between __enter__ and __exit__

    # In C (csrc/body_capture.cpp): __enter__ arms the capture of the calling frame's body
    # and returns `entered()`; __exit__ disarms, compiles the body and calls `run_block`
    # outside the handling of SkipBody (exceptions raised and caught inside the model, as
    # torch's Module.__getattr__ does per parameter read, stay cheap), and unchains a
    # body's error from SkipBody.
    __enter__ = _native.block_enter
    __exit__ = _native.block_exit

    def entered(self):
        """What `with ... as name:` binds (the block itself unless a subclass says otherwise)."""
        return self

    def run_block(self, body: CapturedBody, capture: Any) -> None:
        """Runs the captured body (`body.run(collect)`); a subclass says how."""
        raise NotImplementedError


def _drop_context(failure: BaseException, skip: BaseException | None) -> None:
    """Errors raised while running a body are not "during handling of" our SkipBody."""
    seen = set()
    while failure is not None and id(failure) not in seen:
        seen.add(id(failure))
        if failure.__context__ is skip:
            failure.__context__ = None
            return
        failure = failure.__context__


@dataclass
class _Site:
    """One `with` statement in a file: its body and the code compiled for it."""

    filename: str
    statement: ast.With
    names: tuple
    compiled: dict  # (parameters, late) -> the body's code, filled by the native capture
    body_line: int  # where the body starts: the skip is raised as this line starts

    def compile(self, parameters: tuple, late: tuple) -> types.CodeType:
        _refuse_return(self.filename, self.statement.body)
        body = [_EndableLoops().visit(copy.deepcopy(statement)) for statement in self.statement.body]
        body = [node for item in body for node in (item if isinstance(item, list) else [item])]
        first = body[0]
        if late:
            unbind = ast.Delete(targets=[ast.Name(name, ast.Del()) for name in late])
            ast.copy_location(unbind, first)
            body = [unbind] + body
        collect = ast.Expr(
            ast.Call(
                ast.Name(_SINK, ast.Load()),
                [ast.Call(ast.Name("locals", ast.Load()), [], [])],
                [],
            )
        )
        wrapped = ast.Try(body=body, handlers=[], orelse=[], finalbody=[collect])
        arguments = ast.arguments(
            posonlyargs=[],
            args=[ast.arg(_SINK), ast.arg(_LOOP_END)] + [ast.arg(name) for name in parameters + late],
            kwonlyargs=[],
            kw_defaults=[],
            defaults=[],
        )
        function = ast.FunctionDef(
            name="__traced_block__", args=arguments, body=[wrapped], decorator_list=[], returns=None
        )
        if sys.version_info >= (3, 12):
            function.type_params = []
        for node in (collect, wrapped, function):
            ast.copy_location(node, first)
        module = ast.Module(body=[function], type_ignores=[])
        ast.fix_missing_locations(module)
        code = compile(module, self.filename, "exec")
        return next(c for c in code.co_consts if isinstance(c, types.CodeType))


_files: dict[str, tuple[list, list]] = {}  # filename -> (its linecache lines, its `with` statements)


def with_statements(filename: str) -> list:
    """The `with` statements of a source file, parsed once per version of the file."""
    lines = linecache.getlines(filename)
    known = _files.get(filename)
    if known is not None and known[0] is lines:
        return known[1]
    if not lines:
        return []
    tree = ast.parse("".join(lines), filename)
    found = [node for node in ast.walk(tree) if isinstance(node, (ast.With, ast.AsyncWith)) and node.body]
    _files[filename] = (lines, found)
    return found


def _block_at(filename: str, line: int) -> ast.With | None:
    """The `with` statement that starts on `line`, parsed from its own lines only (a large file
    is not parsed for one block); None when that line does not start one."""
    lines = linecache.getlines(filename)
    if not 0 < line <= len(lines) or not lines[line - 1].lstrip().startswith(("with ", "async with ")):
        return None
    header = lines[line - 1]
    indent = header[:len(header) - len(header.lstrip())]
    block = _statement_lines(lines, line - 1, indent)
    if block is None:
        return None
    try:
        tree = ast.parse("".join(block), filename)
    except SyntaxError:
        return None
    statement = tree.body[0] if len(tree.body) == 1 else None
    if not isinstance(statement, (ast.With, ast.AsyncWith)) or not statement.body or \
            statement.body[0].lineno == statement.lineno:
        return None
    ast.increment_lineno(statement, line - 1)
    return statement


def _statement_lines(lines: list[str], start: int, indent: str) -> list[str] | None:
    """The lines of the compound statement starting at `lines[start]`, without its indentation
    `indent`; None when they cannot be told apart."""
    def unindented(texts):  # lines less indented (blank lines, comments, strings' own lines) stay as they are
        return [text[len(indent):] if text.startswith(indent) else text for text in texts]

    def dedented():  # for the tokenizer, a less indented line starts at the margin
        for text in lines[start:]:
            yield text[len(indent):] if text.startswith(indent) else text.lstrip(" \t")

    depth, previous = 0, None
    try:
        for token in tokenize.generate_tokens(dedented().__next__):
            if token.type == tokenize.NEWLINE and depth == 0 and not (previous and previous.string == ":"):
                return None  # a statement on one line (`with a: b`): no indented body
            if token.type not in (tokenize.NL, tokenize.COMMENT):
                previous = token
            if token.type == tokenize.INDENT:
                depth += 1
            elif token.type == tokenize.DEDENT:
                depth -= 1
                if depth == 0:
                    return unindented(lines[start:start + token.start[0] - 1])
            elif token.type == tokenize.ENDMARKER:
                return unindented(lines[start:])
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    return None


def _find_site(filename: str, line: int) -> _Site:
    """The innermost `with` statement whose header spans `line` (the native capture asks once
    per code object and line)."""
    statement = _block_at(filename, line)
    if statement is not None:
        return site_of(filename, statement)
    statements = with_statements(filename)
    if not statements and not linecache.getlines(filename):
        raise ValueError(
            f"Cannot find the source of the traced `with` block in {filename!r}: nnsight_fast runs the "
            "block from its source, so trace from a file (or a notebook cell), not from `python -c` or "
            "a bare interactive prompt"
        )
    found = None
    for node in statements:
        if node.lineno <= line < node.body[0].lineno and (found is None or node.lineno >= found.lineno):
            found = node
    if found is None and any(node.lineno <= line <= node.body[0].lineno for node in statements):
        raise ValueError(
            "The body of a traced `with` must start on its own line: nnsight_fast runs the body itself "
            "and can only intercept it where a new line starts"
        )
    if found is None:
        raise ValueError(
            f"Cannot find a `with` block at {filename}:{line} whose body starts on its own line "
            "(was the file changed since it was imported?)"
        )
    return site_of(filename, found)


def _refuse_return(filename: str, statements: list) -> None:
    """A `return` (or `yield`) directly in a body would only leave the body: refuse it."""
    stack = list(statements)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, (ast.Return, ast.Yield, ast.YieldFrom)):
            word = "return" if isinstance(node, ast.Return) else "yield"
            error = SyntaxError(
                f"`{word}` inside a traced `with` block: the block runs as the trace, not as part of the "
                f"enclosing function, so `{word}` cannot leave that function from here. Save the value and "
                f"`{word}` it after the `with` block"
            )
            error.filename, error.lineno = filename, node.lineno
            raise error
        stack.extend(ast.iter_child_nodes(node))


def site_of(filename: str, statement: ast.With) -> _Site:
    """The site of a `with` statement: the names its body uses (minus global/nonlocal ones)."""
    names, declared = [], set()
    for node in (n for child in statement.body for n in ast.walk(child)):
        if isinstance(node, ast.Name) and node.id not in names:
            names.append(node.id)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            declared.update(node.names)
    return _Site(filename, statement, tuple(name for name in names if name not in declared), {},
                 statement.body[0].lineno)


# write_back(frame, values): assigns `values` to variables of a running frame (the caller
# of a trace); a function frame's f_locals snapshot is emptied afterwards (csrc/body_capture.cpp).
write_back = _native.write_back


_native.configure_capture(_find_site, SkipBody, LoopEnd, dis.opmap["NOP"], _drop_context, CapturedBlock.entered)
