"""tensor_parallel_size=2: a body sees whole values where vLLM shards them, edits reach every
rank's shard, and results equal tensor_parallel_size=1 (the session's `model`)."""

from __future__ import annotations

import os

import pytest
import torch

from checkpoints import ENGINE

PROMPT = "The Eiffel Tower is in"


@pytest.fixture(scope="module")
def model_tp2(llama_folder):
    from nnsight_fast import VLLM

    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    return VLLM(llama_folder, tensor_parallel_size=2, **ENGINE)


def _read_and_edit(model) -> dict:
    """Reads sharded and whole values and edits sharded ones (merged gate/up, attention heads)."""
    with model.trace(PROMPT, temperature=0.0, max_tokens=4) as tracer:
        values = dict().save()
        logits = list().save()
        for step in tracer.all():
            attention = model.model.layers[0].self_attn
            values.setdefault("qkv", attention.qkv_proj.output[0].clone())
            gate_up = model.model.layers[0].mlp.gate_up_proj.output[0]
            values.setdefault("gate_up", gate_up.clone())
            gate_up[:, 3:300] *= 0.5                       # spans gate and up: both ranks' shards
            values.setdefault("down_in", model.model.layers[0].mlp.down_proj.input.clone())
            heads = model.model.layers[1].self_attn.attn.output
            values.setdefault("heads", heads.clone())
            model.model.layers[1].self_attn.o_proj.input = heads * 1.5
            values.setdefault("layer", model.model.layers[1].output[0].clone())
            logits.append(model.logits.output.clone())
        out = tracer.result.save()
    return dict(values, logits=logits, tokens=list(out.outputs[0].token_ids))


def test_tensor_parallel_equals_one_rank(model, model_tp2):
    one, two = _read_and_edit(model), _read_and_edit(model_tp2)
    assert two["tokens"] == one["tokens"]
    assert len(two["logits"]) == len(one["logits"]) == 4  # saved once, not once per rank
    for name in ("qkv", "gate_up", "down_in", "heads", "layer"):
        assert two[name].shape == one[name].shape, name
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-4, msg=name)
    for a, b in zip(two["logits"], one["logits"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_tensor_parallel_edit_changes_the_result(model_tp2):
    edited = _read_and_edit(model_tp2)
    with model_tp2.trace(PROMPT, temperature=0.0, max_tokens=4) as tracer:
        logits = list().save()
        for step in tracer.all():
            logits.append(model_tp2.logits.output.clone())
    assert not torch.allclose(edited["logits"][0], logits[0])


def test_tensor_parallel_error_leaves_both_ranks_usable(model_tp2):
    with pytest.raises(ZeroDivisionError):
        with model_tp2.trace(PROMPT, temperature=0.0, max_tokens=2):
            model_tp2.model.layers[0].mlp.gate_up_proj.output[0].save()
            1 / 0
    with model_tp2.trace(PROMPT, temperature=0.0, max_tokens=2):
        hidden = model_tp2.model.layers[0].mlp.gate_up_proj.output[0].save()
    assert hidden.shape[-1] == 512
