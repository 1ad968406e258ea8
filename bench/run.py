"""Runs the benchmark for nnsight_fast and (when installed) nnsight 0.8.1; writes JSON + a table.

    python bench/run.py                                   # nnsight_fast only
    python bench/run.py --nnsight-python /path/to/venv/bin/python   # and nnsight 0.8.1

Each library runs in its own process (both mount `.save()` on every object);
bare PyTorch and raw hooks are timed in each process beside the library, and
every figure is reported as a ratio to bare from the same process.
Writes bench/results/latest.json and bench/results/latest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))
from nnsight_fast.timing import format_table  # noqa: E402

SIZES = (8, 32, 128)


def run_library(python: str, lib: str, repeats: int, script: str = "workloads.py", extra: tuple = ()) -> dict | None:
    out = os.path.join(HERE, "results", f"{lib}-{script[:-3]}.json")
    print(f"== {lib} {script} ({python})", file=sys.stderr)
    done = subprocess.run([python, os.path.join(HERE, script), "--lib", lib, "--repeats", str(repeats),
                           "--out", out, *extra])
    if done.returncode != 0:
        print(f"   {lib} failed (exit {done.returncode}); left out of the table", file=sys.stderr)
        return None
    with open(out) as f:
        data = json.load(f)
    return data["results"] if "results" in data else data


def slope(results: dict, kind: str, column: str) -> float:
    lo, hi = results[f"stack{SIZES[0]}_{kind}"], results[f"stack{SIZES[-1]}_{kind}"]
    return ((hi[column] - hi["bare"]) - (lo[column] - lo["bare"])) / (SIZES[-1] - SIZES[0])


def summary(results: dict) -> dict:
    """The design.md §5 quantities, all as extra cost over bare from the same process."""
    out = {
        "empty_trace_us": results["mlp_empty_trace"]["lib"] - results["mlp_empty_trace"]["bare"],
        "save_one_us": results["mlp_save_one"]["lib"] - results["mlp_save_one"]["bare"],
        "per_saved_module_us": slope(results, "save_all", "lib"),
        "per_passed_module_us": slope(results, "save_last", "lib"),
        "untraced_ratio": results["mlp_untraced"]["lib"] / results["mlp_untraced"]["bare"],
        "untraced_ratio_128": results["stack128_untraced"]["lib"] / results["stack128_untraced"]["bare"],
        "hooks_per_saved_module_us": slope(results, "save_all", "hooks"),
        "hooks_per_passed_module_us": slope(results, "save_last", "hooks"),
    }
    if "handoff_round_trip" in results:
        out["handoff_round_trip_us"] = results["handoff_round_trip"]["lib"]
    return out


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
    table = format_table(["workload", "library", "bare µs", "raw hooks µs (×bare)", "library µs (×bare)"], rows)
    budget = {"empty_trace_us": "≤ 30", "save_one_us": "—", "per_saved_module_us": "≤ 15",
              "per_passed_module_us": "≤ 0.5", "untraced_ratio": "≤ 1.02", "untraced_ratio_128": "≤ 1.02",
              "hooks_per_saved_module_us": "(raw hooks)", "hooks_per_passed_module_us": "(raw hooks)",
              "handoff_round_trip_us": "≤ 5"}
    summaries = {lib: summary(r) for lib, r in all_results.items()}
    srows = [[key, budget[key]] + [f"{summaries[lib].get(key, float('nan')):.2f}" for lib in libs] for key in budget]
    return table + "\n\n" + format_table(["quantity (over bare)", "design.md §5 budget"] + libs, srows)


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
    parser.add_argument("--nnsight-python", default=os.environ.get("NNSIGHT_PYTHON", ""),
                        help="a Python with nnsight 0.8.1 installed (its own venv)")
    parser.add_argument("--lm-configs", default="tiny,small", help="GPT-2 configs for the language-model rows ('' skips)")
    parser.add_argument("--lm-budget", type=float, default=4.0, help="seconds per language-model row, about")
    arguments = parser.parse_args()
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    all_results = {"nnsight_fast": run_library(sys.executable, "nnsight_fast", arguments.repeats)}
    if all_results["nnsight_fast"] is None:
        sys.exit("nnsight_fast benchmark failed")
    if arguments.nnsight_python:
        nnsight = run_library(arguments.nnsight_python, "nnsight", arguments.repeats)
        if nnsight is not None:
            all_results["nnsight"] = nnsight
    text = markdown(all_results)
    lm_results = {}
    if arguments.lm_configs:
        lm_extra = ("--configs", arguments.lm_configs, "--budget", str(arguments.lm_budget))
        pythons = {"nnsight_fast": sys.executable}
        if arguments.nnsight_python:
            pythons["nnsight"] = arguments.nnsight_python
        for lib, python in pythons.items():
            found = run_library(python, lib, 50, "lm_workloads.py", lm_extra)
            if found is not None:
                lm_results[lib] = found
        if lm_results:
            text += "\n\n" + lm_markdown(lm_results)
    with open(os.path.join(HERE, "results", "latest.json"), "w") as f:
        json.dump({"results": all_results, "summary": {k: summary(v) for k, v in all_results.items()},
                   "language_model": lm_results}, f, indent=1)
    with open(os.path.join(HERE, "results", "latest.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
