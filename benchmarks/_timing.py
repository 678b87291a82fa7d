"""Timing helpers shared by the benchmark scripts."""
from __future__ import annotations

import time
from collections.abc import Callable


def best(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """Best CPU and best wall seconds of ``repeats`` runs, and the last result."""
    cpu = wall = float("inf")
    out = None
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        cpu = min(cpu, time.process_time() - c0)
        wall = min(wall, time.perf_counter() - w0)
    return cpu, wall, out


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best wall seconds of ``repeats`` runs."""
    return best(fn, repeats)[1]
