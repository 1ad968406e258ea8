"""`model.logits` and `model.samples`: the step's logits and sampled token ids as modules.

    add_step_modules(vllm_model)        # the caller's meta model and each worker's real one
    with model.trace("Hello", max_tokens=3) as tracer:
        for step in tracer.all():
            model.logits.output[:, 13] = -float("inf")   # edit before sampling
            token = model.samples.output.save()          # [1, 1] sampled ids of this invoke

vLLM computes logits and samples outside the model's forward; the worker passes
them through these modules (worker.py), so a trace reads and edits them like any output.
"""

from __future__ import annotations

from typing import Any

import torch


class Logits(torch.nn.Module):
    """The step's logits, one row per request, before sampling."""

    def forward(self, logits: Any) -> Any:
        """Returns the logits unchanged (a trace reads or edits them here)."""
        return logits


class Samples(torch.nn.Module):
    """The step's sampled token ids, one row per request."""

    def forward(self, token_ids: Any) -> Any:
        """Returns the sampled ids unchanged (a trace reads or replaces them here)."""
        return token_ids


def add_step_modules(module: torch.nn.Module) -> None:
    """Adds `logits` and `samples` to vLLM's model (once)."""
    if not isinstance(getattr(module, "logits", None), Logits):
        module.add_module("logits", Logits())
    if not isinstance(getattr(module, "samples", None), Samples):
        module.add_module("samples", Samples())
