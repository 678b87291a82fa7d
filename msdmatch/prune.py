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
vectorised pass; only entries below it are appended to a per-query buffer.
The threshold starts at a quantile estimated from a strided sample of the
shard, and drops whenever the buffer fills and is cut to its best ``cap``
keys.  Buffered candidates near the boundary are then re-scored exactly, and
a rigorous float32 rounding bound certifies that no rejected entry could
belong to the exact top-K; a query that cannot be certified (near-ties at the
boundary, e.g. duplicate rows, or a sampled threshold that let fewer than K
through) is rescanned with a larger buffer, down to an exhaustive exact scan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numba import njit

from msdmatch.errors import ParameterError

__all__ = ["topk_sq_euclidean", "merge_topk", "default_k"]

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
def _compact(vals, ids, fill, cap):  # pragma: no cover - compiled
    """Keep the ``cap`` smallest buffered keys; return (new fill, new threshold)."""
    t = np.partition(vals[:fill].copy(), cap - 1)[cap - 1]
    m = 0
    for c in range(fill):
        if vals[c] < t:
            vals[m] = vals[c]
            ids[m] = ids[c]
            m += 1
    for c in range(fill):
        if m == cap:
            break
        if vals[c] == t:
            vals[m] = vals[c]
            ids[m] = ids[c]
            m += 1
    return m, t


@njit(cache=True, boundscheck=False)
def _scan_block(g, nrm, base, bv, bi, fill, thr, cap):  # pragma: no cover - compiled
    """Buffer the entries of one block whose key is below each query's threshold.

    ``g[i, j] = -2 q_i·d_j`` and ``nrm[j] = ‖d_j‖²``, so the key is
    ``‖d‖² − 2 q·d``; ``base`` is the index of the block's first row.  When a
    query's buffer fills, it is cut to its ``cap`` smallest keys and the
    threshold drops to the largest kept key; every discarded or rejected entry
    has a key >= the final threshold.
    """
    nq, b = g.shape
    size = bv.shape[1]
    nw = (b + 7) // 8
    mask = np.zeros(8 * nw, np.uint8)
    words = mask.view(np.uint64)
    for i in range(nq):
        row = g[i]
        vals = bv[i]
        ids = bi[i]
        f = fill[i]
        t = thr[i]
        _below(row, nrm, t, mask)
        for w in range(nw):
            if words[w] == 0:
                continue
            for jj in range(8 * w, min(8 * w + 8, b)):
                v = nrm[jj] + row[jj]
                if v < t:
                    vals[f] = v
                    ids[f] = base + jj
                    f += 1
                    if f == size:
                        f, t = _compact(vals, ids, f, cap)
        fill[i] = f
        thr[i] = t


@njit(cache=True, boundscheck=False, fastmath=True)
def _below(row, nrm, t, mask):  # pragma: no cover - compiled
    """``mask[j] = ‖d_j‖² − 2 q·d_j < t`` over one block row (vectorised)."""
    for j in range(row.shape[0]):
        mask[j] = (nrm[j] + row[j]) < t


@njit(cache=True, boundscheck=False)
def _half(h):  # pragma: no cover - compiled
    """Value of an IEEE binary16 number given its bits (finite values only)."""
    e = (h >> 10) & 0x1F
    m = np.float64(h & 0x3FF)
    v = m * 2.0**-24 if e == 0 else (1.0 + m / 1024.0) * 2.0 ** (np.int64(e) - 15)
    return -v if h & 0x8000 else v


@njit(cache=True, boundscheck=False, fastmath=True)
def _sq_dist(q, db32, bits, half, r):  # pragma: no cover - compiled
    """Float64 squared distance from ``q`` to row ``r`` (one fixed summation order)."""
    d = q.shape[0]
    s = 0.0
    if half:
        for t in range(d):
            diff = np.float64(q[t]) - _half(bits[r, t])
            s += diff * diff
    else:
        for t in range(d):
            diff = np.float64(q[t]) - np.float64(db32[r, t])
            s += diff * diff
    return s


@njit(cache=True, boundscheck=False)
def _refine(queries, db32, bits, half, bv, bi, fill, thr, delta, q_n2, k):  # pragma: no cover
    """Exact top-``k`` of each query's buffered candidates, with a certificate.

    A candidate is re-scored exactly when its key is within a margin ``m`` of
    the ``k``-th smallest key ``s_k``: ``m`` covers twice the key error bound
    ``delta`` plus two float32 ulps of the distance.  The result is certified
    when every rejected entry (key >= ``thr``) is also beyond that margin.
    """
    nq = bv.shape[0]
    dist = np.empty((nq, k), np.float32)
    idx = np.empty((nq, k), np.int64)
    ok = np.zeros(nq, np.bool_)
    for i in range(nq):
        f = fill[i]
        vals = bv[i, :f].astype(np.float64)
        s_k = np.partition(vals.copy(), k - 1)[k - 1]
        top = abs(q_n2[i]) + abs(s_k) + delta[i]
        m = 2.0 * delta[i] + 2.0 * np.float64(np.spacing(np.float32(top)))
        ok[i] = thr[i] == np.inf or thr[i] > s_k + m
        sel = np.sort(bi[i, :f][vals <= s_k + m])
        e32 = np.empty(sel.shape[0], np.float32)
        for c in range(sel.shape[0]):
            e32[c] = np.float32(_sq_dist(queries[i], db32, bits, half, sel[c]))
        order = np.argsort(e32, kind="mergesort")[:k]
        for c in range(k):
            dist[i, c] = e32[order[c]]
            idx[i, c] = sel[order[c]]
    return dist, idx, ok


# ----------------------------------------------------------------------------- helpers


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


def _sample_threshold(qm2, db, nrm, cap):
    """Per-query starting threshold from a strided sample of the keys.

    Chosen so that about ``1.5 cap`` entries of the whole shard fall below it;
    the scan checks afterwards that at least ``k`` did.
    """
    n = db.shape[0]
    n_s = min(n // 8, math.ceil(300 * n / cap))
    stride = n // n_s
    rows = db[::stride][:n_s].astype(np.float32)
    keys = qm2 @ rows.T + nrm[::stride][:n_s]
    r = min(n_s - 1, int(1.5 * cap * n_s / n))
    return np.partition(keys, r, axis=1)[:, r].astype(np.float32)


def _scan(queries, db, nrm, *, cap, block, sample=True):
    """Threshold scan; returns buffered (keys, ids), fill counts and final thresholds."""
    nq = queries.shape[0]
    n = db.shape[0]
    size = 2 * cap
    bv = np.empty((nq, size), dtype=np.float32)
    bi = np.empty((nq, size), dtype=np.int64)
    fill = np.zeros(nq, dtype=np.int64)
    qm2 = (-2.0 * queries.astype(np.float32)).astype(np.float32)
    if sample and n >= 64 * cap:
        thr = _sample_threshold(qm2, db, nrm, cap)
    else:
        thr = np.full(nq, np.inf, dtype=np.float32)
    g = np.empty((nq, block), dtype=np.float32)
    for s in range(0, n, block):
        e = min(s + block, n)
        blk = db[s:e]
        if blk.dtype != np.float32:
            blk = blk.astype(np.float32)
        gb = g[:, : e - s]
        np.matmul(qm2, blk.T, out=gb)
        _scan_block(gb, nrm[s:e], s, bv, bi, fill, thr, cap)
    return bv, bi, fill, thr


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
        One shard of database embeddings.
    k : int > 0
        Number of neighbours per query; clipped to ``n``.
    block : int > 0 or None
        Database rows per BLAS product.  The default sizes blocks so that the
        ``(q, block)`` product (about 2 MB) stays in cache for the scan.
    db_sq_norms : np.ndarray [shape=(n,), dtype=float32] or None
        Precomputed ``‖d‖²`` of the float32 values of ``db`` (saves one pass
        when the same shard is searched many times).
    slack : float >= 0
        Extra heap capacity, as a fraction of ``k`` (at least 16 entries), that
        absorbs float32 rounding at the boundary so results can be certified.

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
    q64 = queries.astype(np.float64)
    q_n2 = np.einsum("ij,ij->i", q64, q64)
    delta = 2.0 * gam * (max_n2 + 2.0 * np.sqrt(q_n2 * max_n2)) + 4.0 * _U32 * max_n2

    half = db.dtype == np.float16
    db32 = db if not half else np.empty((0, dim), np.float32)
    bits = db.view(np.uint16) if half else np.empty((0, dim), np.uint16)
    qs = queries.astype(np.float32)
    dist = np.empty((nq, k), np.float32)
    idx = np.empty((nq, k), np.int64)
    todo = np.arange(nq)
    cap = k + max(16, math.ceil(slack * k))
    if block is None:
        # Keep the (q, block) product within ~2 MB so the scan reads it from cache.
        block = max(1024, min(32768, (2 << 20) // (4 * nq)))
    block = min(int(block), n)
    first = True
    while todo.size:
        sub = qs[todo]
        if cap >= n:
            # Exhaustive: every entry is a candidate and nothing is rejected.
            bi = np.broadcast_to(np.arange(n, dtype=np.int64), (todo.size, n)).copy()
            bv = np.zeros((todo.size, n), np.float32)
            fill = np.full(todo.size, n, np.int64)
            thr = np.full(todo.size, np.inf, np.float32)
            dl = np.zeros(todo.size)
        else:
            bv, bi, fill, thr = _scan(sub, db, nrm, cap=cap, block=block, sample=first)
            dl = delta[todo]
        enough = fill >= k
        if not enough.all():
            # The sampled starting threshold was too low for some queries: rescan
            # those without it.
            fill = np.where(enough, fill, k)
        d_k, i_k, ok = _refine(sub, db32, bits, half, bv, bi, fill,
                               thr.astype(np.float64), dl, q_n2[todo], k)
        ok &= enough
        if cap >= n:
            ok[:] = True
        dist[todo[ok]], idx[todo[ok]] = d_k[ok], i_k[ok]
        todo = todo[~ok]
        # A query that failed only because the sampled starting threshold let
        # fewer than k entries through is rescanned without a sample; one that
        # failed certification gets a larger buffer.
        if not first or enough[~ok].any():
            cap = min(n, 4 * cap)
        first = False
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
    dist = np.concatenate(ds, axis=1)
    idx = np.concatenate(xs, axis=1)
    k = min(int(k), dist.shape[1])
    order = np.lexsort((idx, dist), axis=-1)[:, :k]
    return np.take_along_axis(dist, order, 1), np.take_along_axis(idx, order, 1)
