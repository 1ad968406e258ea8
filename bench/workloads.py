"""Benchmark workloads, run in one process for one library (nnsight_fast or nnsight).

    python bench/workloads.py --lib nnsight_fast --out results/nnsight_fast.json
    python bench/workloads.py --lib nnsight --out results/nnsight.json   # nnsight 0.8.1's venv

Each workload times bare PyTorch, raw `register_forward_hook` code doing the same
work, and the library's trace, in this process, so their ratios are comparable.
`bench/run.py` runs both libraries and writes the table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

import torch


def load_package_file(name: str):
    """A plain helper module of nnsight_fast (timing.py, local_gpt2.py) loaded by path:
    the process timing nnsight 0.8.1 must not import nnsight_fast."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python", "nnsight_fast", name)
    spec = importlib.util.spec_from_file_location(f"bench_{name[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


timing = load_package_file("timing.py")

SIZES = (8, 32, 128)


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16)
    )


def stack(n):
    torch.manual_seed(0)
    return torch.nn.Sequential(*(torch.nn.Linear(16, 16) for _ in range(n)))


def hooked_save(net, modules):
    """Raw hooks storing the outputs of `modules`; returns the stored list."""
    saved = []
    handles = [m.register_forward_hook(lambda mod, args, out: saved.append(out)) for m in modules]
    return saved, handles


def run(lib_name: str, repeats: int) -> dict:
    lib = importlib.import_module(lib_name)
    x = torch.randn(4, 16)
    results: dict[str, dict] = {}

    def record(name, inner=1, per=1, **variants):
        """Times the variants round-robin, so drift of the machine hits all of them alike
        (`per`: report per step of a run that makes that many)."""
        if inner > 1:
            variants = {k: (lambda f=f: [f() for _ in range(inner)]) for k, f in variants.items()}
        timings = timing.interleaved_medians(variants, repeats, warmup=20, label=name)
        timings = {k: v / inner / per for k, v in timings.items()}
        results[name] = {k: v * 1e6 for k, v in timings.items()}  # microseconds
        print(f"  {name:<28} " + "  ".join(f"{k}={v * 1e6:8.1f}µs" for k, v in timings.items()), file=sys.stderr)

    with torch.no_grad():
        # Empty trace, one saved output, and the untraced wrapped model (5-module MLP).
        bare_net = mlp()
        model = lib.NNsight(mlp())
        def bare():
            bare_net(x)

        def empty():
            with model.trace(x):
                pass

        def save_one():
            with model.trace(x):
                h = model[2].output.save()

        def one_hook():
            saved, handles = hooked_save(bare_net, [bare_net[2]])
            bare_net(x)
            for h in handles:
                h.remove()

        record("mlp_empty_trace", bare=bare, lib=empty)
        record("mlp_save_one", bare=bare, hooks=one_hook, lib=save_one)
        record("mlp_untraced", inner=20, bare=bare, lib=lambda: model(x))

        # Saving all / only the last of n Linear(16,16).
        for n in SIZES:
            bare_net = stack(n)
            model = lib.NNsight(stack(n))
            layers = list(model)

            def save_all():
                with model.trace(x):
                    outs = [layer.output.save() for layer in layers]

            def save_last():
                with model.trace(x):
                    last = layers[-1].output.save()

            def hook_all():
                saved, handles = hooked_save(bare_net, list(bare_net))
                bare_net(x)
                for h in handles:
                    h.remove()

            def hook_last():
                saved, handles = hooked_save(bare_net, [bare_net[-1]])
                bare_net(x)
                for h in handles:
                    h.remove()

            def bare():
                bare_net(x)

            record(f"stack{n}_save_all", bare=bare, hooks=hook_all, lib=save_all)
            record(f"stack{n}_save_last", bare=bare, hooks=hook_last, lib=save_last)
            record(f"stack{n}_untraced", bare=bare, lib=lambda: model(x))

        try:
            step_loop_rows(lib, record, torch.randn(2, 16))
        except AttributeError as missing:  # nnsight 0.8.1 has no envoy.next()
            print(f"  loop64_two_requests skipped for {lib_name}: {missing}", file=sys.stderr)

    if lib_name == "nnsight_fast":
        results["handoff_round_trip"] = {"lib": handoff_round_trip(repeats) * 1e6}
        print(f"  handoff_round_trip           lib={results['handoff_round_trip']['lib']:8.2f}µs", file=sys.stderr)
    return results


def handoff_round_trip(repeats: int) -> float:
    """One model ⇄ body handoff (greenlet switch there and back): the model serves a value, the body parks again."""
    from nnsight_fast import _native

    rounds = 2000
    handoff = _native.GreenletHandoff()

    def job():
        for _ in range(rounds + 1):
            _native.park(handoff)
        return False

    samples = []
    for _ in range(max(3, repeats // 100)):
        handoff.start(job)
        start = time.perf_counter()
        for _ in range(rounds):
            handoff.serve(None)
        samples.append((time.perf_counter() - start) / rounds)
        handoff.serve(None)  # lets the job finish
    return sorted(samples)[len(samples) // 2]


class StepLoop(torch.nn.Module):
    """A forward that runs a pair of Linears 64 times with some Python between the steps."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(16, 16)
        self.b = torch.nn.Linear(16, 16)

    def forward(self, x):
        for _ in range(64):
            x = self.b(self.a(x))
            total = 0
            for j in range(30):
                total += j
            x = torch.tanh(x)
        return x


def step_loop_rows(lib, record, x) -> None:
    """loop64_two_requests: each step the body edits `a`'s output and saves `b`'s (reported per step)."""
    torch.manual_seed(0)
    bare_net = StepLoop()
    model = lib.NNsight(StepLoop())

    def traced():
        with model.trace(x):
            outs = []
            for _ in range(64):
                model.a.output.mul_(0.5)
                outs.append(model.b.output.save())
                model.a.next()
                model.b.next()

    def hooked():
        outs = []
        handles = [bare_net.a.register_forward_hook(lambda m, a, o: o.mul_(0.5)),
                   bare_net.b.register_forward_hook(lambda m, a, o: outs.append(o))]
        bare_net(x)
        for h in handles:
            h.remove()

    record("loop64_two_requests", per=64, bare=lambda: bare_net(x), hooks=hooked, lib=traced)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--lib", default="nnsight_fast")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    lib_module = importlib.import_module(arguments.lib)
    version = getattr(lib_module, "__version__", "")
    print(f"{arguments.lib} {version} (torch {torch.__version__}, {torch.get_num_threads()} threads)", file=sys.stderr)
    data = {"lib": arguments.lib, "version": str(version), "torch": torch.__version__,
            "results": run(arguments.lib, arguments.repeats)}
    with open(arguments.out, "w") as f:
        json.dump(data, f, indent=1)
