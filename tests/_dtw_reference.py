"""Plain numpy/Python reference DTW used only by the tests.

Written independently of the numba kernels: full cost matrices, Python tuples
for (cost, length), and an exhaustive path enumeration for tiny inputs.
"""

from __future__ import annotations

import math
from fractions import Fraction
from itertools import product

import numpy as np


def gully_index(m: int, n: int, gully: float) -> int:
    short = min(m, n)
    return min(int(math.floor(gully * short)), short - 1)


def end_cells(m: int, n: int, gully: float) -> list[tuple[int, int]]:
    """Allowed end cells: last column by increasing row, then last row."""
    g = gully_index(m, n, gully)
    cells = [(i, n - 1) for i in range(g, m)]
    cells += [(m - 1, j) for j in range(g, n) if (m - 1, j) not in cells]
    return cells


def hamming_matrix(query: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    return np.bitwise_count(query[:, None] ^ candidate[None, :]).astype(np.int64)


def reference_hamming_dtw(
    query: np.ndarray, candidate: np.ndarray, *, penalty: int = 15, gully: float = 0.9
) -> float:
    """DP on (cost, -length) keys, exact end choice with fractions."""
    D = hamming_matrix(query, candidate)
    m, n = D.shape
    best: dict[tuple[int, int], tuple[int, int]] = {}
    for i in range(m):
        for j in range(n):
            d = int(D[i, j])
            if i == 0 or j == 0:
                best[i, j] = (d, 1)
                continue
            options = [
                (best[i - 1, j - 1][0] + d, best[i - 1, j - 1][1] + 1),
                (best[i - 1, j][0] + d + penalty, best[i - 1, j][1] + 1),
                (best[i, j - 1][0] + d + penalty, best[i, j - 1][1] + 1),
            ]
            best[i, j] = min(options, key=lambda cl: (cl[0], -cl[1]))
    ratios = [Fraction(*best[c]) for c in end_cells(m, n, gully)]
    r = min(ratios)
    return r.numerator / r.denominator


def all_paths(m: int, n: int, gully: float):  # type: ignore[no-untyped-def]
    """Every allowed path as a list of (i, j, step) with step in {s, d, v, h}.

    Cells of the first row and column are start cells only: a path never
    steps into one (the DP restarts there), so it leaves the first row or
    column on its first step.
    """
    ends = set(end_cells(m, n, gully))
    starts = [(0, j) for j in range(n)] + [(i, 0) for i in range(1, m)]

    def extend(path):  # type: ignore[no-untyped-def]
        i, j, _ = path[-1]
        if (i, j) in ends:
            yield list(path)
        for di, dj, st in ((1, 1, "d"), (1, 0, "v"), (0, 1, "h")):
            if 0 < i + di < m and 0 < j + dj < n:
                path.append((i + di, j + dj, st))
                yield from extend(path)
                path.pop()

    for s in starts:
        yield from extend([(s[0], s[1], "s")])


def brute_force_hamming_dtw(
    query: np.ndarray, candidate: np.ndarray, *, penalty: int = 15, gully: float = 0.9
) -> float:
    """Enumerate all paths; per end cell take the lexicographic min of
    (cost, -length), then the smallest cost/length over end cells."""
    D = hamming_matrix(query, candidate)
    m, n = D.shape
    per_end: dict[tuple[int, int], tuple[int, int]] = {}
    for path in all_paths(m, n, gully):
        cost = sum(int(D[i, j]) + (penalty if st in "vh" else 0) for i, j, st in path)
        key = (cost, -len(path))
        end = path[-1][:2]
        if end not in per_end or key < per_end[end]:
            per_end[end] = key
    r = min(Fraction(c, -negl) for c, negl in per_end.values())
    return r.numerator / r.denominator


def brute_force_min_ratio(
    query: np.ndarray, candidate: np.ndarray, *, penalty: int = 15, gully: float = 0.9
) -> float:
    """The true minimum of cost/length over all paths (not what DTW returns)."""
    D = hamming_matrix(query, candidate)
    m, n = D.shape
    best = None
    for path in all_paths(m, n, gully):
        cost = sum(int(D[i, j]) + (penalty if st in "vh" else 0) for i, j, st in path)
        r = Fraction(cost, len(path))
        best = r if best is None or r < best else best
    assert best is not None
    return best.numerator / best.denominator


def reference_cosine_dtw(
    X: np.ndarray, Y: np.ndarray, *, gully: float = 0.96, penalty: float | None = None
) -> tuple[float, np.ndarray]:
    """Full-matrix cosine DTW with the same tie rules as the kernel."""
    C = 1.0 - X.astype(np.float32) @ Y.astype(np.float32).T
    C = np.clip(C.astype(np.float64), 0.0, 2.0)
    pen = float(np.median(C)) if penalty is None else float(penalty)
    n, m = C.shape
    A = np.zeros((n, m))
    L = np.zeros((n, m), dtype=np.int64)
    back: dict[tuple[int, int], tuple[int, int] | None] = {}
    for i, j in product(range(n), range(m)):
        if i == 0 or j == 0:
            A[i, j], L[i, j], back[i, j] = C[i, j], 1, None
            continue
        cand = [
            (A[i - 1, j - 1], (i - 1, j - 1)),
            (A[i - 1, j] + pen, (i - 1, j)),
            (A[i, j - 1] + pen, (i, j - 1)),
        ]
        val, prev = cand[0]
        for v, p in cand[1:]:
            if v < val:
                val, prev = v, p
        A[i, j] = val + C[i, j]
        L[i, j] = L[prev] + 1
        back[i, j] = prev
    best, best_cell = math.inf, (-1, -1)
    for cell in end_cells(n, m, gully):
        r = A[cell] / L[cell]
        if r < best:
            best, best_cell = r, cell
    path = [best_cell]
    while back[path[-1]] is not None:
        path.append(back[path[-1]])  # type: ignore[arg-type]
    path_arr = np.array(path[::-1], dtype=np.int64)
    (i0, j0), (i1, j1) = path_arr[0], path_arr[-1]
    mean = float(C[i0 : i1 + 1, j0 : j1 + 1].mean())
    cost = float(A[best_cell])
    if mean > 0:
        score = cost / L[best_cell] / mean
    else:
        score = 0.0 if cost == 0 else math.inf
    return float(score), path_arr
