"""Multi-resolution, banded DTW for alignment (not the verify DTW of :mod:`msdmatch.kernels.dtw`).

Conventions
-----------
* Rows ``i`` index the MIDI synthesis's frames ``X`` (``n``), columns ``j``
  the recording's frames ``Y`` (``m``); both are L2-normalised, so the local
  cost is the cosine distance ``1 - X[i] @ Y[j]``.
* Steps ``(1, 1)`` and ``(2, 1)`` weighted ``w_diag``, ``(1, 2)`` weighted
  ``w_side`` (the cost of a step is its weight times the local cost of the
  cell it enters): the local slope stays in [1/2, 2], and with the default
  ``w_side = 2 * w_diag`` every path pays the same weight per recording
  frame, so subsequence paths are not drawn to short or long spans.
* ``subseq=False`` (a full rendition): the path runs from ``(0, 0)`` to
  ``(n-1, m-1)``.  ``subseq=True`` (an excerpt): the path covers every column
  and may start and end on any row, i.e. the recording is a part of the MIDI.
* A band gives, per row, the half-open column range ``[lo[i], hi[i])`` that
  the DP visits; the coarsest level's band is the whole matrix.

The multi-resolution driver (:func:`align_path`) runs the DP on frames
averaged by ``factor**k`` until the matrix is small, then refines the path one
level at a time inside a band of ``radius`` frames around it, so memory and
time grow with ``n + m`` rather than ``n * m``.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from msdmatch.errors import ParameterError

#: Largest number of cells of the coarsest (unbanded) level.
MAX_COARSE_CELLS = 16_000_000


@njit(cache=True)
def _band_dtw(X, Y, lo, hi, subseq, w_diag, w_side):  # type: ignore[no-untyped-def]
    """Accumulated cost and steps in the band.

    Steps (the code stored in ``S``): 0 start, 1 from ``(i-1, j-1)`` weighted
    ``w_diag``, 2 from ``(i-2, j-1)`` weighted ``w_diag``, 3 from
    ``(i-1, j-2)`` weighted ``w_side``.  The local slope stays in [1/2, 2],
    and with ``w_side = 2 * w_diag`` every path pays the same total weight
    per recording frame, so a subsequence path is not drawn to short spans.
    """
    n, d = X.shape
    width = 0
    for i in range(n):
        width = max(width, hi[i] - lo[i])
    D = np.full((n, width), np.inf)
    S = np.full((n, width), -1, np.int8)
    for i in range(n):
        for j in range(lo[i], hi[i]):
            c = 1.0
            for k in range(d):
                c -= X[i, k] * Y[j, k]
            if c < 0.0:
                c = 0.0
            best = np.inf
            step = -1
            if (i == 0 and j == 0) or (subseq and j == 0):
                best = w_diag * c
                step = 0
            if i > 0 and j > 0 and lo[i - 1] <= j - 1 < hi[i - 1]:
                v = D[i - 1, j - 1 - lo[i - 1]] + w_diag * c
                if v < best:
                    best = v
                    step = 1
            if i > 1 and j > 0 and lo[i - 2] <= j - 1 < hi[i - 2]:
                v = D[i - 2, j - 1 - lo[i - 2]] + w_diag * c
                if v < best:
                    best = v
                    step = 2
            if i > 0 and j > 1 and lo[i - 1] <= j - 2 < hi[i - 1]:
                v = D[i - 1, j - 2 - lo[i - 1]] + w_side * c
                if v < best:
                    best = v
                    step = 3
            D[i, j - lo[i]] = best
            S[i, j - lo[i]] = step
    return D, S


@njit(cache=True)
def _traceback(S, lo, i, j):  # type: ignore[no-untyped-def]
    out = np.empty((S.shape[0] + j + 2, 2), np.int64)
    k = 0
    while True:
        out[k, 0] = i
        out[k, 1] = j
        k += 1
        s = S[i, j - lo[i]]
        if s == 1:
            i -= 1
            j -= 1
        elif s == 2:
            i -= 2
            j -= 1
        elif s == 3:
            i -= 1
            j -= 2
        else:
            break
    return out[:k][::-1].copy()


def _pool(X: np.ndarray, f: int) -> np.ndarray:
    """Average ``f`` consecutive frames and re-normalise; shape ``(ceil(n / f), d)``."""
    n = X.shape[0]
    pad = (-n) % f
    Xp = np.concatenate([X, np.repeat(X[-1:], pad, axis=0)]) if pad else X
    Z = Xp.reshape(-1, f, X.shape[1]).mean(axis=1)
    norm = np.linalg.norm(Z, axis=1, keepdims=True)
    np.divide(Z, norm, out=Z, where=norm > 0)
    return np.ascontiguousarray(Z, dtype=np.float32)


def _band_from_path(path: np.ndarray, *, f: int, n: int, m: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row column range at the finer level around a coarse path."""
    lo = np.full(n, m, np.int64)
    hi = np.zeros(n, np.int64)
    for ic, jc in path:
        a, b = ic * f, min(n, ic * f + f)
        lo[a:b] = np.minimum(lo[a:b], jc * f)
        hi[a:b] = np.maximum(hi[a:b], min(m, jc * f + f))
    # rows not reached by the projection (rounding at the end) take their neighbour's range
    for i in range(n):
        if hi[i] <= lo[i]:
            lo[i], hi[i] = (lo[i - 1], hi[i - 1]) if i else (0, min(m, f))
    from scipy.ndimage import maximum_filter1d, minimum_filter1d

    lo = minimum_filter1d(lo, 2 * radius + 1, mode="nearest") - radius
    hi = maximum_filter1d(hi, 2 * radius + 1, mode="nearest") + radius
    return np.clip(lo, 0, m).astype(np.int64), np.clip(hi, 1, m).astype(np.int64)


def _solve(X, Y, lo, hi, *, subseq: bool, w_diag: float, w_side: float) -> tuple[np.ndarray, float]:
    D, S = _band_dtw(X, Y, lo, hi, subseq, w_diag, w_side)
    n, m = X.shape[0], Y.shape[0]
    if subseq:
        rows = np.nonzero((lo <= m - 1) & (hi > m - 1))[0]
        ends = D[rows, m - 1 - lo[rows]]
        i = int(rows[int(np.argmin(ends))])
    else:
        i = n - 1
    cost = float(D[i, m - 1 - lo[i]])
    if not np.isfinite(cost):
        raise ParameterError("no alignment path inside the band; the sequences do not overlap")
    return _traceback(S, lo, i, m - 1), cost


def align_path(X: np.ndarray, Y: np.ndarray, *, subseq: bool = False, factor: int = 4, radius: int = 8,
               w_diag: float = 1.0, w_side: float = 2.0,
               max_coarse_cells: int = MAX_COARSE_CELLS) -> np.ndarray:
    """Multi-resolution DTW path between two sequences of unit frames.

    Parameters
    ----------
    X : np.ndarray [shape=(n, d)]
        MIDI frames (rows), L2-normalised.
    Y : np.ndarray [shape=(m, d)]
        Recording frames (columns), L2-normalised.
    subseq : bool
        The recording is an excerpt of the MIDI (see the module docstring).
    factor : int >= 2
        Frames averaged per level.
    radius : int >= 1
        Band half-width, in frames of the finer level, around the projected path.
    w_diag, w_side : float > 0
        Step weights.
    max_coarse_cells : int
        The coarsest level has at most this many cells.

    Returns
    -------
    path : np.ndarray [shape=(L, 2), dtype=int64]
        ``(i, j)`` cells, monotone, from start to end.
    """
    X = np.ascontiguousarray(X, dtype=np.float32)
    Y = np.ascontiguousarray(Y, dtype=np.float32)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[1] != Y.shape[1] or not len(X) or not len(Y):
        raise ParameterError(f"X and Y must be (n, d) and (m, d) with n, m >= 1, got {X.shape} and {Y.shape}")
    if factor < 2 or radius < 1:
        raise ParameterError(f"factor must be >= 2 and radius >= 1, got {factor} and {radius}")
    levels = [(X, Y)]
    while levels[-1][0].shape[0] * levels[-1][1].shape[0] > max_coarse_cells and min(
            levels[-1][0].shape[0], levels[-1][1].shape[0]) > 4 * factor:
        a, b = levels[-1]
        levels.append((_pool(a, factor), _pool(b, factor)))
    Xc, Yc = levels[-1]
    n, m = Xc.shape[0], Yc.shape[0]
    path, _ = _solve(Xc, Yc, np.zeros(n, np.int64), np.full(n, m, np.int64), subseq=subseq,
                     w_diag=w_diag, w_side=w_side)
    for Xf, Yf in reversed(levels[:-1]):
        lo, hi = _band_from_path(path, f=factor, n=Xf.shape[0], m=Yf.shape[0], radius=radius)
        if not subseq:
            lo[0], hi[-1] = 0, Yf.shape[0]
        path, _ = _solve(Xf, Yf, lo, hi, subseq=subseq, w_diag=w_diag, w_side=w_side)
    return path
