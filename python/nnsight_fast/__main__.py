"""Demo: `python -m nnsight_fast`.

Builds a small GPT-2 on this machine (random init, tokenizer trained on the spot,
saved and loaded back with `from_pretrained`), traces it (saves every block's
hidden state and zeroes one block's output), checks the result against the same
work done with raw torch hooks, and prints what tracing costs against a bare
forward and raw hooks.
"""

from __future__ import annotations

import argparse
import tempfile

import torch


def main(repeats: int = 300, folder: str | None = None) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nnsight_fast import NNsight
    from nnsight_fast.local_gpt2 import build_local_gpt2
    from nnsight_fast.timing import format_table, median_seconds

    folder = folder or tempfile.mkdtemp(prefix="nnsight_fast-gpt2-")
    print(f"Building a random-init GPT-2 (12 blocks) and a BPE tokenizer in {folder} ...")
    build_local_gpt2(folder, n_layer=12, n_embd=64)
    net = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    input_ids = tokenizer("The Eiffel Tower is in the city of", return_tensors="pt")["input_ids"]
    model = NNsight(net)
    blocks = model.transformer.h
    zeroed = 3

    def traced():
        with model.trace(input_ids):
            states = []
            for i, block in enumerate(blocks):
                if i == zeroed:
                    block.output[:] = 0
                states.append(block.output)
            states.save()
            logits = model.output.logits.save()
        return states, logits

    def hooked():
        states = []

        def save_hook(module, args, output):
            states.append(output)

        def zero_hook(module, args, output):
            output[:] = 0

        handles = [net.transformer.h[zeroed].register_forward_hook(zero_hook)]
        handles += [block.register_forward_hook(save_hook) for block in net.transformer.h]
        try:
            logits = net(input_ids).logits
        finally:
            for handle in handles:
                handle.remove()
        return states, logits

    with torch.no_grad():
        states, logits = traced()
        expected_states, expected_logits = hooked()
        assert len(states) == len(expected_states) == 12
        assert all(torch.equal(a, b) for a, b in zip(states, expected_states)), "hidden states differ"
        assert torch.equal(logits, expected_logits), "logits differ"
        assert torch.all(states[zeroed] == 0)
        print(f"Checked: 12 hidden states and the logits (block {zeroed} zeroed) equal the raw-hook run.\n")

        bare = median_seconds(lambda: net(input_ids), repeats, label="bare forward")
        hooks = median_seconds(hooked, repeats, label="raw torch hooks")
        ours = median_seconds(traced, repeats, label="nnsight_fast trace")

    rows = [
        ["bare forward", f"{bare * 1e6:.0f}", "1.00x", "—"],
        ["raw torch hooks (save 12, zero 1)", f"{hooks * 1e6:.0f}", f"{hooks / bare:.2f}x",
         f"+{(hooks - bare) * 1e6:.0f}"],
        ["nnsight_fast trace (same work)", f"{ours * 1e6:.0f}", f"{ours / bare:.2f}x",
         f"+{(ours - bare) * 1e6:.0f}"],
    ]
    print(format_table(["GPT-2 (12 blocks), one forward", "µs per call", "vs bare", "µs over bare"], rows))
    print(f"\nnnsight_fast / raw hooks: {ours / hooks:.2f}x")
    return {"bare": bare, "hooks": hooks, "nnsight_fast": ours}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300, help="timed calls per row")
    main(parser.parse_args().repeats)
