"""Runs the benchmark for nnsight_fast and (when installed) nnsight 0.8.1 at torch 1 and 2
intra-op threads; writes JSON, the tables and the verdicts against design.md §5.

    python bench/run.py                                   # nnsight_fast only
    python bench/run.py --nnsight-python /path/to/venv/bin/python   # and nnsight 0.8.1
    python bench/run.py --threads 1 --lm-configs tiny     # one thread count, the tiny GPT-2 only

Each library runs in its own process per thread count (both libraries mount `.save()`
on every object); bare PyTorch and raw hooks are timed in each process beside the
library, and every figure is reported against bare from the same process.
Writes bench/results/latest.json and bench/results/latest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from workloads import load_package_file  # noqa: E402  (timing.py by path: no nnsight_fast import here)

format_table = load_package_file("timing.py").format_table

SIZES = (8, 32, 128)


def run_library(python: str, lib: str, repeats: int, threads: int, script: str = "workloads.py",
                extra: tuple = ()) -> dict | None:
    out = os.path.join(HERE, "results", f"{lib}-{script[:-3]}-t{threads}.json")
    print(f"== {lib} {script}, torch threads {threads} ({python})", file=sys.stderr)
    done = subprocess.run([python, os.path.join(HERE, script), "--lib", lib, "--repeats", str(repeats),
                           "--threads", str(threads), "--out", out, *extra])
    if done.returncode != 0:
        print(f"   {lib} failed (exit {done.returncode}); left out of the table", file=sys.stderr)
        return None
    with open(out) as f:
        data = json.load(f)
    return data["results"] if "results" in data else data


def slope(results: dict, kind: str, column: str) -> float:
    lo, hi = results[f"stack{SIZES[0]}_{kind}"], results[f"stack{SIZES[-1]}_{kind}"]
    return ((hi[column] - hi["bare"]) - (lo[column] - lo["bare"])) / (SIZES[-1] - SIZES[0])


def summary(results: dict, lm: dict | None) -> dict:
    """The design.md §5 quantities (µs over bare, or over raw hooks, from the same process)."""
    out = {
        "untraced_ratio": results["mlp_untraced"]["lib"] / results["mlp_untraced"]["bare"],
        "empty_trace_us": results["mlp_empty_trace"]["lib"] - results["mlp_empty_trace"]["bare"],
        "save_one_over_hooks_us": results["mlp_save_one"]["lib"] - results["mlp_save_one"]["hooks"],
        "per_passed_module_us": slope(results, "save_last", "lib"),
        "per_saved_module_us": slope(results, "save_all", "lib"),
        "hooks_per_saved_module_us": slope(results, "save_all", "hooks"),
    }
    if "loop64_two_requests" in results:
        loop = results["loop64_two_requests"]
        out["loop64_over_hooks_us"] = loop["lib"] - loop["hooks"]
    tiny = (lm or {}).get("tiny", {})
    if "generate64_per_token" in tiny:
        gen = tiny["generate64_per_token"]
        out["token_over_hooks_ms"] = (gen["lib"] - gen["hooks"]) / 1e3
    if "cache_all_modules" in tiny:
        cache = tiny["cache_all_modules"]
        out["cache_over_bare_us"] = cache["lib"] - cache["bare"]
        out["hooks_cache_over_bare_us"] = cache["hooks"] - cache["bare"]
    if "handoff_round_trip" in results:
        out["handoff_round_trip_us"] = results["handoff_round_trip"]["lib"]
    return out


# quantity -> (design.md §5 target, verdict on a summary; None: reported only)
BUDGET = {
    "untraced_ratio": ("≤ 1.01× bare", lambda s: s["untraced_ratio"] <= 1.01),
    "empty_trace_us": ("≤ 15 µs", lambda s: s["empty_trace_us"] <= 15),
    "save_one_over_hooks_us": ("≤ raw hooks + 10 µs", lambda s: s["save_one_over_hooks_us"] <= 10),
    "per_passed_module_us": ("≤ 0.5 µs", lambda s: s["per_passed_module_us"] <= 0.5),
    "loop64_over_hooks_us": ("≤ raw hooks + 2 µs per step", lambda s: s["loop64_over_hooks_us"] <= 2),
    "token_over_hooks_ms": ("≤ raw hooks + 0.01 ms", lambda s: s["token_over_hooks_ms"] <= 0.01),
    "cache_over_bare_us": ("≤ raw hooks (hooks_cache_over_bare_us)",
                           lambda s: s["cache_over_bare_us"] <= s["hooks_cache_over_bare_us"]),
    "per_saved_module_us": ("(reported)", None),
    "hooks_per_saved_module_us": ("(raw hooks)", None),
    "hooks_cache_over_bare_us": ("(raw hooks)", None),
    "handoff_round_trip_us": ("(reported)", None),
}


def verdicts(summaries: dict[int, dict]) -> str:
    """One row per §5 quantity: its value at each thread count and whether it meets the target."""
    threads = sorted(summaries)
    rows = []
    for key, (target, meets) in BUDGET.items():
        values = [summaries[t].get(key) for t in threads]
        if all(v is None for v in values):
            continue
        cells = ["—" if v is None else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}" for v in values]
        if meets is None:
            verdict = ""
        else:
            met = [meets(summaries[t]) for t, v in zip(threads, values) if v is not None]
            verdict = "met" if all(met) else "missed" if not any(met) else "met at " + ", ".join(
                str(t) for t, v in zip(threads, values) if v is not None and meets(summaries[t]))
        rows.append([key, target] + cells + [verdict])
    return format_table(["quantity", "design.md §5 target"] + [f"{t} thread(s)" for t in threads] + ["verdict"],
                        rows)


def markdown(all_results: dict[str, dict]) -> str:
    libs = list(all_results)
    rows = []
    first = all_results[libs[0]]
    for name in first:
        if name == "handoff_round_trip":
            continue
        for lib in libs:
            r = all_results[lib].get(name)
            if r is None:
                continue
            hooks = f"{r['hooks']:.1f} ({r['hooks'] / r['bare']:.2f}×)" if "hooks" in r else "—"
            rows.append([name, lib, f"{r['bare']:.1f}", hooks, f"{r['lib']:.1f} ({r['lib'] / r['bare']:.2f}×)"])
    return format_table(["workload", "library", "bare µs", "raw hooks µs (×bare)", "library µs (×bare)"], rows)


def lm_markdown(lm_results: dict[str, dict]) -> str:
    rows = []
    libs = list(lm_results)
    for config, workloads in lm_results[libs[0]].items():
        for name in workloads:
            for lib in libs:
                r = lm_results[lib].get(config, {}).get(name)
                if r is None:
                    continue
                other = next((k for k in ("hooks", "batch4", "save_module") if k in r), "bare")
                rows.append([f"{config} {name}", lib, f"{r['bare']:.0f}",
                             f"{other}: {r[other]:.0f} ({r[other] / r['bare']:.3f}×)",
                             f"{r['lib']:.0f} ({r['lib'] / r['bare']:.3f}×, {r['lib'] / r[other]:.3f}× {other})",
                             f"{(r['lib'] - r['bare']) / 1e3:+.3f}"])
    return format_table(["GPT-2 workload (µs; per token for generate)", "library", "bare", "reference",
                         "library (×bare, ×reference)", "ms over bare"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--threads", default="1,2", help="torch intra-op thread counts, one run each")
    parser.add_argument("--nnsight-python", default=os.environ.get("NNSIGHT_PYTHON", ""),
                        help="a Python with nnsight 0.8.1 installed (its own venv)")
    parser.add_argument("--lm-configs", default="tiny,small", help="GPT-2 configs for the language-model rows ('' skips)")
    parser.add_argument("--lm-budget", type=float, default=4.0, help="seconds per language-model row, about")
    arguments = parser.parse_args()
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    pythons = {"nnsight_fast": sys.executable}
    if arguments.nnsight_python:
        pythons["nnsight"] = arguments.nnsight_python
    sections, everything, summaries = [], {}, {}
    for threads in (int(t) for t in arguments.threads.split(",")):
        results = {}
        for lib, python in pythons.items():
            found = run_library(python, lib, arguments.repeats, threads)
            if found is not None:
                results[lib] = found
        if "nnsight_fast" not in results:
            sys.exit("nnsight_fast benchmark failed")
        lm_results = {}
        if arguments.lm_configs:
            lm_extra = ("--configs", arguments.lm_configs, "--budget", str(arguments.lm_budget))
            for lib, python in pythons.items():
                found = run_library(python, lib, 50, threads, "lm_workloads.py", lm_extra)
                if found is not None:
                    lm_results[lib] = found
        summaries[threads] = summary(results["nnsight_fast"], lm_results.get("nnsight_fast"))
        everything[threads] = {"results": results, "language_model": lm_results,
                               "summary": {lib: summary(r, lm_results.get(lib)) for lib, r in results.items()}}
        text = f"### torch {threads} intra-op thread(s)\n\n" + markdown(results)
        if lm_results:
            text += "\n\n" + lm_markdown(lm_results)
        sections.append(text)
    text = "### Verdicts (nnsight_fast)\n\n" + verdicts(summaries) + "\n\n" + "\n\n".join(sections)
    with open(os.path.join(HERE, "results", "latest.json"), "w") as f:
        json.dump(everything, f, indent=1)
    with open(os.path.join(HERE, "results", "latest.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
