"""Benchmark the DTW kernels against dtaidistance and librosa.

Prints cells per second on one thread for Hamming-DTW (query ~650 steps
against many ~80-step candidates), dtaidistance's C DTW and librosa's DTW on
the same lengths, the ratios, the early-abandoning rate for ``top_r``, and
cosine DTW as the verify step calls it (1800 x 646 and 650 x 650 frames) with
the time of each part.  Everything runs on one thread (numba, and BLAS when
threadpoolctl is installed).  Each timing is the best of ``--repeats`` runs,
since the machine is shared.

Usage: ``python benchmarks/dtw_kernels.py [--query 650] [--cand 80] [--n 1000]``
"""

from __future__ import annotations

import argparse

import numba
import numpy as np
from _timing import best_time  # noqa: E402

from msdmatch.kernels.dtw import cosine_dtw, cosine_dtw_pair, hamming_dtw_many


def related_words(rng: np.random.Generator, base: np.ndarray, n_flips: int) -> np.ndarray:
    """Copy of ``base`` with ``n_flips`` random bits flipped per word."""
    out = base.copy()
    for _ in range(n_flips):
        out ^= np.left_shift(np.uint32(1), rng.integers(0, 32, base.size).astype(np.uint32))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--query", type=int, default=650, help="query steps")
    ap.add_argument("--cand", type=int, default=80, help="candidate steps (mean)")
    ap.add_argument("--n", type=int, default=1000, help="number of candidates")
    ap.add_argument("--top-r", type=int, default=100, help="top_r for early abandoning")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline-pairs", type=int, default=40, help="pairs timed for baselines")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    numba.set_num_threads(1)
    blas = "BLAS threads not limited (pip install threadpoolctl)"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
        blas = "BLAS limited to 1 thread"
    except ImportError:
        pass
    print(f"numba threads 1, {blas}")
    rng = np.random.default_rng(args.seed)
    m, n_c, n = args.query, args.cand, args.n
    query = rng.integers(0, 2**32, m, dtype=np.uint32)
    lengths = rng.integers(max(1, n_c - 8), n_c + 9, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    words = rng.integers(0, 2**32, int(offsets[-1]), dtype=np.uint32)
    # A tenth of the candidates are noisy copies of query segments, so the
    # top_r run has realistic structure to prune against.
    for i in rng.choice(n, n // 10, replace=False):
        a = int(rng.integers(0, m - lengths[i] + 1)) if m >= lengths[i] else 0
        seg = query[a : a + lengths[i]]
        words[offsets[i] : offsets[i] + seg.size] = related_words(rng, seg, 4)
    cells = int(m * lengths.sum())

    hamming_dtw_many(query, words, offsets)  # compile / load cache
    t_ours = best_time(lambda: hamming_dtw_many(query, words, offsets), args.repeats)
    ours = cells / t_ours
    print(f"hamming_dtw_many  {m} x ~{n_c} x {n} candidates: {t_ours * 1e3:8.2f} ms  {ours:.3g} cells/s")

    full = hamming_dtw_many(query, words, offsets)
    top = hamming_dtw_many(query, words, offsets, top_r=args.top_r)
    t_top = best_time(lambda: hamming_dtw_many(query, words, offsets, top_r=args.top_r), args.repeats)
    n_inf = int(np.isinf(top).sum())
    same = np.array_equal(
        np.lexsort((np.arange(n), full))[: args.top_r], np.lexsort((np.arange(n), top))[: args.top_r]
    )
    print(
        f"hamming_dtw_many  top_r={args.top_r}: {t_top * 1e3:8.2f} ms  abandoned {n_inf}/{n}  "
        f"top set equal to exhaustive: {same}"
    )

    try:
        from dtaidistance import dtw as dtai
    except ImportError:
        dtai = None
    k = min(args.baseline_pairs, n)
    qf = query.astype(np.float64)
    cands = [words[offsets[i] : offsets[i + 1]].astype(np.float64) for i in range(k)]
    pair_cells = int(m * lengths[:k].sum())
    if dtai is not None:
        dtai.distance_fast(qf, cands[0])
        t = best_time(lambda: [dtai.distance_fast(qf, c) for c in cands], args.repeats)
        dt_rate = pair_cells / t
        print(f"dtaidistance.distance_fast  : {dt_rate:.3g} cells/s   ours/dtaidistance = {ours / dt_rate:.1f}x")
    else:
        print("dtaidistance not installed; pip install dtaidistance")

    import librosa

    costs = [np.abs(qf[:, None] - c[None, :]) for c in cands]
    librosa.sequence.dtw(C=costs[0], backtrack=False)
    t = best_time(lambda: [librosa.sequence.dtw(C=c, backtrack=False) for c in costs], args.repeats)
    lr_rate = pair_cells / t
    print(f"librosa.sequence.dtw (given C): {lr_rate:.3g} cells/s   ours/librosa = {ours / lr_rate:.1f}x")

    for n_x, n_y in ((1800, 646), (650, 650)):
        time_cosine(rng, n_x, n_y, args.repeats)


def unit_frames(rng: np.random.Generator, n: int) -> np.ndarray:
    """Non-negative L2-normalised frames, float16 as in the store."""
    x = np.abs(rng.normal(size=(n, 48)))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def time_cosine(rng: np.random.Generator, n_x: int, n_y: int, repeats: int) -> None:
    """Verify-step cosine DTW (``return_path=False``) and its parts.

    Y is a time-warped excerpt of X, like a preview inside a whole song.
    """
    from msdmatch.kernels import _dtw_kernels as _k
    from msdmatch.kernels.features import standardize_bins

    X = unit_frames(rng, n_x)
    start = int(rng.integers(0, max(1, n_x - n_y)))
    Y = X[np.sort(rng.integers(start, start + min(n_x, n_y), n_y))]
    cosine_dtw(X, Y)  # compile / load cache
    t_total = best_time(lambda: cosine_dtw(X, Y, return_path=False), repeats)
    t_path = best_time(lambda: cosine_dtw(X, Y), repeats)

    x32, y32 = X.astype(np.float32), Y.astype(np.float32)
    dots = x32 @ y32.T
    t_mm = best_time(lambda: x32 @ y32.T, repeats)
    C = dots.copy()
    hist, _ = _k._cost_in_place(C.reshape(-1), True)
    t_copy = best_time(lambda: dots.copy(), repeats)
    t_cost = best_time(lambda: _k._cost_in_place(dots.copy().reshape(-1), True), repeats) - t_copy
    pen = float(_k._median_from_hist(C.reshape(-1), hist))
    t_med = best_time(lambda: _k._median_from_hist(C.reshape(-1), hist), repeats)
    g = int(0.96 * min(n_x, n_y))
    ei, ej, _, _, i0, j0 = _k._cosine_dtw_score_kernel(C, pen, g)
    t_dp = best_time(lambda: _k._cosine_dtw_score_kernel(C, pen, g), repeats)
    t_box = best_time(lambda: _k._box_sum(C, i0, ei, j0, ej), repeats)
    t_np_med = best_time(lambda: np.median(C.astype(np.float64)), repeats)
    print(
        f"cosine_dtw {n_x} x {n_y} return_path=False: {t_total * 1e3:7.2f} ms   "
        f"with path: {t_path * 1e3:7.2f} ms\n"
        f"    matmul {t_mm * 1e3:.2f}  clip+histogram {t_cost * 1e3:.2f}  "
        f"median selection {t_med * 1e3:.2f} (np.median of float64: {t_np_med * 1e3:.2f})  "
        f"DP {t_dp * 1e3:.2f}  box sum {t_box * 1e3:.2f}  (ms, best of {repeats})"
    )
    # verify's two CQT views (as stored, bin-standardised) in one interleaved pass
    Xs, Ys = standardize_bins(X), standardize_bins(Y)
    cosine_dtw_pair(X, Y, Xs, Ys)
    t_two = best_time(lambda: (cosine_dtw(X, Y, return_path=False), cosine_dtw(Xs, Ys, return_path=False)), repeats)
    t_pair = best_time(lambda: cosine_dtw_pair(X, Y, Xs, Ys), repeats)
    print(f"cosine_dtw_pair (as stored + bin-standardised): {t_pair * 1e3:7.2f} ms   two cosine_dtw calls: "
          f"{t_two * 1e3:7.2f} ms   ratio {t_two / t_pair:.2f}x")


if __name__ == "__main__":
    main()
