"""Language models beyond GPT-2, each against plain transformers on the same random-init checkpoint:
left padding, every input key passed on, lazy models built with the loading keywords."""

from __future__ import annotations

import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from nnsight_fast import LanguageModel  # noqa: E402

PROMPTS = ["The quick brown fox jumps over the lazy dog", "Hello"]


def _checkpoint(tmp_path_factory, gpt2_folder: str, name: str, build) -> str:
    """A random-init checkpoint saved with the local GPT-2's tokenizer: `build(tokenizer)` makes the model."""
    folder = str(tmp_path_factory.mktemp(name))
    tokenizer = transformers.AutoTokenizer.from_pretrained(gpt2_folder)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    build(tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory, gpt2_folder):
    return _checkpoint(tmp_path_factory, gpt2_folder, "llama", lambda tokenizer: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                 max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id)))


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory, gpt2_folder):
    return _checkpoint(tmp_path_factory, gpt2_folder, "t5", lambda tokenizer: transformers.T5ForConditionalGeneration(
        transformers.T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                              pad_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
                              eos_token_id=tokenizer.eos_token_id)))


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory, gpt2_folder):
    return _checkpoint(tmp_path_factory, gpt2_folder, "bert", lambda tokenizer: transformers.BertForMaskedLM(
        transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64, type_vocab_size=2,
                                pad_token_id=tokenizer.eos_token_id)).eval())


@pytest.fixture(scope="module")
def mixtral_folder(tmp_path_factory, gpt2_folder):
    return _checkpoint(tmp_path_factory, gpt2_folder, "mixtral", lambda tokenizer: transformers.MixtralForCausalLM(
        transformers.MixtralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                   num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=128,
                                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)))


def _alone(net, tokenizer, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        return net(**tokenizer(prompt, return_tensors="pt")).logits


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_left_padded_invokes_see_what_they_see_alone(arch, gpt2_folder, llama_folder):
    """A short prompt batched with a longer one (left padding) gives its logits alone, per invoke
    and with one invoke of a list of prompts."""
    folder = gpt2_folder if arch == "gpt2" else llama_folder
    model = LanguageModel(folder)
    with model.trace() as tracer:
        with tracer.invoke(PROMPTS[0]):
            long = model.lm_head.output.save()
        with tracer.invoke(PROMPTS[1]):
            short = model.lm_head.output.save()
    with model.trace(PROMPTS):
        both = model.lm_head.output.save()
    net = model._module
    for prompt, got in ((PROMPTS[0], long[0]), (PROMPTS[1], short[0]), (PROMPTS[0], both[0]),
                        (PROMPTS[1], both[1])):
        alone = _alone(net, model.tokenizer, prompt)[0]
        assert torch.allclose(got[-alone.shape[0]:], alone, atol=1e-4), prompt


def test_position_ids_given_by_the_user_are_used(gpt2_folder):
    model = LanguageModel(gpt2_folder)
    ids = model.tokenizer(PROMPTS[0], return_tensors="pt")
    positions = torch.arange(3, 3 + ids["input_ids"].shape[1]).unsqueeze(0)
    with model.trace({**ids, "position_ids": positions}):
        logits = model.lm_head.output.save()
    with torch.no_grad():
        expected = model._module(**ids, position_ids=positions).logits
        default = model._module(**ids).logits
    assert torch.allclose(logits, expected, atol=1e-5)
    assert not torch.allclose(logits, default, atol=1e-3)


def test_inputs_embeds_instead_of_ids(llama_folder):
    model = LanguageModel(llama_folder)
    ids = model.tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    with model.trace(input_ids=ids):  # loads the weights
        expected = model.lm_head.output.save()
    embeds = model._module.get_input_embeddings()(ids).detach()
    with model.trace(inputs_embeds=embeds):
        logits = model.lm_head.output.save()
    assert torch.allclose(logits, expected, atol=1e-5)


def test_token_type_ids_reach_bert(bert_folder):
    model = LanguageModel(bert_folder, automodel=transformers.AutoModelForMaskedLM)
    encoded = model.tokenizer("one two three four", return_tensors="pt")
    types = torch.zeros_like(encoded["input_ids"])
    types[:, 2:] = 1
    with model.trace(input_ids=encoded["input_ids"], token_type_ids=types):
        logits = model.output.logits.save()
    net = model._module
    with torch.no_grad():
        expected = net(input_ids=encoded["input_ids"], token_type_ids=types).logits
        without = net(input_ids=encoded["input_ids"]).logits
    assert torch.allclose(logits, expected, atol=1e-5)
    assert not torch.allclose(logits, without, atol=1e-3)


def test_t5_decoder_inputs_per_invoke(t5_folder):
    model = LanguageModel(t5_folder, automodel=transformers.AutoModelForSeq2SeqLM)
    tok = model.tokenizer
    decoder = [tok("one two", return_tensors="pt")["input_ids"], tok("three", return_tensors="pt")["input_ids"]]
    with model.trace() as tracer:
        with tracer.invoke(PROMPTS[0], decoder_input_ids=decoder[0]):
            first = model.lm_head.output.save()
        with tracer.invoke(PROMPTS[1], decoder_input_ids=decoder[1]):
            second = model.lm_head.output.save()
    net = model._module
    for prompt, dec, got in ((PROMPTS[0], decoder[0], first), (PROMPTS[1], decoder[1], second)):
        with torch.no_grad():
            alone = net(**tok(prompt, return_tensors="pt"), decoder_input_ids=dec).logits[0]
        assert torch.allclose(got[0, -alone.shape[0]:], alone, atol=1e-4), prompt


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_key_the_forward_does_not_take_is_a_clear_error(arch, gpt2_folder, llama_folder):
    model = LanguageModel(gpt2_folder if arch == "gpt2" else llama_folder)
    with pytest.raises(ValueError, match="takes no 'decoder_input_ids'"):
        with model.trace("Hello", decoder_input_ids=torch.tensor([[1, 2]])):
            out = model.lm_head.output.save()
    if arch == "llama":  # a forward whose **kwargs are typed: any other unknown keyword too
        with pytest.raises(ValueError, match="takes no 'not_an_input'"):
            with model.trace("Hello", not_an_input=1):
                out = model.lm_head.output.save()
    with model.trace("Hello"):
        out = model.lm_head.output.save()
    assert out.shape[0] == 1


def test_lazy_model_is_built_with_the_loading_keywords(gpt2_folder):
    model = LanguageModel(gpt2_folder, dtype=torch.bfloat16, attn_implementation="eager", num_hidden_layers=2)
    assert not model.dispatched
    assert len(model.transformer.h) == 2
    assert model._module.config._attn_implementation == "eager"
    with model.scan("Hello world"):
        weights = model.transformer.h[0].attn.output[1].save()  # eager attention returns its weights
        scanned = model.lm_head.output.save()
    assert scanned.dtype == torch.bfloat16
    assert weights is not None and weights.shape[-1] == weights.shape[-2]
    with model.trace("Hello world"):
        hidden = model.transformer.h[-1].output.save()
        logits = model.lm_head.output.save()
    assert model.dispatched and len(model.transformer.h) == 2
    assert logits.dtype == torch.bfloat16
    loaded = transformers.AutoModelForCausalLM.from_pretrained(gpt2_folder, dtype=torch.bfloat16,
                                                              attn_implementation="eager", num_hidden_layers=2)
    with torch.no_grad():
        expected = loaded(**model.tokenizer("Hello world", return_tensors="pt")).logits
    assert torch.equal(logits, expected)
    assert os.path.isdir(gpt2_folder)


def test_mixture_of_experts_router_and_edit_match_hooks(mixtral_folder):
    """Mixtral: the router's logits and the MoE block's output as raw hooks see them, and an edit
    of the MoE output (scaled by 0.5 at layer 0) gives the logits the same edit by a hook gives."""
    model = LanguageModel(mixtral_folder)
    prompt = PROMPTS[0]
    with model.trace(prompt):
        router = model.model.layers[0].mlp.gate.output.save()
        moe = model.model.layers[0].mlp.output.save()
        plain_logits = model.lm_head.output.save()
    with model.trace(prompt):
        model.model.layers[0].mlp.output = model.model.layers[0].mlp.output * 0.5
        edited_logits = model.lm_head.output.save()
    net = model._module
    seen = {}
    inputs = model.tokenizer(prompt, return_tensors="pt")

    def keep(name):
        def hook(module, args, out):
            seen[name] = out
        return hook

    handles = [net.model.layers[0].mlp.gate.register_forward_hook(keep("router")),
               net.model.layers[0].mlp.register_forward_hook(keep("moe"))]
    with torch.no_grad():
        expected = net(**inputs).logits
    for handle in handles:
        handle.remove()
    handle = net.model.layers[0].mlp.register_forward_hook(
        lambda module, args, out: tuple(o * 0.5 for o in out) if isinstance(out, tuple) else out * 0.5)
    with torch.no_grad():
        expected_edited = net(**inputs).logits
    handle.remove()

    def first(value):
        return value[0] if isinstance(value, tuple) else value

    assert torch.allclose(first(router), first(seen["router"]), atol=1e-6)
    assert torch.allclose(first(moe), first(seen["moe"]), atol=1e-6)
    assert torch.allclose(plain_logits, expected, atol=1e-5)
    assert torch.allclose(edited_logits, expected_edited, atol=1e-5)
    assert not torch.allclose(edited_logits, plain_logits, atol=1e-4)


def test_labels_in_one_invoke_of_a_batch(gpt2_folder):
    """Labels given to one invoke only: the batch's labels line up with the padded tokens and
    the loss is the labelled invoke's loss alone."""
    model = LanguageModel(gpt2_folder)
    short = model.tokenizer(PROMPTS[1], return_tensors="pt")["input_ids"]
    with model.trace() as tracer:
        with tracer.invoke(PROMPTS[0]):
            pass
        with tracer.invoke(short, labels=short):
            pass
        with tracer.invoke():  # the whole batch
            loss = model.output.loss.save()
    with torch.no_grad():
        expected = model._module(input_ids=short, labels=short).loss
    assert torch.allclose(loss, expected, atol=1e-5)
