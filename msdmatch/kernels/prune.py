"""PSE prune: exact Euclidean top-K over a shard of database embeddings.

Conventions
-----------
* Queries are ``(q, d)`` and database embeddings ``(n, d)`` arrays, float32 or
  float16 (``d = 128`` for PSE).  A float16 database halves the memory and the
  bandwidth per entry (256 MB instead of 512 MB per million 128-D entries);
  distances are then exact for the float16 values as stored.
* The distance is the squared Euclidean distance, computed exactly in float64
  from the stored values and returned rounded to float32.
* Order: ascending float32 distance, ties broken by the lower database index.
  Because the key ``(float32 distance, index)`` is a total order, merging the
  top-K of shards (:func:`merge_topk`) gives exactly the unsharded result.
* Indices are int64 and local to ``db`` unless an offset is given to
  :func:`merge_topk`.  When ``k > n`` the result has ``n`` columns.

Method
------
The database is scanned in blocks.  For each block, one BLAS product gives the
surrogate key ``‖d‖² − 2 q·d`` (‖q‖² is constant per query) and a compiled
kernel compares each query's row against a running threshold with one
vectorised pass.  An entry below it is scored exactly at once, while its row
of the block is still in cache, and buffered as one packed ``uint64`` key
``(float32 distance bits << 32) | index``; for non-negative floats the
integer order of these keys is exactly the (distance, index) order.  When a
query's buffer fills, it is cut to its ``cap`` smallest keys; every discarded
entry then orders after the final K-th, and the surrogate threshold drops so
that it rejects only entries that would be discarded as well (the surrogate's
rigorous float32 error bound is added).  The starting threshold is a quantile
estimated from a strided sample of the shard; a query whose sampled threshold
let fewer than K entries through, or could have rejected an entry that ties
with the K-th, is rescanned without it, which is always exact.  A float16
database is widened block by block to float32 (exactly) for the product, and
the exact distances are taken from that widened block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numba import njit

from msdmatch.errors import ParameterError

__all__ = ["topk_sq_euclidean", "merge_topk", "default_k", "query_windows", "topk_multi"]

#: Unit roundoff of float32.
_U32 = 2.0**-24


def default_k(n_db: int) -> int:
    """Default number of PSE survivors: ``min(n_db, max(ceil(0.01 n_db), 1000))``.

    Parameters
    ----------
    n_db : int >= 0
        Number of database entries.

    Returns
    -------
    k : int
    """
    n = int(n_db)
    if n < 0:
        raise ParameterError(f"n_db must be >= 0, got {n_db!r}")
    return min(n, max(math.ceil(0.01 * n), 1000))


# ----------------------------------------------------------------------------- kernels


@njit(cache=True, boundscheck=False)
def _compact(keys, fill, cap):  # pragma: no cover - compiled
    """Keep the ``cap`` smallest (unique) keys, in their order; return the largest kept."""
    kth = np.partition(keys[:fill].copy(), cap - 1)[cap - 1]
    m = 0
    for c in range(fill):
        if keys[c] <= kth:
            keys[m] = keys[c]
            m += 1
    return kth


@njit(cache=True, boundscheck=False)
def _smallest_sorted(keys, fill, k):  # pragma: no cover - compiled
    """The ``k`` smallest keys of each row, ascending; short rows are padded with all ones.

    Each row's keys are unique and in index order, so a stable LSD radix sort
    of the whole row on the distance bits alone (three 11-bit digits, constant
    digits skipped) sorts it by (distance, index); the first ``k`` are kept.
    """
    nq = keys.shape[0]
    out = np.full((nq, k), np.iinfo(np.uint64).max, np.uint64)
    a = np.empty(keys.shape[1], np.uint64)
    tmp = np.empty(keys.shape[1], np.uint64)
    cnt = np.empty(2048, np.int64)
    for i in range(nq):
        m = fill[i]
        a[:m] = keys[i, :m]
        src, dst = a, tmp
        for shift in (32, 43, 54):
            cnt[:] = 0
            for c in range(m):
                cnt[(src[c] >> np.uint64(shift)) & np.uint64(2047)] += 1
            if m == 0 or cnt[(src[0] >> np.uint64(shift)) & np.uint64(2047)] == m:
                continue
            tot = 0
            for d in range(2048):
                c0 = cnt[d]
                cnt[d] = tot
                tot += c0
            for c in range(m):
                d = (src[c] >> np.uint64(shift)) & np.uint64(2047)
                dst[cnt[d]] = src[c]
                cnt[d] += 1
            src, dst = dst, src
        n_out = min(m, k)
        out[i, :n_out] = src[:n_out]
    return out


@njit(cache=True, boundscheck=False, fastmath=True)
def _below(row, nrm, t, mask):  # pragma: no cover - compiled
    """``mask[j] = ‖d_j‖² − 2 q·d_j < t`` over one block row (vectorised)."""
    for j in range(row.shape[0]):
        mask[j] = (nrm[j] + row[j]) < t


@njit(cache=True, boundscheck=False, fastmath=True)
def _sq_dist(q, row):  # pragma: no cover - compiled
    """Float64 squared distance between a float64 query and a float32 row."""
    s = 0.0
    for t in range(q.shape[0]):
        diff = q[t] - np.float64(row[t])
        s += diff * diff
    return s


@njit(cache=True, boundscheck=False)
def _key_threshold(v, q_n2, delta):  # pragma: no cover - compiled
    """Float32 surrogate threshold whose rejections all have distance >= ``v``."""
    t = np.float64(v) - q_n2 + delta
    t += abs(t) * 2.0**-22 + 1e-30
    return np.float32(t)


@njit(cache=True, boundscheck=False)
def _scan_block(g, nrm, blk, base, q64, keys, fill, thr, kmax, q_n2, delta, cap):  # pragma: no cover
    """Score and buffer the entries of one block whose key is below each query's threshold.

    ``g[i, j] = -2 q_i·d_j``, ``nrm[j] = ‖d_j‖²`` and ``blk`` holds the block's
    float32 rows, whose first index is ``base``.  ``kmax[i]`` is the largest
    key kept by the last compaction: a new entry with a larger key would be
    discarded by the next one, so it is skipped.
    """
    nq, b = g.shape
    size = keys.shape[1]
    nw = (b + 7) // 8
    mask = np.zeros(8 * nw, np.uint8)
    words = mask.view(np.uint64)
    e32 = np.empty(1, np.float32)
    e_bits = e32.view(np.uint32)
    for i in range(nq):
        row = g[i]
        buf = keys[i]
        q = q64[i]
        f = fill[i]
        t = thr[i]
        km = kmax[i]
        _below(row, nrm, t, mask)
        for w in range(nw):
            if words[w] == 0:
                continue
            for jj in range(8 * w, min(8 * w + 8, b)):
                if mask[jj] == 0:
                    continue
                e32[0] = _sq_dist(q, blk[jj])
                key = (np.uint64(e_bits[0]) << np.uint64(32)) | np.uint64(base + jj)
                if key > km:
                    continue
                buf[f] = key
                f += 1
                if f == size:
                    km = _compact(buf, f, cap)
                    f = cap
                    e_bits[0] = np.uint32(km >> np.uint64(32))
                    t = min(t, _key_threshold(e32[0], q_n2[i], delta[i]))
        fill[i] = f
        thr[i] = t
        kmax[i] = km


@njit(cache=True, boundscheck=False)
def _before(da, ia, db, ib):  # pragma: no cover - compiled
    """Whether ``(da, ia)`` orders before ``(db, ib)``: by distance (NaN last), then index."""
    if da < db:
        return True
    if da > db:
        return False
    if da == db or (da != da and db != db):
        return ia < ib
    return db != db


@njit(cache=True, boundscheck=False)
def _merge_sorted(da, xa, db, xb, k):  # pragma: no cover - compiled
    """Row-wise merge of two ``(q, k_a)`` and ``(q, k_b)`` sorted results, cut to ``k`` columns."""
    nq = da.shape[0]
    na, nb = da.shape[1], db.shape[1]
    dist = np.empty((nq, k), np.float32)
    idx = np.empty((nq, k), np.int64)
    for r in range(nq):
        a = b = 0
        for c in range(k):
            if b >= nb or (a < na and _before(da[r, a], xa[r, a], db[r, b], xb[r, b])):
                dist[r, c], idx[r, c] = da[r, a], xa[r, a]
                a += 1
            else:
                dist[r, c], idx[r, c] = db[r, b], xb[r, b]
                b += 1
    return dist, idx


# ----------------------------------------------------------------------------- helpers


def _is_sorted(d: np.ndarray, x: np.ndarray) -> bool:
    """Whether every row is ordered by (distance, NaN last; index)."""
    if d.shape[1] < 2:
        return True
    a, b = d[:, :-1], d[:, 1:]
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    ok = (a < b) | ((a == b) | (nan_a & nan_b)) & (x[:, :-1] < x[:, 1:]) | (~nan_a & nan_b)
    return bool(ok.all())


def _check_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ParameterError(f"{name} must be 2-D (entries, dims), got shape {x.shape}")
    if x.dtype not in (np.float32, np.float16):
        hint = "; cast with .astype(np.float32)" if x.dtype.kind in "fiu" else ""
        raise ParameterError(f"{name} must be float32 or float16, got {x.dtype}{hint}")
    if x.size and not np.isfinite(x).all():
        raise ParameterError(f"{name} contains NaN or infinite values; embeddings must be finite")
    return np.ascontiguousarray(x)


def _sample_threshold(qm2, db, nrm, n_keep):
    """Per-query starting threshold from a strided sample of the keys.

    Chosen so that about ``n_keep`` entries of the whole shard fall below it;
    the caller checks afterwards that at least ``k`` did.
    """
    n = db.shape[0]
    n_s = min(n // 8, math.ceil(300 * n / n_keep))
    stride = n // n_s
    rows = db[::stride][:n_s].astype(np.float32)
    keys = qm2 @ rows.T + nrm[::stride][:n_s]
    r = min(n_s - 1, int(n_keep * n_s / n))
    return np.partition(keys, r, axis=1)[:, r].astype(np.float32)


def _scan(queries, db, nrm, *, q_n2, delta, thr, cap, block):
    """Blocked scan; returns each query's buffered packed keys and their count."""
    nq = queries.shape[0]
    n = db.shape[0]
    size = min(2 * cap, n)
    keys = np.empty((nq, size), dtype=np.uint64)
    fill = np.zeros(nq, dtype=np.int64)
    kmax = np.full(nq, np.iinfo(np.uint64).max, dtype=np.uint64)
    thr = thr.copy()
    q64 = queries.astype(np.float64)
    qm2 = (-2.0 * queries).astype(np.float32)
    g = np.empty((nq, block), dtype=np.float32)
    for s in range(0, n, block):
        e = min(s + block, n)
        blk = db[s:e]
        if blk.dtype != np.float32:
            blk = blk.astype(np.float32)
        gb = g[:, : e - s]
        np.matmul(qm2, blk.T, out=gb)
        _scan_block(gb, nrm[s:e], blk, s, q64, keys, fill, thr, kmax, q_n2, delta, cap)
    return keys, fill


def _decode(keys: np.ndarray, fill: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` smallest packed keys of each row, sorted, as (distance, index).

    A row with fewer than ``k`` keys is padded with NaN distances.
    """
    out = _smallest_sorted(keys, fill, k)
    dist = (out >> np.uint64(32)).astype(np.uint32).view(np.float32)
    idx = (out & np.uint64(0xFFFFFFFF)).astype(np.int64)
    return dist, idx


def topk_sq_euclidean(
    queries: np.ndarray,
    db: np.ndarray,
    *,
    k: int,
    block: int | None = None,
    db_sq_norms: np.ndarray | None = None,
    slack: float = 0.125,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-K nearest database entries by squared Euclidean distance.

    Parameters
    ----------
    queries : np.ndarray [shape=(q, d), dtype=float32 or float16]
        Query embeddings.
    db : np.ndarray [shape=(n, d), dtype=float32 or float16]
        One shard of database embeddings; ``n < 2**32``.
    k : int > 0
        Number of neighbours per query; clipped to ``n``.
    block : int > 0 or None
        Database rows per BLAS product.  The default keeps the ``(q, block)``
        product (about 512 kB) in the core's cache for the scan.
    db_sq_norms : np.ndarray [shape=(n,), dtype=float32] or None
        Precomputed ``‖d‖²`` of the float32 values of ``db`` (saves one pass
        when the same shard is searched many times).
    slack : float >= 0
        Extra buffer capacity kept at each compaction, as a fraction of ``k``
        (at least 16 entries); the sampled starting threshold aims to let
        about ``1.25 (k + slack k)`` entries through.

    Returns
    -------
    dist : np.ndarray [shape=(q, min(k, n)), dtype=float32]
        Squared distances, ascending along each row.
    idx : np.ndarray [shape=(q, min(k, n)), dtype=int64]
        Row indices into ``db``; equal distances are ordered by index.

    Raises
    ------
    ParameterError
        If the shapes or dtypes do not fit or ``k``/``block`` is not positive.
    """
    queries = _check_matrix(queries, "queries")
    db = _check_matrix(db, "db")
    if queries.shape[1] != db.shape[1]:
        raise ParameterError(
            f"queries have {queries.shape[1]} dims but db has {db.shape[1]}; "
            "were they embedded with different models?"
        )
    if int(k) != k or k < 1:
        raise ParameterError(f"k must be a positive integer, got {k!r}")
    if block is not None and (int(block) != block or block < 1):
        raise ParameterError(f"block must be a positive integer, got {block!r}")
    if not slack >= 0:
        raise ParameterError(f"slack must be >= 0, got {slack!r}")
    nq, dim = queries.shape
    n = db.shape[0]
    if n >= 2**32:
        raise ParameterError(f"db has {n} entries; split it into shards of fewer than 2**32")
    k = min(int(k), n)
    if nq == 0 or n == 0:
        return np.zeros((nq, k), np.float32), np.zeros((nq, k), np.int64)
    if db_sq_norms is None:
        nrm = np.einsum("ij,ij->i", db, db, dtype=np.float32)
    else:
        nrm = np.ascontiguousarray(db_sq_norms, dtype=np.float32)
        if nrm.shape != (n,):
            raise ParameterError(f"db_sq_norms must have shape ({n},), got {nrm.shape}")

    # Rigorous bound on |surrogate − exact| (dot, norm and one float32 add).
    gam = (dim + 2) * _U32 / (1 - (dim + 2) * _U32)
    max_n2 = float(np.max(nrm)) * (1 + gam)
    qs = queries.astype(np.float32)
    q64 = qs.astype(np.float64)
    q_n2 = np.einsum("ij,ij->i", q64, q64)
    delta = 2.0 * gam * (max_n2 + 2.0 * np.sqrt(q_n2 * max_n2)) + 4.0 * _U32 * max_n2

    cap = min(n, k + max(16, math.ceil(slack * k)))
    if block is None:
        # Keep the (q, block) product within ~512 kB so the scan reads it from cache.
        block = max(256, min(32768, (512 << 10) // (4 * nq)))
    block = min(int(block), n)
    thr = np.full(nq, np.inf, dtype=np.float32)
    if n >= 8 * cap:
        thr = _sample_threshold(-2.0 * qs, db, nrm, math.ceil(1.25 * cap))
    keys, fill = _scan(qs, db, nrm, q_n2=q_n2, delta=delta, thr=thr, cap=cap, block=block)
    dist, idx = _decode(keys, fill, k)
    # An entry rejected by the sampled threshold has a distance of at least
    # ``low``; the result is exact unless such an entry could tie or beat the
    # K-th, or fewer than K entries got through (a NaN K-th distance).
    low = np.full(nq, np.inf, np.float32)
    fin = np.isfinite(thr)
    lo = thr[fin].astype(np.float64) - delta[fin] + q_n2[fin]
    low[fin] = lo - np.abs(lo) * 2.0**-22 - 1e-30
    redo = np.flatnonzero(~(dist[:, -1] < low))
    if redo.size:
        keys, fill = _scan(qs[redo], db, nrm, q_n2=q_n2[redo], delta=delta[redo],
                           thr=np.full(redo.size, np.inf, np.float32), cap=cap, block=block)
        dist[redo], idx[redo] = _decode(keys, fill, k)
    return dist, idx


def merge_topk(
    parts: Sequence[tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, int]],
    *,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard top-K results into one top-K.

    Parameters
    ----------
    parts : sequence of ``(dist, idx)`` or ``(dist, idx, offset)``
        ``dist`` [shape=(q, k_s), float32] and ``idx`` [shape=(q, k_s), int64]
        as returned by :func:`topk_sq_euclidean` for one shard; ``offset``
        (default 0) is added to ``idx`` to make it global.  Results of earlier
        merges (already global) can be passed again, so merges form a tree.
    k : int > 0
        Number of neighbours to keep; clipped to the total available.

    Returns
    -------
    dist : np.ndarray [shape=(q, min(k, sum k_s)), dtype=float32]
    idx : np.ndarray [shape=(q, min(k, sum k_s)), dtype=int64]
        Global indices, ordered by (distance, index).

    Notes
    -----
    Parts whose rows are already ordered (as :func:`topk_sq_euclidean` and
    this function return them) are merged pairwise in ``O(k)`` per row;
    any other input is sorted in full.
    """
    if int(k) != k or k < 1:
        raise ParameterError(f"k must be a positive integer, got {k!r}")
    if len(parts) == 0:
        raise ParameterError("parts is empty; pass at least one (dist, idx[, offset]) shard result")
    ds, xs = [], []
    nq = None
    for p, part in enumerate(parts):
        if len(part) not in (2, 3):
            raise ParameterError(
                f"parts[{p}] has {len(part)} items; expected (dist, idx) or (dist, idx, offset)"
            )
        d = np.asarray(part[0], dtype=np.float32)
        x = np.asarray(part[1])
        off = int(part[2]) if len(part) == 3 else 0
        if d.ndim != 2 or d.shape != x.shape:
            raise ParameterError(
                f"parts[{p}]: dist {d.shape} and idx {x.shape} must be equal 2-D shapes (q, k)"
            )
        if x.dtype.kind not in "iu":
            raise ParameterError(f"parts[{p}]: idx must be integer, got {x.dtype}")
        if nq is None:
            nq = d.shape[0]
        elif d.shape[0] != nq:
            raise ParameterError(
                f"parts[{p}] has {d.shape[0]} queries but parts[0] has {nq}; "
                "all shards must be searched with the same query batch"
            )
        ds.append(d)
        xs.append(x.astype(np.int64) + off)
    k = min(int(k), sum(d.shape[1] for d in ds))
    if all(_is_sorted(d, x) for d, x in zip(ds, xs)):  # as shards return them: merge in O(k)
        dist, idx = ds[0][:, :k], xs[0][:, :k]
        for d, x in zip(ds[1:], xs[1:]):
            dist, idx = _merge_sorted(dist, idx, d, x, min(k, dist.shape[1] + d.shape[1]))
        return np.ascontiguousarray(dist), np.ascontiguousarray(idx)
    dist = np.concatenate(ds, axis=1)
    idx = np.concatenate(xs, axis=1)
    order = np.lexsort((idx, dist), axis=-1)[:, :k]
    return np.take_along_axis(dist, order, 1), np.take_along_axis(idx, order, 1)


# ----------------------------------------------------------------------------- several vectors per query


def query_windows(n_frames: int, *, length: int, hop: int) -> np.ndarray:
    """Start frames of the windows a query is cut into (windowed PSE embeddings).

    Parameters
    ----------
    n_frames : int >= 0
        Frames of the query.
    length, hop : int > 0
        Window length and hop in frames.

    Returns
    -------
    starts : np.ndarray [shape=(w,), dtype=int64]
        ``0, hop, 2 hop, ...`` while a window fits, plus a last window flush with
        the end; ``[0]`` (one window, the whole query) if it is not longer than
        ``length``.
    """
    if int(length) != length or length < 1 or int(hop) != hop or hop < 1:
        raise ParameterError(f"length and hop must be positive integers, got {length!r}, {hop!r}")
    n = int(n_frames)
    if n <= length:
        return np.zeros(1, np.int64)
    starts = np.arange(0, n - length + 1, hop, dtype=np.int64)
    if starts[-1] != n - length:
        starts = np.append(starts, np.int64(n - length))
    return starts


def topk_multi(
    windows: np.ndarray,
    offsets: np.ndarray,
    db: np.ndarray,
    *,
    k: int,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-K by the minimum distance over each query's vectors.

    Query ``i`` has the vectors ``windows[offsets[i]:offsets[i + 1]]``; an
    entry's distance to it is the smallest squared Euclidean distance to any
    of them.  The top-K of that minimum is contained in the union of the
    vectors' own top-K (an entry in it ranks within K for the vector that
    achieves its minimum), so one :func:`topk_sq_euclidean` over all vectors
    and a per-query merge give the exact result; the cost is that of a search
    for ``len(windows)`` queries.

    Parameters
    ----------
    windows : np.ndarray [shape=(m, d), dtype=float32 or float16]
    offsets : np.ndarray [shape=(q + 1,), dtype=int]
        Non-decreasing, ``offsets[0] == 0``, ``offsets[-1] == m``; a query
        without vectors gets no neighbours (NaN distances, index -1).
    db : np.ndarray [shape=(n, d)]
    k : int > 0
    **kwargs
        Passed to :func:`topk_sq_euclidean` (``block``, ``db_sq_norms``, ``slack``).

    Returns
    -------
    dist : np.ndarray [shape=(q, min(k, n)), dtype=float32]
        Minimum squared distances, ascending; ties ordered by index.
    idx : np.ndarray [shape=(q, min(k, n)), dtype=int64]
    """
    off = np.asarray(offsets)
    windows = _check_matrix(windows, "windows")
    if (off.ndim != 1 or off.size < 1 or off.dtype.kind not in "iu" or off[0] != 0
            or off[-1] != windows.shape[0] or np.any(np.diff(off) < 0)):
        raise ParameterError(
            f"offsets must be non-decreasing integers from 0 to {windows.shape[0]} (len(windows)), "
            f"got {off!r}"
        )
    d, x = topk_sq_euclidean(windows, db, k=k, **kwargs)
    nq, kk = off.size - 1, d.shape[1]
    dist = np.full((nq, kk), np.nan, np.float32)
    idx = np.full((nq, kk), -1, np.int64)
    for i in range(nq):
        a, b = int(off[i]), int(off[i + 1])
        if a == b:
            continue
        di, xi = d[a:b].ravel(), x[a:b].ravel()
        o = np.lexsort((di, xi))  # by index, then distance: each index's minimum first
        xi, di = xi[o], di[o]
        first = np.ones(xi.size, bool)
        first[1:] = xi[1:] != xi[:-1]
        xi, di = xi[first], di[first]
        o = np.lexsort((xi, di))[:kk]
        dist[i, : o.size], idx[i, : o.size] = di[o], xi[o]
    return dist, idx
