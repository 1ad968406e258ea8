"""Tracing generate: steps, steering, saving per step, stop, barrier — against hand-hooked generate."""

from __future__ import annotations

import warnings

import pytest
import torch

PROMPT = "The Eiffel Tower is in the city of"


def hooked_generate(lm, prompts, hooks=(), **kwargs):
    """Plain transformers generate with raw forward hooks [(module, hook), ...]."""
    batch = lm.tokenizer(prompts, return_tensors="pt", padding=True)
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        with torch.no_grad():
            return lm._module.generate(**batch, pad_token_id=lm.tokenizer.pad_token_id, do_sample=False, **kwargs)
    finally:
        for handle in handles:
            handle.remove()


def test_generate_result_and_generator_output(lm):
    with lm.generate(PROMPT, max_new_tokens=6, do_sample=False) as tracer:
        ids = lm.generator.output.save()
        result = tracer.result.save()
    expected = hooked_generate(lm, [PROMPT], max_new_tokens=6)
    assert torch.equal(ids, expected) and torch.equal(result, expected)


def test_steering_every_step_equals_hand_hooked_generate(lm):
    torch.manual_seed(1)
    steer = torch.randn(64) * 4
    with lm.generate(PROMPT, max_new_tokens=8, do_sample=False) as tracer:
        logits = []
        for step in tracer.all():
            lm.transformer.h[5].output[:] += steer
            logits.append(lm.lm_head.output)
        logits.save()
        tokens = tracer.result.save()

    seen = []

    def add(module, args, output):
        return output + steer

    expected = hooked_generate(
        lm, [PROMPT], hooks=[(lm._module.transformer.h[5], add),
                             (lm._module.lm_head, lambda m, a, o: seen.append(o))],
        max_new_tokens=8,
    )
    plain = hooked_generate(lm, [PROMPT], max_new_tokens=8)
    assert torch.equal(tokens, expected)
    assert not torch.equal(tokens, plain)
    assert len(logits) == len(seen) == 8
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(logits, seen))


def test_iter_slices_ints_and_lists(lm):
    calls = []
    with lm.generate(PROMPT, max_new_tokens=5, do_sample=False) as tracer:
        chosen = []
        for step in tracer.iter[1:3]:
            chosen.append((step, lm.transformer.h[0].output))
        for step in tracer.iter[[3, 4]]:
            chosen.append((step, lm.transformer.h[0].output))
        chosen.save()
    hooked_generate(lm, [PROMPT], hooks=[(lm._module.transformer.h[0], lambda m, a, o: calls.append(o))],
                    max_new_tokens=5)
    assert [s for s, _ in chosen] == [1, 2, 3, 4]
    assert all(torch.allclose(value, calls[s], atol=1e-6) for s, value in chosen)

    with lm.generate(PROMPT, max_new_tokens=5, do_sample=False) as tracer:
        for step in tracer.iter[2]:
            only = lm.transformer.h[0].output.save()
    assert torch.allclose(only, calls[2], atol=1e-6)


def test_tracer_next_and_envoy_next(lm):
    calls = []
    hooked_generate(lm, [PROMPT], hooks=[(lm._module.transformer.h[1], lambda m, a, o: calls.append(o))],
                    max_new_tokens=4)
    with lm.generate(PROMPT, max_new_tokens=4, do_sample=False) as tracer:
        first = lm.transformer.h[1].output.save()
        tracer.next()
        second = lm.transformer.h[1].output.save()
        fourth = lm.transformer.h[1].next(2).output.save()
    assert torch.allclose(first, calls[0]) and torch.allclose(second, calls[1]) and torch.allclose(fourth, calls[3])


def test_streamer_output_per_step(lm):
    """A loop reading only the streamer gets the prompt, then each new token (as nnsight 0.8.1)."""
    with lm.generate(PROMPT, max_new_tokens=4, do_sample=False) as tracer:
        pieces = []
        for step in tracer.all():
            pieces.append(lm.generator.streamer.output)
        pieces.save()
        tokens = tracer.result.save()
    prompt_length = lm.tokenizer(PROMPT, return_tensors="pt")["input_ids"].shape[1]
    assert torch.equal(pieces[0].reshape(-1), tokens[0, :prompt_length])
    assert [int(p.reshape(-1)[0]) for p in pieces[1:]] == tokens[0, prompt_length:].tolist()


def test_streamer_lines_up_with_the_models_steps(lm):
    """A block reading a layer and the streamer at each of steps 2..5 gets step i's hidden state and
    step i's token (the token is the argmax of that step's logits), as nnsight 0.8.1 does. Sampled
    at a high temperature so the tokens differ from step to step."""
    torch.manual_seed(3)
    with lm.generate(PROMPT, max_new_tokens=6, do_sample=True, temperature=5.0) as tracer:
        hidden, streamed, logits = [], [], []
        for step in tracer.iter[2:6]:
            hidden.append(lm.transformer.h[-2].output)
            logits.append(lm.lm_head.output)
            streamed.append(lm.generator.streamer.output)
        hidden.save(); streamed.save(); logits.save()
        tokens = tracer.result.save()
    prompt_length = lm.tokenizer(PROMPT, return_tensors="pt")["input_ids"].shape[1]
    assert len(hidden) == len(streamed) == 4
    assert [int(t.reshape(-1)[0]) for t in streamed] == tokens[0, prompt_length + 2:prompt_length + 6].tolist()
    assert len(set(tokens[0, prompt_length:].tolist())) > 2  # the steps are told apart
    assert all(h.shape[1] == 1 for h in hidden) and all(l.shape[1] == 1 for l in logits)


def test_a_step_the_run_never_makes_warns_and_ends_the_loop(lm):
    # named as nnsight names it, so warning filters written for nnsight keep working
    with pytest.warns(UserWarning, match=r"'model\.transformer\.h\.0\.output\.i3' was never reached.*step 3 but the "
                                         r"run made only 3") as warned:
        with lm.generate(PROMPT, max_new_tokens=3, do_sample=False) as tracer:
            steps = []
            for step in tracer.iter[0:10]:
                steps.append(step)
                hidden = lm.transformer.h[0].output
            steps.save()
            after = tracer.result.save()
    assert steps == [0, 1, 2, 3] and after.shape[1] > 3
    assert warned[0].filename == __file__  # attributed to the user's `with` line, not to nnsight_fast


def test_open_loops_end_quietly_and_never_spin(lm):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with lm.generate(PROMPT, max_new_tokens=5, do_sample=False) as tracer:
            every_other = []
            idle_steps = 0
            for step in tracer.all():
                if step % 2 == 0:
                    every_other.append(lm.lm_head.output)
            for step in tracer.iter[:]:
                idle_steps += 1  # asks for nothing: still moves in step with the model
            every_other.save()
            idle_steps = torch.tensor(idle_steps).save()
    assert len(every_other) == 3
    assert int(idle_steps) >= 1


def test_stop_mid_generation(lm):
    with lm.generate(PROMPT, max_new_tokens=10, do_sample=False) as tracer:
        kept = [].save()  # saved before the stop: code after the stop does not run
        for step in tracer.all():
            kept.append(lm.lm_head.output)
            if step == 2:
                tracer.stop()
    assert len(kept) == 3


def test_barrier_moves_embeddings_between_invokes(lm):
    first_prompt, second_prompt = "Madison Square Garden is located in the city of", "_ _ _ _ _ _ _ _ _ _"
    with lm.generate(max_new_tokens=3, do_sample=False) as tracer:
        barrier = tracer.barrier(2)
        with tracer.invoke(first_prompt):
            embeddings = lm.transformer.wte.output
            barrier()
            output1 = lm.generator.output.save()
        with tracer.invoke(second_prompt):
            barrier()
            lm.transformer.wte.output = embeddings
            output2 = lm.generator.output.save()

    state = {"first": True}

    def copy_row(module, args, output):
        if state["first"]:
            state["first"] = False
            output = output.clone()
            output[1] = output[0]
            return output
        return output

    expected = hooked_generate(lm, [first_prompt, second_prompt], hooks=[(lm._module.transformer.wte, copy_row)],
                               max_new_tokens=3)
    assert torch.equal(output1, expected[:1]) and torch.equal(output2, expected[1:])


def test_barrier_not_reached_by_all(lm, clean):
    with pytest.raises(ValueError, match=r"barrier\(2\) was reached by only 1"):
        with lm.generate(max_new_tokens=2) as tracer:
            barrier = tracer.barrier(2)
            with tracer.invoke(PROMPT):
                barrier()
            with tracer.invoke(PROMPT):
                out = lm.output.save()
    clean()


def test_invoking_while_generating_is_refused(lm, clean):
    with pytest.raises(ValueError, match="Cannot invoke while the model runs"):
        with lm.generate(max_new_tokens=2) as tracer:
            with tracer.invoke(PROMPT):
                with tracer.invoke(PROMPT):
                    pass
    clean()


def test_block_form_runs_once_per_step(lm):
    seen_hooked = []
    hooked_generate(lm, [PROMPT], hooks=[(lm._module.lm_head, lambda m, a, o: seen_hooked.append(o))],
                    max_new_tokens=4)
    with lm.generate(PROMPT, max_new_tokens=4, do_sample=False) as tracer:
        seen = [].save()
        with lm.lm_head.all():
            seen.append(lm.lm_head.output)
            last = lm.lm_head.output.save()
        count = len(seen)
        count = torch.tensor(count).save()
    assert int(count) == 4 and len(seen) == 4
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(seen, seen_hooked))
    assert torch.allclose(last, seen_hooked[-1], atol=1e-6)


def test_block_form_of_an_iter_slice_edits_those_steps(lm):
    state = {"calls": 0}

    def zero_steps_1_and_2(module, args, output):
        state["calls"] += 1
        return output * 0 if state["calls"] in (2, 3) else output

    expected = hooked_generate(lm, [PROMPT], hooks=[(lm._module.transformer.h[0], zero_steps_1_and_2)],
                               max_new_tokens=4)
    with lm.generate(PROMPT, max_new_tokens=4, do_sample=False) as tracer:
        with tracer.iter[1:3]:
            lm.transformer.h[0].output[:] = 0
        tokens = tracer.result.save()
    assert torch.equal(tokens, expected)


def test_device_map_goes_through_accelerate(gpt2_folder):
    pytest.importorskip("accelerate")
    from nnsight_fast import LanguageModel

    model = LanguageModel(gpt2_folder, device_map="cpu", dispatch=True)
    with model.trace(PROMPT):
        hidden = model.transformer.h[2].output.save()
        logits = model.lm_head.output.save()
    batch = model.tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        expected = model._module(**batch).logits
    assert torch.allclose(logits, expected, atol=1e-5) and hidden.shape[-1] == 64


def test_trace_with_fn_steps_through_each_model_call(lm, gpt2_folder):
    """`NNsight(hf_model).trace(ids, fn=hf_model.generate, ...)`: each call of the model is a step."""
    from transformers import AutoModelForCausalLM

    from nnsight_fast import NNsight

    net = AutoModelForCausalLM.from_pretrained(gpt2_folder)
    ids = lm.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    seen = []
    handle = net.lm_head.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()) and None)
    try:
        expected_tokens = net.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                                       pad_token_id=lm.tokenizer.pad_token_id)
    finally:
        handle.remove()
    model = NNsight(net)
    with model.trace(ids, fn=net.generate, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                     pad_token_id=lm.tokenizer.pad_token_id) as tracer:
        logits = []
        for _ in tracer.all():
            logits.append(model.lm_head.output)
        logits.save()
        tokens = tracer.result.save()
    assert len(logits) == 8
    assert torch.equal(tokens, expected_tokens)
    for got, expected in zip(logits, seen):
        assert torch.allclose(got, expected, atol=1e-6)
