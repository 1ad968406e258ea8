"""nnsight_fast: read and edit the internals of any PyTorch model while it runs.

    from nnsight_fast import NNsight
    model = NNsight(net)
    with model.trace(x):
        hidden = model.layer1.output.save()
        model.layer2.output[:] = 0
    print(hidden.shape)

The per-call work (gates, visit counting, the switch into the body's greenlet, reads,
batch narrowing, cache copies) runs in a native libtorch extension.
"""

import torch as _torch

from ._built_with import TORCH_VERSION as _BUILT_WITH

if _torch.__version__ != _BUILT_WITH:
    raise ImportError(
        f"nnsight_fast was built against torch {_BUILT_WITH} but torch {_torch.__version__} is running: "
        "rebuild it with `pip install --no-build-isolation --force-reinstall --no-deps .` "
        "from the nnsight_fast source folder"
    )

from . import _native  # noqa: E402
from .config import CONFIG  # noqa: E402
from .envoy import Envoy  # noqa: E402
from .errors import Abort, Cancelled, OutOfOrderError  # noqa: E402
from .hooks import HookHandler  # noqa: E402
from .model import NNsight  # noqa: E402
from .modeling.language_model import LanguageModel  # noqa: E402
from .saving import save  # noqa: E402

_native.set_exception_types(Abort, Cancelled, OutOfOrderError)

from .tracing import backward as _backward  # noqa: E402

_backward.install()

__all__ = ["NNsight", "LanguageModel", "Envoy", "save", "CONFIG", "OutOfOrderError", "HookHandler", "VLLM"]


def __getattr__(name: str):
    """`nnsight_fast.VLLM` imports vLLM only when used."""
    if name == "VLLM":
        from .modeling.vllm import VLLM

        return VLLM
    raise AttributeError(f"module 'nnsight_fast' has no attribute {name!r}")
