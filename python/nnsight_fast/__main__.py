"""Demo: `python -m nnsight_fast`.

Builds a small GPT-2 on this machine (random init, tokenizer trained on the spot,
saved and loaded back through `LanguageModel(<folder>)`), steers every step of a
64-token generation while saving each step's logits, checks the tokens and logits
against the same work done with raw torch hooks, and prints what nnsight_fast costs
per generated token against bare `generate` and raw hooks.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

PROMPT = "The Eiffel Tower is in the city of"


def main(repeats: int = 20, new_tokens: int = 64, folder: str | None = None) -> dict:
    from nnsight_fast import LanguageModel
    from nnsight_fast.local_gpt2 import build_local_gpt2
    from nnsight_fast.timing import format_table, interleaved_medians

    folder = folder or tempfile.mkdtemp(prefix="nnsight_fast-gpt2-")
    print(f"Building a random-init GPT-2 (12 blocks) and a BPE tokenizer in {folder} ...")
    build_local_gpt2(folder, n_layer=12, n_embd=64)
    model = LanguageModel(folder)
    net, tokenizer = None, model.tokenizer
    torch.manual_seed(0)
    steer = torch.randn(64) * 2
    layer = 6
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                    pad_token_id=tokenizer.pad_token_id)

    def traced():
        with model.generate(PROMPT, **settings) as tracer:
            logits = []
            for step in tracer.all():
                model.transformer.h[layer].output[:] += steer
                logits.append(model.lm_head.output)
            logits.save()
            tokens = tracer.result.save()
        return tokens, logits

    inputs = tokenizer(PROMPT, return_tensors="pt")

    def bare():
        return net.generate(**inputs, **settings)

    def hooked():
        logits = []
        handles = [
            net.transformer.h[layer].register_forward_hook(lambda m, a, out: out.add_(steer)),
            net.lm_head.register_forward_hook(lambda m, a, out: logits.append(out)),
        ]
        try:
            tokens = net.generate(**inputs, **settings)
        finally:
            for handle in handles:
                handle.remove()
        return tokens, logits

    with torch.no_grad():
        tokens, logits = traced()  # the first run loads the weights
        net = model._module
        expected_tokens, expected_logits = hooked()
        assert torch.equal(tokens, expected_tokens), "steered tokens differ from the raw-hook run"
        assert len(logits) == len(expected_logits) == new_tokens
        assert all(torch.equal(a, b) for a, b in zip(logits, expected_logits)), "logits differ"
        assert not torch.equal(tokens, bare()), "steering changed nothing"
        print(f"Checked: {new_tokens} steered tokens and every step's logits equal the raw-hook run.")
        print("Steered token ids:", tokens[0, inputs["input_ids"].shape[1]:][:16].tolist(), "...\n")

        print(f"Timing {repeats} rounds of one {new_tokens}-token generation each way (medians):")
        times = interleaved_medians({"bare": bare, "hooks": hooked, "nnsight_fast": traced}, repeats,
                                    label="bare / raw hooks / nnsight_fast")
    per_token = {name: t / new_tokens for name, t in times.items()}
    base = per_token["bare"]
    rows = [[name, f"{t * 1e3:.3f}", f"{t / base:.3f}x", "—" if t is base else f"{(t - base) * 1e3:+.3f}"]
            for name, t in (("bare generate", per_token["bare"]),
                            ("raw torch hooks (steer + save logits)", per_token["hooks"]),
                            ("nnsight_fast (same work)", per_token["nnsight_fast"]))]
    print(format_table(["GPT-2 (12 blocks), per generated token", "ms", "vs bare", "ms over bare"], rows))
    print(f"\nnnsight_fast / raw hooks: {per_token['nnsight_fast'] / per_token['hooks']:.3f}x")
    return per_token


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds (one generation of each kind)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per generation")
    arguments = parser.parse_args()
    main(arguments.repeats, arguments.tokens)
