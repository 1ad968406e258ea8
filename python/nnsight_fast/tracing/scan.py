"""`model.scan(x)`: a trace with fake tensors: shapes and dtypes, no real compute.

    with model.scan("Hello world"):
        shape = model.transformer.h[0].attn.output[0].shape.save()
    print(shape)              # torch.Size([1, 2, 768]); a lazy model stays unloaded

The model runs under torch's FakeTensorMode (a lazy LanguageModel runs its meta
copy), so values in the block are FakeTensors: their shapes, dtypes and devices are
real, their data is not.
"""

from __future__ import annotations

from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from .tracer import Tracer


class ScanTracer(Tracer):
    """`model.scan(x)`: a trace on fake tensors: shapes and dtypes, no compute.

    with model.scan(x):
        shape = model.layer1.output.shape.save()
    """

    loads_model = False  # no weights are needed to scan

    def _call_model(self, args: tuple, kwargs: dict) -> Any:
        module = self.target.module
        device = next((p.device for p in module.parameters()), None)
        if device is not None and device.type == "meta":
            args, kwargs = _to_device((args, kwargs), device)
        with FakeTensorMode(allow_non_fake_inputs=True):
            return module(*args, **kwargs)


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value
