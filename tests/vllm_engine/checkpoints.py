"""The tiny random-init checkpoints the vLLM tests run (built and saved locally, no download)."""

from __future__ import annotations

ENGINE = dict(dtype="float32", max_model_len=128, seed=0)


def build_llama(folder: str, zero_mlp_layer: int | None = None) -> str:
    """A 2-layer Llama (hidden 128, 4 heads, 2 KV heads) and its tokenizer in `folder`;
    `zero_mlp_layer`: that layer's down_proj weights are zero, so its MLP outputs zero."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from nnsight_fast.local_gpt2 import build_local_gpt2

    tokenizer = AutoTokenizer.from_pretrained(build_local_gpt2(folder + "-tokenizer", n_layer=1))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    if zero_mlp_layer is not None:
        with torch.no_grad():
            model.model.layers[zero_mlp_layer].mlp.down_proj.weight.zero_()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_mixtral(folder: str, tokenizer_folder: str) -> str:
    """A 2-layer Mixtral (4 experts, 2 per token, hidden 128) with the tokenizer of `tokenizer_folder`."""
    import torch
    from transformers import AutoTokenizer, MixtralConfig, MixtralForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                           max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id)
    MixtralForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
