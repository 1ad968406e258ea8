"""Timing helpers shared by the demo and bench/: medians with a progress line.

    per_call = median_seconds(lambda: model(x), repeats=200, label="bare forward")
    medians = interleaved_medians({"bare": bare, "traced": traced}, repeats=20)
    print(format_table(["variant", "µs"], [[name, f"{t * 1e6:.1f}"] for name, t in medians.items()]))
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Callable


def median_seconds(fn: Callable[[], object], repeats: int = 200, warmup: int = 20, label: str = "",
                   inner: int = 1, budget_s: float | None = None) -> float:
    """Median wall time of one call of `fn` (each sample runs it `inner` times).

    With `budget_s`, fewer samples are taken when `repeats` of them would take longer
    (at least 5)."""
    start = time.perf_counter()
    fn()
    if budget_s is not None:
        estimate = time.perf_counter() - start
        repeats = max(5, min(repeats, int(budget_s / max(estimate * inner, 1e-9))))
        warmup = min(warmup, max(1, repeats // 5))
    for _ in range(warmup - 1):
        fn()
    samples = []
    step = max(1, repeats // 20)
    for i in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) / inner)
        if label and (i % step == 0 or i == repeats - 1):
            sys.stderr.write(f"\r  timing {label:<40} {i + 1:>5}/{repeats}")
            sys.stderr.flush()
    if label:
        sys.stderr.write("\r" + " " * 70 + "\r")
    return statistics.median(samples)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 2,
                        label: str = "") -> dict[str, float]:
    """Median wall time of each function, timed round-robin (one call of each per round)
    so that drift of the machine's speed hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
        if label:
            sys.stderr.write(f"\r  timing {label:<40} round {i + 1:>4}/{repeats}")
            sys.stderr.flush()
    if label:
        sys.stderr.write("\r" + " " * 70 + "\r")
    return {name: statistics.median(values) for name, values in samples.items()}


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
