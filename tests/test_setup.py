"""Import-time behaviour: the torch version guard, CONFIG from the environment, autocast carry-over."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

import nnsight_fast
from nnsight_fast import NNsight

from models import MLP


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_refuses_a_different_torch_with_a_rebuild_hint():
    done = run_python("import torch; torch.__version__ = '0.0.1'; import nnsight_fast")
    assert done.returncode != 0
    assert "built against torch" in done.stderr and "--no-build-isolation" in done.stderr


def test_debug_from_the_environment():
    done = run_python("import nnsight_fast; print(nnsight_fast.CONFIG.APP.DEBUG)", NNSIGHT_FAST_DEBUG="1")
    assert done.stdout.strip() == "True"
    assert nnsight_fast.CONFIG.APP.DEBUG is False


def test_autocast_of_the_caller_reaches_the_body():
    model = NNsight(MLP())
    x = torch.randn(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with model.trace(x):
            enabled = nnsight_fast.save(torch.is_autocast_enabled("cpu"))
            product = (model.fc1.output @ torch.ones(8, 8)).save()
    assert enabled is True
    assert product.dtype == torch.bfloat16


def test_every_public_name_has_a_docstring():
    """Every public class, function, method and property of the package says what it is for."""
    import importlib
    import inspect
    import pkgutil

    import nnsight_fast

    missing = []
    names = [m.name for m in pkgutil.walk_packages(nnsight_fast.__path__, "nnsight_fast.")
             if not m.name.split(".")[-1].startswith("_")]
    def load(name):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as error:  # the vLLM backend needs vLLM (its tests run in the vLLM venv)
            if name.startswith("nnsight_fast.modeling.vllm") and error.name in ("vllm", "cloudpickle"):
                return None
            raise

    modules = [load(name) for name in names]
    for module in [nnsight_fast] + [m for m in modules if m is not None]:
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            members = [(name, obj)] + ([(f"{name}.{n}", getattr(m, "__func__", m)) for n, m in vars(obj).items()
                                        if not n.startswith("_") and (inspect.isfunction(m) or isinstance(
                                            m, (property, staticmethod, classmethod)))]
                                       if inspect.isclass(obj) else [])
            missing += [f"{module.__name__}.{n}" for n, m in members if not (m.__doc__ or "").strip()]
    assert missing == []
