"""Language-model benchmark rows, run in one process for one library.

    python bench/lm_workloads.py --lib nnsight_fast --out results/nnsight_fast_lm.json

On a locally built GPT-2 (random init; `tiny`: 12 blocks of width 64, `small`:
GPT-2-small's shapes) it times bare PyTorch, raw hooks doing the same work, and
the library: saving all 12 blocks' outputs, zeroing one block's output in place,
generating 8 and 64 tokens with a steering edit and a logits save at every step
(reported per generated token), 4 invokes of one prompt each against one
batch-4 forward, a forward after `.source` was built on every attention (unused), and
reading one attention operation against saving one module output. Every variant gets
the same pre-tokenized input.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workloads import load_package_file  # noqa: E402

timing = load_package_file("timing.py")
build_local_gpt2 = load_package_file("local_gpt2.py").build_local_gpt2

CONFIGS = {
    "tiny": dict(n_layer=12, n_embd=64, n_head=4),
    "small": dict(n_layer=12, n_embd=768, n_head=12, model_vocab_size=50257),
}
PROMPT = "The Eiffel Tower is in the city of"


def run(lib_name: str, config: str, repeats: int, budget_s: float) -> dict:
    lib = importlib.import_module(lib_name)
    folder = os.path.join(tempfile.gettempdir(), f"nnsight_fast-bench-gpt2-{config}")
    build_local_gpt2(folder, **CONFIGS[config])
    model = lib.LanguageModel(folder, dispatch=True)
    net = model._model if hasattr(model, "_model") else model._module
    tokenizer = model.tokenizer
    ids = tokenizer(PROMPT, return_tensors="pt")
    blocks = [net.transformer.h[i] for i in range(12)]
    steer = torch.randn(net.config.n_embd)
    results: dict[str, dict] = {}

    def record(name, scale=1.0, **variants):
        """Times the variants round-robin (drift hits all alike), as many rounds as fit the budget."""
        start = time.perf_counter()
        for fn in variants.values():
            fn()
        rounds = max(5, min(repeats, int(budget_s / max(time.perf_counter() - start, 1e-9))))
        timings = timing.interleaved_medians(variants, rounds, warmup=2, label=f"{config} {name}")
        results[name] = {k: v * 1e6 / scale for k, v in timings.items()}
        print(f"  {config}_{name:<22} " + "  ".join(f"{k}={v * 1e6 / scale:9.1f}µs" for k, v in timings.items()),
              file=sys.stderr)

    def with_hooks(modules_hooks, call):
        handles = [m.register_forward_hook(h) for m, h in modules_hooks]
        try:
            return call()
        finally:
            for h in handles:
                h.remove()

    with torch.no_grad():
        def bare_forward():
            net(**ids)

        def save_all():
            with model.trace(ids):
                outs = [model.transformer.h[i].output.save() for i in range(12)]

        def hooks_save_all():
            saved = []
            with_hooks([(b, lambda m, a, o: saved.append(o)) for b in blocks], lambda: net(**ids))

        record("save_all_blocks", bare=bare_forward, hooks=hooks_save_all, lib=save_all)

        def zero_one():
            with model.trace(ids):
                model.transformer.h[5].output[:] = 0

        def hooks_zero_one():
            with_hooks([(blocks[5], lambda m, a, o: o.zero_())], lambda: net(**ids))

        record("zero_one_block", bare=bare_forward, hooks=hooks_zero_one, lib=zero_one)

        for tokens in (8, 64):
            settings = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)

            def generate():
                with model.generate(ids, **settings) as tracer:
                    logits = []
                    for step in tracer.all():
                        model.transformer.h[6].output[:] += steer
                        logits.append(model.lm_head.output.save())

            def hooks_generate():
                logits = []
                with_hooks([(blocks[6], lambda m, a, o: o.add_(steer)),
                            (net.lm_head, lambda m, a, o: logits.append(o))],
                           lambda: net.generate(**ids, **settings))

            record(f"generate{tokens}_per_token", scale=tokens, bare=lambda: net.generate(**ids, **settings),
                   hooks=hooks_generate, lib=generate)

        batch4 = tokenizer([PROMPT] * 4, return_tensors="pt", padding=True)

        def four_invokes():
            with model.trace() as tracer:
                for _ in range(4):
                    with tracer.invoke(ids):
                        out = model.lm_head.output.save()

        def one_batch():
            with model.trace(batch4):
                out = model.lm_head.output.save()

        record("four_invokes", bare=lambda: net(**batch4), batch4=one_batch, lib=four_invokes)

        # tracer.cache() of every module against raw hooks storing detached outputs.
        all_modules = list(net.modules())

        def detached(value):
            if isinstance(value, torch.Tensor):
                return value.detach()
            if isinstance(value, (tuple, list)):
                return type(value)(detached(v) for v in value)
            return value

        def cache_all():
            with model.trace(ids) as tracer:
                cache = tracer.cache()

        def hooks_cache_all():
            store = {}
            with_hooks([(m, lambda mod, a, o: store.setdefault(id(mod), []).append(detached(o)))
                        for m in all_modules], lambda: net(**ids))

        record("cache_all_modules", bare=bare_forward, hooks=hooks_cache_all, lib=cache_all)

        # `.source`: built on every attention but unused, and reading one operation.
        def save_module():
            with model.trace(ids):
                out = model.transformer.h[3].attn.output.save()

        def read_op():
            with model.trace(ids):
                out = model.transformer.h[3].attn.source.attention_interface_1.output.save()

        plain_net = copy.deepcopy(net)  # the same weights, never wrapped
        for block in model.transformer.h:
            str(block.attn.source)
        record("source_built_unused", bare=lambda: plain_net(**ids), lib=bare_forward)
        record("source_read_one_op", bare=bare_forward, save_module=save_module, lib=read_op)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--lib", default="nnsight_fast")
    parser.add_argument("--configs", default="tiny,small")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--budget", type=float, default=4.0, help="seconds per timed row at most (about)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    print(f"{arguments.lib} GPT-2 rows (torch {torch.__version__}, {torch.get_num_threads()} threads)", file=sys.stderr)
    data = {config: run(arguments.lib, config, arguments.repeats, arguments.budget)
            for config in arguments.configs.split(",")}
    with open(arguments.out, "w") as f:
        json.dump(data, f, indent=1)
