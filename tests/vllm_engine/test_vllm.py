"""VLLM: traces of a model vLLM serves, checked against plain vLLM (its logprobs, a checkpoint
edited to do the same thing, a forward hook on the worker's module)."""

from __future__ import annotations

import time

import pytest
import torch

PROMPT = "The Eiffel Tower is in"
GREEDY = dict(temperature=0.0)


def _plain_logprobs(model_or_llm, prompt: str, steps: int) -> list[dict[int, float]]:
    """Per step: token -> logprob of the 20 most likely tokens, from vLLM without any trace."""
    llm = getattr(model_or_llm, "llm", model_or_llm)
    from vllm import SamplingParams

    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=steps, logprobs=20), use_tqdm=False)[0]
    return [{token: lp.logprob for token, lp in step.items()} for step in out.outputs[0].logprobs]


def _assert_same_logprobs(logits: list[torch.Tensor], plain: list[dict[int, float]]) -> None:
    assert len(logits) == len(plain)
    for step_logits, step_plain in zip(logits, plain):
        logprobs = torch.log_softmax(step_logits.float(), dim=-1)[0]
        for token, value in step_plain.items():
            assert logprobs[token].item() == pytest.approx(value, abs=1e-4)


def _trace_logits(model, prompt: str, steps: int, edit=None) -> tuple[list, list[int]]:
    with model.trace(prompt, max_tokens=steps, **GREEDY) as tracer:
        logits = list().save()
        for step in tracer.all():
            if edit == "zero-mlp":
                model.model.layers[1].mlp.output[:] = 0
            elif edit == "skip-mlp":
                model.model.layers[1].mlp.skip(torch.zeros_like(model.model.layers[1].mlp.input))
            logits.append(model.logits.output.clone())
        out = tracer.result.save()
    return logits, list(out.outputs[0].token_ids)


def test_the_tree_is_vllms_and_printable_before_the_engine_starts(llama_folder):
    from nnsight_fast import VLLM

    lazy = VLLM(llama_folder, dtype="float32", max_model_len=128)
    assert not lazy.dispatched
    text = repr(lazy.model.layers[0])
    assert "QKVParallelLinear" in text and "MergedColumnParallelLinear" in text
    assert lazy.model.layers[1].mlp.down_proj.path == "model.model.layers.1.mlp.down_proj"
    assert lazy.tokenizer("Hello")["input_ids"]
    assert not lazy.dispatched


def test_logits_without_intervention_equal_plain_vllm(model):
    logits, tokens = _trace_logits(model, PROMPT, 4)
    assert [tuple(l.shape) for l in logits] == [(1, len(model.tokenizer))] * 4
    _assert_same_logprobs(logits, _plain_logprobs(model, PROMPT, 4))
    plain = model.trace(PROMPT, trace=False, max_tokens=4, **GREEDY)[0]
    assert tokens == list(plain.outputs[0].token_ids)
    assert tokens == [int(l.argmax()) for l in logits]


@pytest.mark.parametrize("edit", ["zero-mlp", "skip-mlp"])
def test_zeroing_an_mlp_equals_a_checkpoint_whose_mlp_outputs_zero(model, tmp_path, edit):
    from vllm import LLM

    from checkpoints import ENGINE, build_llama

    logits, tokens = _trace_logits(model, PROMPT, 4, edit=edit)
    unedited, _ = _trace_logits(model, PROMPT, 4)
    assert not torch.allclose(logits[0], unedited[0])  # the edit did something
    zeroed = LLM(build_llama(str(tmp_path / "zeroed"), zero_mlp_layer=1), enforce_eager=True, **ENGINE)
    try:
        _assert_same_logprobs(logits, _plain_logprobs(zeroed, PROMPT, 4))
    finally:
        del zeroed


def _add_hook(worker, values):
    vector = torch.tensor(values)  # arguments travel as plain lists
    module = worker.model_runner.get_model().model.layers[0].mlp
    worker._test_hook = module.register_forward_hook(lambda m, args, out: out + vector.to(out.dtype))


def _remove_hook(worker):
    worker._test_hook.remove()


def test_steering_every_step_equals_a_forward_hook_on_the_workers_module(model):
    vector = torch.randn(128, generator=torch.Generator().manual_seed(1)) * 4
    with model.trace(PROMPT, max_tokens=6, **GREEDY) as tracer:
        logits = list().save()
        for step in tracer.all():
            model.model.layers[0].mlp.output[:] += vector
            logits.append(model.logits.output.clone())
        out = tracer.result.save()
    steered = list(out.outputs[0].token_ids)
    plain = list(model.trace(PROMPT, trace=False, max_tokens=6, **GREEDY)[0].outputs[0].token_ids)
    model.llm.collective_rpc(_add_hook, args=(vector.tolist(),))
    try:
        hooked = _plain_logprobs(model, PROMPT, 6)
        hooked_tokens = list(model.trace(PROMPT, trace=False, max_tokens=6, **GREEDY)[0].outputs[0].token_ids)
    finally:
        model.llm.collective_rpc(_remove_hook)
    assert steered == hooked_tokens
    assert steered != plain  # the steering changed the generation
    _assert_same_logprobs(logits, hooked)


def test_two_invokes_each_see_their_own_rows(model):
    prompts = ["Hello", "The quick brown fox jumps"]
    alone = []
    for prompt in prompts:
        with model.trace(prompt, max_tokens=2, **GREEDY) as tracer:
            rows = list().save()
            for step in tracer.all():
                rows.append(model.model.layers[1].output[0].clone())
        alone.append(rows)
    with model.trace(max_tokens=2, **GREEDY) as tracer:
        with tracer.invoke(prompts[0]):
            first = list().save()
            for step in tracer.all():
                first.append(model.model.layers[1].output[0].clone())
        with tracer.invoke(prompts[1], max_tokens=3):
            second = list().save()
            for step in tracer.all():
                second.append(model.model.layers[1].output[0].clone())
            ids = tracer.result.save()
    lengths = [len(model.tokenizer(p)["input_ids"]) for p in prompts]
    assert [r.shape[0] for r in first] == [lengths[0], 1]
    assert [r.shape[0] for r in second] == [lengths[1], 1, 1]
    for together, by_itself in zip(first, alone[0]):
        torch.testing.assert_close(together, by_itself, rtol=1e-5, atol=1e-5)
    for together, by_itself in zip(second[:2], alone[1]):
        torch.testing.assert_close(together, by_itself, rtol=1e-5, atol=1e-5)
    assert len(ids.outputs[0].token_ids) == 3


def test_iter_selects_steps_and_samples_are_the_tokens(model):
    with model.trace(PROMPT, max_tokens=5, **GREEDY) as tracer:
        samples = list().save()
        for step in tracer.iter[1:4]:
            samples.append(int(model.samples.output[0, 0]))
        out = tracer.result.save()
    assert samples == list(out.outputs[0].token_ids)[1:4]


def test_assigning_the_logits_forces_the_token(model):
    with model.trace(PROMPT, max_tokens=3, **GREEDY) as tracer:
        for step in tracer.all():
            logits = model.logits.output
            forced = torch.full_like(logits, -1e9)
            forced[:, 7] = 0
            model.logits.output = forced
        out = tracer.result.save()
    assert list(out.outputs[0].token_ids) == [7, 7, 7]


def test_stop_keeps_what_was_saved(model):
    with model.trace(PROMPT, max_tokens=4, **GREEDY) as tracer:
        first = model.model.layers[0].output[0].save()
        tracer.stop()
        never = model.model.layers[1].output[0].save()  # noqa: F841
    assert first.shape[0] == len(model.tokenizer(PROMPT)["input_ids"])
    assert "never" not in locals()


def test_an_error_in_a_body_surfaces_with_its_line_and_the_engine_stays_usable(model):
    with pytest.raises(IndexError) as caught:
        with model.trace(PROMPT, max_tokens=2, **GREEDY):
            hidden = model.model.layers[0].output[0]
            hidden[1000] = 0
    assert any("hidden[1000] = 0" in note for note in getattr(caught.value, "__notes__", []))
    logits, tokens = _trace_logits(model, PROMPT, 2)
    _assert_same_logprobs(logits, _plain_logprobs(model, PROMPT, 2))


def test_a_module_the_model_never_runs_is_a_clear_error(model):
    from nnsight_fast import OutOfOrderError

    with pytest.raises(OutOfOrderError, match="model.lm_head.output.i0' was never reached"):
        with model.trace(PROMPT, max_tokens=1, **GREEDY):
            model.lm_head.output.save()  # vLLM computes logits without calling lm_head's forward
    logits, _ = _trace_logits(model, PROMPT, 1)
    assert len(logits) == 1


def test_a_value_that_cannot_travel_is_named(model):
    import threading

    lock = threading.Lock()
    with pytest.raises(TypeError, match="`lock` cannot be sent to vLLM's worker"):
        with model.trace(PROMPT, max_tokens=1, **GREEDY):
            with lock:
                model.model.layers[0].output[0].save()


def test_an_invoke_without_a_prompt_is_refused(model):
    with pytest.raises(ValueError, match="every invoke needs a prompt"):
        with model.trace(max_tokens=1) as tracer:
            with tracer.invoke():
                model.logits.output.save()


def _halve(tensor):
    """A helper of this module: it travels to the worker by value."""
    return tensor * 0.5


class _Recorder:
    """A class of this module, instantiated in the body on the worker."""

    def __init__(self):
        self.shapes = []


def test_inputs_helpers_and_generate(model):
    scale = 3.0
    with model.generate(PROMPT, max_new_tokens=2, temperature=0.0) as tracer:
        args, kwargs = model.model.layers[0].mlp.down_proj.inputs
        inputs = (len(args), sorted(kwargs)).save()
        halved = _halve(model.model.layers[0].mlp.output * scale).save()
        recorder = _Recorder().save()
        for step in tracer.all():
            recorder.shapes.append(tuple(model.model.layers[1].output[0].shape))
        out = tracer.result.save()
    assert inputs == (1, [])
    assert halved.shape == (len(model.tokenizer(PROMPT)["input_ids"]), 128)
    assert recorder.shapes == [(halved.shape[0], 128), (1, 128)]
    assert len(out.outputs[0].token_ids) == 2


def test_helpers_of_a_module_the_worker_cannot_import_travel_by_value(model, tmp_path, monkeypatch):
    model.llm  # the worker exists before the module below does
    (tmp_path / "late_helpers.py").write_text(
        "def double(tensor):\n"
        "    return tensor * 2\n"
        "\n"
        "def run(model):\n"
        "    with model.trace('Hello', max_tokens=1, temperature=0.0):\n"
        "        hidden = model.model.layers[0].output[0]\n"
        "        doubled = double(hidden).save()\n"
        "        plain = hidden.clone().save()\n"
        "    return doubled, plain\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import late_helpers

    doubled, plain = late_helpers.run(model)
    torch.testing.assert_close(doubled, plain * 2)


def test_ctrl_c_during_generation_leaves_no_request_behind(model):
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    model.llm  # the engine runs before the alarm is armed
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            with model.trace(PROMPT, max_tokens=100, ignore_eos=True, **GREEDY) as tracer:
                for step in tracer.all():
                    model.model.layers[0].mlp.output[:] *= 1.0
                    time.sleep(0.01)  # a slow body: the alarm lands while vLLM generates
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not model.llm.llm_engine.has_unfinished_requests()
    logits, tokens = _trace_logits(model, "Hello", 2)
    plain = model.trace("Hello", trace=False, max_tokens=2, **GREEDY)
    assert len(plain) == 1 and tokens == list(plain[0].outputs[0].token_ids)


def test_several_samples_per_invoke_are_refused(model):
    with pytest.raises(ValueError, match="one `tracer.invoke\\(prompt\\)` per sample"):
        with model.trace(PROMPT, max_tokens=1, n=2):
            model.logits.output.save()
    logits, _ = _trace_logits(model, PROMPT, 1)
    assert len(logits) == 1


def test_collecting_a_trace_the_worker_never_saw_is_an_error_record(model):
    from nnsight_fast.modeling.vllm.shipping import unpack_values

    saved, errors = unpack_values(model.llm.collective_rpc("nnsight_fast_collect", args=("no-such-trace",))[0])
    assert saved == [] and len(errors) == 1
    index, error, lines = errors[0]
    assert isinstance(error, RuntimeError) and "no request of this trace" in str(error) and lines == []
