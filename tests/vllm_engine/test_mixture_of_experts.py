"""A mixture-of-experts model on vLLM (Mixtral: vLLM's fused MoE runner): the router and the
MoE block read and edited, checked against plain vLLM and a forward hook on the worker's module."""

from __future__ import annotations

import pytest
import torch

from checkpoints import ENGINE, build_mixtral

PROMPT = "The Eiffel Tower is in"


@pytest.fixture(scope="module")
def mixtral(llama_folder, tmp_path_factory):
    from nnsight_fast import VLLM

    return VLLM(build_mixtral(str(tmp_path_factory.mktemp("vllm") / "mixtral"), llama_folder), **ENGINE)


def _scale_moe(worker, factor):
    module = worker.model_runner.get_model().model.layers[0].block_sparse_moe
    worker._test_hook = module.register_forward_hook(lambda m, args, out: out * factor)


def _remove_hook(worker):
    worker._test_hook.remove()


def _plain(llm, steps):
    from vllm import SamplingParams

    out = llm.generate([PROMPT], SamplingParams(temperature=0.0, max_tokens=steps, logprobs=10), use_tqdm=False)[0]
    return [{t: lp.logprob for t, lp in step.items()} for step in out.outputs[0].logprobs]


def _traced(model, steps, factor=None):
    with model.trace(PROMPT, temperature=0.0, max_tokens=steps) as tracer:
        logits = list().save()
        routers = list().save()
        for step in tracer.all():
            routers.append(model.model.layers[0].block_sparse_moe.gate.output[0].clone())
            if factor is not None:
                model.model.layers[0].block_sparse_moe.output = model.model.layers[0].block_sparse_moe.output * factor
            logits.append(model.logits.output.clone())
    return logits, routers


def _assert_same(logits, plain):
    for step_logits, step_plain in zip(logits, plain, strict=True):
        logprobs = torch.log_softmax(step_logits[0], dim=-1)
        for token, value in step_plain.items():
            assert logprobs[token].item() == pytest.approx(value, abs=1e-4)


def test_moe_logits_and_router_without_intervention(mixtral):
    logits, routers = _traced(mixtral, 3)
    _assert_same(logits, _plain(mixtral.llm, 3))
    prompt_rows = len(mixtral.tokenizer(PROMPT)["input_ids"])
    assert [tuple(r.shape) for r in routers] == [(prompt_rows, 4), (1, 4), (1, 4)]


def test_moe_edit_equals_a_forward_hook(mixtral):
    edited, _ = _traced(mixtral, 3, factor=3.0)
    unedited, _ = _traced(mixtral, 3)
    assert not torch.allclose(edited[0], unedited[0])
    mixtral.llm.collective_rpc(_scale_moe, args=(3.0,))
    try:
        hooked = _plain(mixtral.llm, 3)
    finally:
        mixtral.llm.collective_rpc(_remove_hook)
    _assert_same(edited, hooked)
