"""Gradients in a trace: `with loss.backward():` and `.grad` of any value.

    with model.trace(x):
        hidden = model.layer1.output
        loss = model.output.sum()
        with loss.backward():                         # the backward pass runs at the end of this block
            grad = hidden.grad.save()                 # asks for hidden's gradient when autograd makes it
            model.layer2.output.grad = torch.zeros_like(model.layer2.output.grad)   # or replace it

Inside the block, `.output`/`.input` give the values this invoke read in the forward
pass, and `.grad` of a tensor waits for its gradient (in reverse order of the forward:
asking for one autograd already passed raises OutOfOrderError). The block runs on its
own worker while this invoke's thread runs `backward`; each gradient is handed over
from a tensor hook, on whatever thread autograd runs it (CPU or CUDA device threads).
"""

from __future__ import annotations

import ast
import sys
from typing import Any

import torch

from .. import _native
from ..errors import Cancelled, OutOfOrderError
from ..mediator import Mediator, current_mediator
from ..capture import CapturedBlock, with_statements, write_back

_original_backward = torch.Tensor.backward
_original_grad = torch._C.TensorBase.grad


class BackwardTracer(CapturedBlock):
    """`with loss.backward():` inside a trace body: reads and edits gradients.

    with model.trace(x):
        hidden = model.layer1.output
        loss = model.output.sum()
        with loss.backward():
            grad = hidden.grad.save()
    """

    def __init__(self, loss: torch.Tensor, args: tuple, kwargs: dict, outer: Mediator):
        self.loss, self.args, self.kwargs, self.outer = loss, args, kwargs, outer
        self.dispatcher = _native.Dispatcher()
        self.native = _native.Trace(self.dispatcher)
        self.locations: dict[int, int] = {}  # id(tensor) -> location of its gradient
        self.tensors: dict[int, torch.Tensor] = {}
        self.handles: list = []
        self.mediator: Mediator | None = None

    # the tracer interface a Mediator needs
    @property
    def model(self):
        """The traced model (the outer trace's)."""
        return self.outer.tracer.model

    def record_save(self, value: Any) -> None:
        """Keeps `value` (and its variable) after the trace."""
        self.outer.tracer.record_save(value)

    def run_block(self, body, capture) -> None:
        # autograd may call the gradient hooks on its own device threads: the block's body
        # runs on a worker thread, which any thread can serve.
        """Runs backward with the block's body served from autograd's threads."""
        self.native.set_batch(-1, 1)
        self.mediator = mediator = Mediator(self, body, self.native, threaded=True, backward_of=self.outer)
        backward_error = None
        try:
            if not mediator.start():
                try:
                    _original_backward(self.loss, *self.args, **self.kwargs)
                except BaseException as failure:  # noqa: BLE001 - autograd's own error, raised after cleanup
                    backward_error = failure
                while mediator.busy and mediator.waiting is not None:
                    mediator.cancel(OutOfOrderError(
                        "a gradient was requested that backward never computed (ask for gradients in reverse "
                        "order of the forward pass, and only of tensors the loss depends on)"
                    ))
        finally:
            for handle in self.handles:
                handle.remove()
            self.handles.clear()
            namespace = mediator.finish()
            self.mediator = None
        if mediator.error is not None and not isinstance(mediator.error, Cancelled):
            raise mediator.error
        if backward_error is not None:
            raise backward_error
        if namespace:
            write_back(body.frame, {k: v for k, v in namespace.items() if not k.startswith("__nnsight")})

    # called on the body's thread
    def grad_location(self, tensor: torch.Tensor) -> int:
        """The location of `tensor`'s gradient in this backward pass (a hook serves it)."""
        key = id(tensor)
        location = self.locations.get(key)
        if location is None:
            if not tensor.requires_grad:
                raise ValueError(
                    "This tensor does not require grad, so backward gives it no gradient: ask for `.grad` of "
                    "values computed from parameters or inputs that require grad"
                )
            location = self.locations[key] = self.dispatcher.intern(f"grad.{len(self.locations)}")
            self.tensors[key] = tensor
            native = self.native
            self.handles.append(tensor.register_hook(lambda grad, location=location: native.serve(location, grad)))
        return location


def _backward(self: torch.Tensor, *args: Any, **kwargs: Any):
    """Tensor.backward: inside a trace body, `with loss.backward():` opens a backward block."""
    outer = None if torch.compiler.is_compiling() else current_mediator()
    if outer is not None and not isinstance(outer.tracer, BackwardTracer) and _called_as_with(sys._getframe(1)):
        return BackwardTracer(self, args, kwargs, outer)
    return _original_backward(self, *args, **kwargs)


def _get_grad(self: torch.Tensor):
    block = _backward_block()
    if block is None:
        return _original_grad.__get__(self)
    mediator = block.mediator
    return mediator.request(block.grad_location(self), 0)


def _set_grad(self: torch.Tensor, value: Any) -> None:
    block = _backward_block()
    if block is None:
        _original_grad.__set__(self, value)
        return
    block.mediator.assign(block.grad_location(self), 0, value)


def _backward_block() -> BackwardTracer | None:
    if torch.compiler.is_compiling():  # code torch.compile traces is never a trace body
        return None
    mediator = current_mediator()
    return mediator.tracer if mediator is not None and isinstance(mediator.tracer, BackwardTracer) else None


_with_calls: dict[tuple, bool] = {}


def _called_as_with(frame) -> bool:
    """True when the calling line is `with <...>.backward(...):`."""
    key = (frame.f_code, frame.f_lineno)
    found = _with_calls.get(key)
    if found is None:
        found = False
        for node in with_statements(frame.f_code.co_filename):
            if node.lineno <= frame.f_lineno <= node.body[0].lineno - 1:
                expression = node.items[0].context_expr
                found = (isinstance(expression, ast.Call) and isinstance(expression.func, ast.Attribute)
                         and expression.func.attr == "backward")
        _with_calls[key] = found
    return found


def install() -> None:
    """Patches Tensor.backward and Tensor.grad so traces can open backward blocks."""
    torch.Tensor.backward = _backward
    torch.Tensor.grad = property(_get_grad, _set_grad, doc=_original_grad.__doc__)
