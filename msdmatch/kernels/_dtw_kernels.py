"""Bare numba kernels behind :mod:`msdmatch.kernels.dtw`.

Nothing here validates its input: the public wrappers in :mod:`msdmatch.kernels.dtw`
check dtypes, shapes and ranges once and then call these kernels on prepared
arrays.  The conventions (packed costs, lane layout, end cells) are documented
in :mod:`msdmatch.kernels.dtw`; this module only restates what a kernel expects.

Packed Hamming-DTW costs
------------------------
A DP value ``P`` packs the accumulated cost and the path length of the best
path into one signed integer, ``P = cost * 2**shift + (len_mask - length)``
with ``len_mask = 2**shift - 1 >= M + N - 1``.  Taking the minimum of packed
values minimises the cost first and, among equal costs, maximises the length.
Extending a path by one cell of local distance ``d`` (plus penalty ``phi`` for
a horizontal or vertical step) adds ``(d + phi) * 2**shift - 1``, so the whole
recurrence is integer adds and mins, which LLVM vectorises across lanes.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic


@intrinsic
def _popcount(typingctx, x):  # type: ignore[no-untyped-def]
    """Population count of the low 32 bits of an integer (LLVM ``ctpop``).

    numba widens ``int32 ^ int32`` to int64 with sign extension, so the value
    is truncated to 32 bits first; the count is returned in the input's type.
    """
    if not isinstance(x, types.Integer) or x.bitwidth < 32:
        return None
    sig = x(x)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        low = builder.trunc(args[0], ir.IntType(32)) if x.bitwidth > 32 else args[0]
        count = builder.ctpop(low)
        return builder.zext(count, ir.IntType(x.bitwidth)) if x.bitwidth > 32 else count

    return sig, codegen


@njit(cache=True, boundscheck=False)
def _consider_end(packed, shift, len_mask, lane, best_cost, best_len):  # type: ignore[no-untyped-def]
    """Keep the end cell with the smaller cost/length, compared exactly."""
    p = np.int64(packed)
    cost = p >> shift
    length = len_mask - (p & len_mask)
    if cost * best_len[lane] < best_cost[lane] * length:
        best_cost[lane] = cost
        best_len[lane] = length


@njit(cache=True, boundscheck=False)
def _hamming_block(q, cw, nlen, shift, phi_s, start_add, lastcol, lastrow):  # type: ignore[no-untyped-def]
    """Hamming-DTW dynamic programme for one query and ``W`` candidate lanes.

    Parameters
    ----------
    q : int32 or int64 [shape=(M,)]
        Query words (uint32 bit patterns cast to the signed type).
    cw : same dtype as ``q`` [shape=(N_max, W)]
        Candidate words, one candidate per column (lane), zero padded.
    nlen : int64 [shape=(W,)]
        Per-lane candidate length ``N_k``.
    shift, phi_s, start_add : same dtype as ``q``
        Cost-field shift, ``phi * 2**shift`` and ``len_mask - 1``.
    lastcol : same dtype as ``q`` [shape=(M, W)]
        Output: packed value of cell ``(i, N_k - 1)`` for every row ``i``.
    lastrow : same dtype as ``q`` [shape=(N_max, W)]
        Output: packed values of the last row.
    """
    M = q.shape[0]
    N, W = cw.shape
    prev = np.empty((N, W), dtype=cw.dtype)
    cur = np.empty((N, W), dtype=cw.dtype)
    qi = q[0]
    for j in range(N):
        for k in range(W):
            prev[j, k] = (_popcount(qi ^ cw[j, k]) << shift) + start_add
    for i in range(1, M):
        qi = q[i]
        for k in range(W):
            cur[0, k] = (_popcount(qi ^ cw[0, k]) << shift) + start_add
        for j in range(1, N):
            for k in range(W):
                d = _popcount(qi ^ cw[j, k]) << shift
                a = prev[j - 1, k]
                b = min(prev[j, k], cur[j - 1, k]) + phi_s
                cur[j, k] = min(a, b) + d - 1
        for k in range(W):
            lastcol[i, k] = cur[nlen[k] - 1, k]
        prev, cur = cur, prev
    for j in range(N):
        for k in range(W):
            lastrow[j, k] = prev[j, k]
    # Row 0 is recomputed here rather than stored before the main loop: a
    # store into ``lastcol`` ahead of the loop stops LLVM vectorising it.
    qi = q[0]
    for k in range(W):
        lastcol[0, k] = (_popcount(qi ^ cw[nlen[k] - 1, k]) << shift) + start_add


@njit(cache=True, boundscheck=False)
def _block_scores(lastcol, lastrow, nlen, gidx, shift, out, idx):  # type: ignore[no-untyped-def]
    """Best cost/length over each lane's end cells, written to ``out[idx]``."""
    sh = np.int64(shift)
    len_mask = (np.int64(1) << sh) - 1
    best_cost = np.ones(nlen.shape[0], dtype=np.int64)
    best_len = np.zeros(nlen.shape[0], dtype=np.int64)
    M = lastcol.shape[0]
    for k in range(nlen.shape[0]):
        for i in range(gidx[k], M):
            _consider_end(lastcol[i, k], sh, len_mask, k, best_cost, best_len)
        for j in range(gidx[k], nlen[k]):
            _consider_end(lastrow[j, k], sh, len_mask, k, best_cost, best_len)
        out[idx[k]] = best_cost[k] / best_len[k]


@njit(cache=True, boundscheck=False)
def _gather_block(words, offsets, idx, dtype_probe):  # type: ignore[no-untyped-def]
    """Candidates ``idx`` as a zero-padded (N_max, W) lane array."""
    w = idx.shape[0]
    nmax = 0
    for k in range(w):
        c = idx[k]
        nmax = max(nmax, offsets[c + 1] - offsets[c])
    cw = np.zeros((nmax, w), dtype=dtype_probe.dtype)
    nlen = np.empty(w, dtype=np.int64)
    for k in range(w):
        c = idx[k]
        a = offsets[c]
        nlen[k] = offsets[c + 1] - a
        for j in range(nlen[k]):
            cw[j, k] = words[a + j]
    return cw, nlen


@njit(cache=True, boundscheck=False)
def _gully_indices(m, nlen, gully):  # type: ignore[no-untyped-def]
    g = np.empty(nlen.shape[0], dtype=np.int64)
    for k in range(nlen.shape[0]):
        short = min(m, nlen[k])
        g[k] = min(np.int64(np.floor(gully * short)), short - 1)
    return g


@njit(cache=True, boundscheck=False)
def _run_block(q, words, offsets, idx, gully, shift, phi_s, start_add, out):  # type: ignore[no-untyped-def]
    cw, nlen = _gather_block(words, offsets, idx, q)
    gidx = _gully_indices(q.shape[0], nlen, gully)
    lastcol = np.empty((q.shape[0], cw.shape[1]), dtype=cw.dtype)
    lastrow = np.empty(cw.shape, dtype=cw.dtype)
    _hamming_block(q, cw, nlen, shift, phi_s, start_add, lastcol, lastrow)
    _block_scores(lastcol, lastrow, nlen, gidx, shift, out, idx)


@njit(cache=True, parallel=True, boundscheck=False)
def _hamming_many_all(q, words, offsets, order, lanes, gully, shift, phi_s, start_add, out):  # type: ignore[no-untyped-def]
    """Exhaustive batch: blocks of ``lanes`` candidates taken from ``order``."""
    n = order.shape[0]
    n_blocks = (n + lanes - 1) // lanes
    for b in prange(n_blocks):
        idx = order[b * lanes : min(n, (b + 1) * lanes)]
        _run_block(q, words, offsets, idx, gully, shift, phi_s, start_add, out)


@njit(cache=True, boundscheck=False)
def _row_col_minima(q, cw, pad):  # type: ignore[no-untyped-def]
    """Row minima (M, W) and column minima (N_max, W) of the popcount matrix.

    ``pad`` is 0 on real cells and a value above 32 on padded cells, OR-ed into
    the distance so padding never wins a minimum.
    """
    m = q.shape[0]
    n, w = cw.shape
    rmin = np.empty((m, w), dtype=cw.dtype)
    cmin = np.full((n, w), 64, dtype=cw.dtype)
    for i in range(m):
        qi = q[i]
        for k in range(w):
            rmin[i, k] = 64
        for j in range(n):
            for k in range(w):
                d = _popcount(qi ^ cw[j, k]) | pad[j, k]
                rmin[i, k] = min(rmin[i, k], d)
                cmin[j, k] = min(cmin[j, k], d)
    return rmin, cmin


@njit(cache=True, boundscheck=False)
def _prefix_bound(mins, count, g, phi):  # type: ignore[no-untyped-def]
    """Bound for paths covering ``mins[0..e]`` for some ``e >= g``.

    Returns the smaller of ``phi + min(mins[:count])`` (as ``num/1``) and the
    smallest prefix mean ``sum(mins[:e+1]) / (e+1)`` over ``e >= g``, as an
    exact rational ``(num, den)``.
    """
    best_num = np.int64(phi) + np.int64(mins[0])
    best_den = np.int64(1)
    lo = np.int64(mins[0])
    total = np.int64(0)
    for e in range(count):
        v = np.int64(mins[e])
        total += v
        lo = min(lo, v)
        if e >= g and total * best_den < best_num * (e + 1):
            best_num = total
            best_den = np.int64(e + 1)
    if (np.int64(phi) + lo) * best_den < best_num:
        best_num = np.int64(phi) + lo
        best_den = np.int64(1)
    return best_num, best_den


@njit(cache=True, boundscheck=False)
def _lower_bounds(q, words, offsets, lanes, gully, phi, lb_num, lb_den):  # type: ignore[no-untyped-def]
    """Per-candidate lower bound on the normalised Hamming-DTW score.

    See :func:`msdmatch.kernels.dtw.hamming_dtw_many` for the proof.
    """
    n_cand = offsets.shape[0] - 1
    m = q.shape[0]
    for b in range(0, n_cand, lanes):
        idx = np.arange(b, min(n_cand, b + lanes))
        cw, nlen = _gather_block(words, offsets, idx, q)
        pad = np.zeros(cw.shape, dtype=cw.dtype)
        for k in range(idx.shape[0]):
            for j in range(nlen[k], cw.shape[0]):
                pad[j, k] = 64
        rmin, cmin = _row_col_minima(q, cw, pad)
        for k in range(idx.shape[0]):
            nk = nlen[k]
            g = np.int64(np.floor(gully * min(m, nk)))
            g = min(g, min(m, nk) - 1)
            rn, rd = _prefix_bound(rmin[:, k], m, g, phi)
            cn, cd = _prefix_bound(cmin[:, k], nk, g, phi)
            if rn * cd <= cn * rd:
                lb_num[b + k] = rn
                lb_den[b + k] = rd
            else:
                lb_num[b + k] = cn
                lb_den[b + k] = cd


@njit(cache=True, boundscheck=False)
def _hamming_many_top(  # type: ignore[no-untyped-def]
    q, words, offsets, order, lanes, gully, shift, phi_s, start_add, lb_num, lb_den, top_r, out
):
    """Batch with early abandoning; ``order`` sorts candidates by bound.

    A block is skipped when every lane's bound exceeds the current ``top_r``-th
    best exact score; skipped candidates keep ``out = inf``.  Returns the number
    of candidates whose DP was run.
    """
    n = order.shape[0]
    done = np.empty(n, dtype=np.float64)
    n_done = 0
    tau = np.inf
    for b in range(0, n, lanes):
        idx = order[b : min(n, b + lanes)]
        if n_done >= top_r:
            skip = True
            for k in range(idx.shape[0]):
                c = idx[k]
                if not _bound_exceeds(lb_num[c], lb_den[c], tau):
                    skip = False
                    break
            if skip:
                continue
        _run_block(q, words, offsets, idx, gully, shift, phi_s, start_add, out)
        for k in range(idx.shape[0]):
            done[n_done] = out[idx[k]]
            n_done += 1
        if n_done >= top_r:
            tau = np.partition(done[:n_done], top_r - 1)[top_r - 1]
    return n_done


@njit(cache=True, boundscheck=False)
def _bound_exceeds(num, den, tau):  # type: ignore[no-untyped-def]
    """True only if the exact ``num/den`` exceeds the exact score behind ``tau``.

    ``tau = fl(c/l)`` is a correctly rounded quotient of integers.  Rounding is
    monotone, so ``num/den <= c/l`` implies ``fl(num/den) <= fl(c/l)``; by
    contraposition ``fl(num/den) > tau`` implies ``num/den > c/l``.
    """
    return num / den > tau


@njit(cache=True, boundscheck=False)
def _cosine_dtw_kernel(C, penalty, g):  # type: ignore[no-untyped-def]
    """Cosine DTW dynamic programme with an int8 step matrix.

    Returns ``(steps, end_i, end_j, cost, length)``; ``steps`` holds 0 for a
    start cell, 1 diagonal, 2 vertical (from ``i-1``), 3 horizontal (from
    ``j-1``).
    """
    n, m = C.shape
    steps = np.empty((n, m), dtype=np.int8)
    prev_c = np.empty(m, dtype=np.float64)
    cur_c = np.empty(m, dtype=np.float64)
    prev_l = np.empty(m, dtype=np.int64)
    cur_l = np.empty(m, dtype=np.int64)
    best_ratio = np.inf
    best_i = -1
    best_j = -1
    best_cost = np.inf
    best_len = 0
    for j in range(m):
        prev_c[j] = C[0, j]
        prev_l[j] = 1
        steps[0, j] = 0
    if g == 0:
        r = prev_c[m - 1] / prev_l[m - 1]
        if r < best_ratio:
            best_ratio, best_i, best_j, best_cost, best_len = r, 0, m - 1, prev_c[m - 1], prev_l[m - 1]
    for i in range(1, n):
        cur_c[0] = C[i, 0]
        cur_l[0] = 1
        steps[i, 0] = 0
        for j in range(1, m):
            best = prev_c[j - 1]
            ln = prev_l[j - 1]
            st = 1
            up = prev_c[j] + penalty
            if up < best:
                best = up
                ln = prev_l[j]
                st = 2
            left = cur_c[j - 1] + penalty
            if left < best:
                best = left
                ln = cur_l[j - 1]
                st = 3
            cur_c[j] = best + C[i, j]
            cur_l[j] = ln + 1
            steps[i, j] = st
        if i >= g:
            r = cur_c[m - 1] / cur_l[m - 1]
            if r < best_ratio:
                best_ratio, best_i, best_j, best_cost, best_len = r, i, m - 1, cur_c[m - 1], cur_l[m - 1]
        prev_c, cur_c = cur_c, prev_c
        prev_l, cur_l = cur_l, prev_l
    for j in range(g, m):
        r = prev_c[j] / prev_l[j]
        if r < best_ratio:
            best_ratio, best_i, best_j, best_cost, best_len = r, n - 1, j, prev_c[j], prev_l[j]
    return steps, best_i, best_j, best_cost, best_len


@njit(cache=True, boundscheck=False)
def _traceback(steps, end_i, end_j, length):  # type: ignore[no-untyped-def]
    """Path (length, 2) from the start cell to ``(end_i, end_j)``."""
    path = np.empty((length, 2), dtype=np.int64)
    i = end_i
    j = end_j
    p = length - 1
    while True:
        path[p, 0] = i
        path[p, 1] = j
        st = steps[i, j]
        if st == 0:
            break
        if st == 1:
            i -= 1
            j -= 1
        elif st == 2:
            i -= 1
        else:
            j -= 1
        p -= 1
    return path


#: Cosine costs are integer multiples of ``2**-24`` (see :func:`_cost_in_place`).
_COST_SCALE = 16777216.0
#: The median selection splits the 25-bit cost key into 13 high and 12 low bits.
_LOW_BITS = 12


@njit(cache=True, boundscheck=False)
def _cost_in_place(g, want_hist):  # type: ignore[no-untyped-def]
    """Turn a flat float32 array of dot products into ``clip(1 - g, 0, 2)``.

    Every result is an integer multiple of ``2**-24``: for ``g`` in
    ``[0.5, 2]`` the float32 subtraction ``1 - g`` is exact (Sterbenz) and
    ``g`` is a multiple of ``2**-24``; for ``g < 0.5`` the result exceeds 0.5
    and is rounded to the float32 grid there, whose spacing is at least
    ``2**-24``; anything else is clipped to 0 or 2.  So ``key = cost * 2**24``
    is an exact integer in ``[0, 2**25]``, monotone in the cost.

    If ``want_hist``, returns the histogram of ``key >> _LOW_BITS`` (length
    ``2**13 + 1``) for :func:`_median_from_hist`, and as second value
    ``False`` if some cost broke the property (then the caller falls back to
    a sort-based median); otherwise returns an empty histogram and ``True``.
    """
    one = np.float32(1.0)
    two = np.float32(2.0)
    zero = np.float32(0.0)
    total = g.shape[0]
    # Clip first in its own (vectorised) loop; a NaN becomes 2, so keys stay
    # in range.  The histogram loop cannot vectorise and runs separately.
    for t in range(total):
        v = one - g[t]
        v = v if v < two else two
        g[t] = v if v > zero else zero
    hist = np.zeros((1 << (25 - _LOW_BITS)) + 1 if want_hist else 0, dtype=np.int64)
    n_inexact = 0
    if want_hist:
        for t in range(total):
            s = np.float64(g[t]) * _COST_SCALE
            key = np.int64(s)
            n_inexact += key != s
            hist[key >> _LOW_BITS] += 1
    exact = n_inexact == 0
    return hist, exact


@njit(cache=True, boundscheck=False)
def _rank_bin(hist, rank):  # type: ignore[no-untyped-def]
    """Bin holding the element of 0-based ``rank``, and the count before it."""
    below = 0
    for b in range(hist.shape[0]):
        if below + hist[b] > rank:
            return b, below
        below += hist[b]
    return hist.shape[0] - 1, below  # unreachable for rank < total


@njit(cache=True, boundscheck=False)
def _median_from_hist(c, hist):  # type: ignore[no-untyped-def]
    """Exact ``np.median`` of the costs ``c`` (flat float32), given their high-key histogram.

    The histogram comes from :func:`_cost_in_place`.

    One more pass histograms the low key bits of the (at most two) high bins
    holding the middle ranks; keys are exact, so a key identifies its value.
    For an even count the result is ``(a + b) / 2`` in float64, as numpy's
    mean of the two middle values.
    """
    total = c.shape[0]
    r1 = (total - 1) // 2
    r2 = total // 2
    b1, below1 = _rank_bin(hist, r1)
    b2, below2 = _rank_bin(hist, r2)
    n_lo = 1 << _LOW_BITS
    lo1 = np.zeros(n_lo, dtype=np.int64)
    lo2 = np.zeros(n_lo, dtype=np.int64)
    mask = n_lo - 1
    for t in range(total):
        key = np.int64(np.float64(c[t]) * _COST_SCALE)
        hi = key >> _LOW_BITS
        if hi == b1:
            lo1[key & mask] += 1
        elif hi == b2:
            lo2[key & mask] += 1
    if b2 == b1:
        lo2 = lo1
    k1, _ = _rank_bin(lo1, r1 - below1)
    k2, _ = _rank_bin(lo2, r2 - below2)
    a = ((b1 << _LOW_BITS) + k1) / _COST_SCALE
    b = ((b2 << _LOW_BITS) + k2) / _COST_SCALE
    if r1 == r2:
        return a
    return (a + b) / 2.0


_ONE = np.int64(1) << 32  # a path-length unit in a score kernel's tag


@njit(cache=True, boundscheck=False)
def _first_row(C):  # type: ignore[no-untyped-def]
    """Row 0 of a score kernel's DP, costs and tags, plus two scratch rows."""
    n, m = C.shape
    prev_c = np.empty(m, dtype=np.float64)
    prev_t = np.empty(m, dtype=np.int64)
    for j in range(m):
        prev_c[j] = C[0, j]
        prev_t[j] = _ONE + j + n
    return prev_c, np.empty(m, dtype=np.float64), prev_t, np.empty(m, dtype=np.int64)


@njit(cache=True, boundscheck=False)
def _cell(diag_c, diag_t, up_c, up_t, left_c, left_t, penalty, cost):  # type: ignore[no-untyped-def]
    """Cost and tag of a cell from its three predecessors; ties prefer diagonal, then vertical."""
    best = diag_c
    tag = diag_t
    up = up_c + penalty
    if up < best:
        best = up
        tag = up_t
    left = left_c + penalty
    if left < best:
        best = left
        tag = left_t
    return best + cost, tag + _ONE


@njit(cache=True, boundscheck=False)
def _end(best, i, j, cost, tag):  # type: ignore[no-untyped-def]
    """``best`` = (ratio, i, j, cost, tag), replaced if cell ``(i, j)`` ends with a smaller ``cost / length``."""
    r = cost / (tag >> 32)
    if r < best[0]:
        return (r, np.int64(i), np.int64(j), cost, tag)
    return best


@njit(cache=True, boundscheck=False)
def _last_row_ends(best, prev_c, prev_t, n, g):  # type: ignore[no-untyped-def]
    """Scan the last row's end cells and unpack the best: ``(end_i, end_j, cost, length, start_i, start_j)``."""
    for j in range(g, prev_c.size):
        best = _end(best, n - 1, j, prev_c[j], prev_t[j])
    s = (best[4] & (_ONE - 1)) - n
    return best[1], best[2], best[3], best[4] >> 32, -s if s < 0 else 0, s if s >= 0 else 0


@njit(cache=True, boundscheck=False)
def _cosine_dtw_score_kernel(C, penalty, g):  # type: ignore[no-untyped-def]
    """Cosine DTW without a step matrix: the start cell rides along the DP.

    Same recurrence, tie rules and end-cell scan as :func:`_cosine_dtw_kernel`.
    Each cell carries ``tag = length * 2**32 + (s + n)`` where the path's
    start cell is ``(0, s)`` for ``s >= 0`` and ``(-s, 0)`` otherwise, so one
    integer select per choice moves both.

    Returns ``(end_i, end_j, cost, length, start_i, start_j)``.
    """
    n, m = C.shape
    prev_c, cur_c, prev_t, cur_t = _first_row(C)
    best = (np.inf, np.int64(-1), np.int64(-1), np.inf, np.int64(0))
    if g == 0:
        best = _end(best, 0, m - 1, prev_c[m - 1], prev_t[m - 1])
    for i in range(1, n):
        lc = np.float64(C[i, 0])
        lt = _ONE + n - i
        cur_c[0] = lc
        cur_t[0] = lt
        for j in range(1, m):
            lc, lt = _cell(prev_c[j - 1], prev_t[j - 1], prev_c[j], prev_t[j], lc, lt, penalty, C[i, j])
            cur_c[j] = lc
            cur_t[j] = lt
        if i >= g:
            best = _end(best, i, m - 1, lc, lt)
        prev_c, cur_c = cur_c, prev_c
        prev_t, cur_t = cur_t, prev_t
    return _last_row_ends(best, prev_c, prev_t, n, g)


@njit(cache=True, boundscheck=False)
def _cosine_dtw_score_pair(C, D, pc, pd, g):  # type: ignore[no-untyped-def]
    """:func:`_cosine_dtw_score_kernel` of two same-shape cost matrices in one pass.

    The two recurrences are independent; interleaving them cell by cell lets
    the CPU overlap their dependency chains (about 1.6x faster than two calls).
    Returns the two kernels' results, in order.
    """
    n, m = C.shape
    pc_c, cc_c, pc_t, cc_t = _first_row(C)
    pd_c, cd_c, pd_t, cd_t = _first_row(D)
    bc = (np.inf, np.int64(-1), np.int64(-1), np.inf, np.int64(0))
    bd = bc
    if g == 0:
        bc = _end(bc, 0, m - 1, pc_c[m - 1], pc_t[m - 1])
        bd = _end(bd, 0, m - 1, pd_c[m - 1], pd_t[m - 1])
    for i in range(1, n):
        lc, ld = np.float64(C[i, 0]), np.float64(D[i, 0])
        lt = _ONE + n - i
        lu = lt
        cc_c[0], cc_t[0], cd_c[0], cd_t[0] = lc, lt, ld, lu
        for j in range(1, m):
            lc, lt = _cell(pc_c[j - 1], pc_t[j - 1], pc_c[j], pc_t[j], lc, lt, pc, C[i, j])
            ld, lu = _cell(pd_c[j - 1], pd_t[j - 1], pd_c[j], pd_t[j], ld, lu, pd, D[i, j])
            cc_c[j], cc_t[j], cd_c[j], cd_t[j] = lc, lt, ld, lu
        if i >= g:
            bc = _end(bc, i, m - 1, lc, lt)
            bd = _end(bd, i, m - 1, ld, lu)
        pc_c, cc_c, pc_t, cc_t = cc_c, pc_c, cc_t, pc_t
        pd_c, cd_c, pd_t, cd_t = cd_c, pd_c, cd_t, pd_t
    return _last_row_ends(bc, pc_c, pc_t, n, g), _last_row_ends(bd, pd_c, pd_t, n, g)


@njit(cache=True, boundscheck=False, fastmath={"reassoc"})
def _box_sum(C, i0, i1, j0, j1):  # type: ignore[no-untyped-def]
    """Sum of ``C[i0:i1+1, j0:j1+1]`` in float64.

    Reassociation is allowed: the costs are multiples of ``2**-24`` below 2
    (see :func:`_cost_in_place`), so every partial sum of fewer than ``2**28``
    of them is exact and the order does not change the result.
    """
    total = 0.0
    for i in range(i0, i1 + 1):
        row = 0.0
        for j in range(j0, j1 + 1):
            row += np.float64(C[i, j])
        total += row
    return total


@njit(cache=True, boundscheck=False)
def _bit_counts(words, offsets, out):  # type: ignore[no-untyped-def]
    """``out[i, k]`` += number of words of sequence ``i`` with bit ``k`` set (``out`` is (n, 32) int64)."""
    for i in range(offsets.size - 1):
        for t in range(offsets[i], offsets[i + 1]):
            w = np.int64(words[t])
            for k in range(32):
                out[i, k] += (w >> k) & 1
