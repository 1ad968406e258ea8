"""A small GPT-2 built on this machine: random weights, a tokenizer trained on the spot.

    folder = build_local_gpt2("/tmp/tiny-gpt2", n_layer=12, n_embd=64)
    model = AutoModelForCausalLM.from_pretrained(folder)     # the real loading path
    tokenizer = AutoTokenizer.from_pretrained(folder)

No download happens: the config is `GPT2Config` with random init, the tokenizer a
byte-level BPE trained with `tokenizers` on a built-in text, both saved with
`save_pretrained`. Used by the demo, the tests and the benchmarks.
"""

from __future__ import annotations

import os

CORPUS = """The Eiffel Tower is in the city of Paris. The Colosseum is in the city of Rome.
Interpretability research reads the hidden states of a model while it runs.
A transformer block adds attention and a feed-forward network to the residual stream.
Steering a model means adding a vector to its activations at every generation step.
The quick brown fox jumps over the lazy dog. One two three four five six seven eight nine ten.
"""


def build_local_gpt2(folder: str, n_layer: int = 12, n_embd: int = 64, n_head: int = 4, vocab_size: int = 512,
                     seed: int = 0, model_vocab_size: int | None = None) -> str:
    """Writes a random-init GPT-2 and its tokenizer to `folder` (once); returns the folder.

    `model_vocab_size` sizes the model's embedding and head (default: the tokenizer's
    vocabulary); e.g. 50257 with n_embd=768, n_head=12 gives GPT-2-small's shapes."""
    if os.path.exists(os.path.join(folder, "config.json")) and os.path.exists(os.path.join(folder, "tokenizer.json")):
        return folder
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(CORPUS.splitlines() * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=model_vocab_size or len(tokenizer), n_positions=256, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
