"""Exact top-K prune against brute force; shard merges equal the unsharded result."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msdmatch.errors import ParameterError
from msdmatch.kernels.prune import default_k, merge_topk, topk_sq_euclidean


def brute(q: np.ndarray, db: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    ex = ((q[:, None, :].astype(np.float64) - db[None].astype(np.float64)) ** 2).sum(-1)
    d32 = ex.astype(np.float32)
    idx = np.broadcast_to(np.arange(db.shape[0]), d32.shape)
    order = np.lexsort((idx, d32), axis=-1)[:, :k]
    return np.take_along_axis(d32, order, 1), order


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), nq=st.integers(1, 5), k=st.integers(1, 320),
       dim=st.sampled_from([1, 3, 128]), seed=st.integers(0, 2**16), dup=st.booleans())
def test_matches_brute_force(n, nq, k, dim, seed, dup):
    r = np.random.default_rng(seed)
    db = r.standard_normal((n, dim)).astype(np.float32)
    if dup:  # exact ties: repeated rows must come out in index order
        db = db[r.integers(0, max(1, n // 3), n)]
    q = r.standard_normal((nq, dim)).astype(np.float32)
    d, i = topk_sq_euclidean(q, db, k=k, block=7)
    bd, bi = brute(q, db, min(k, n))
    assert d.dtype == np.float32 and i.dtype == np.int64
    assert d.shape == (nq, min(k, n))
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_array_equal(d, bd)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_large_scan_path(rng, dtype):
    # n >> k exercises the sampled threshold, buffer compaction and certification.
    centres = rng.standard_normal((8, 128))
    db = np.tanh(centres[rng.integers(0, 8, 40000)] + rng.standard_normal((40000, 128))).astype(dtype)
    q = np.tanh(centres[rng.integers(0, 8, 6)] + rng.standard_normal((6, 128))).astype(np.float32)
    d, i = topk_sq_euclidean(q, db, k=300)
    bd, bi = brute(q, db, 300)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_array_equal(d, bd)


def test_integer_ties_lower_index_wins():
    db = np.array([[1, 0], [0, 1], [-1, 0], [0, -1], [2, 0]], np.float32)
    d, i = topk_sq_euclidean(np.zeros((1, 2), np.float32), db, k=4)
    np.testing.assert_array_equal(i, [[0, 1, 2, 3]])
    np.testing.assert_array_equal(d, [[1, 1, 1, 1]])


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 200), n_shards=st.integers(1, 6), k=st.integers(1, 60), seed=st.integers(0, 999))
def test_tree_merge_equals_unsharded(n, n_shards, k, seed):
    r = np.random.default_rng(seed)
    db = r.integers(-3, 4, (n, 4)).astype(np.float32)  # many exact ties
    q = r.integers(-3, 4, (3, 4)).astype(np.float32)
    cuts = np.unique(np.r_[0, np.sort(r.integers(0, n + 1, n_shards - 1)), n])
    parts = [(*topk_sq_euclidean(q, db[a:b], k=k), a) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]
    # pairwise tree reduction
    while len(parts) > 1:
        parts = [merge_topk(parts[j:j + 2], k=k) for j in range(0, len(parts), 2)]
    d, i = parts[0][:2]
    fd, fi = topk_sq_euclidean(q, db, k=k)
    np.testing.assert_array_equal(i, fi)
    np.testing.assert_array_equal(d, fd)


def test_default_k():
    assert default_k(0) == 0
    assert default_k(10) == 10
    assert default_k(50_000) == 1000
    assert default_k(1_000_000) == 10_000
    assert default_k(1_000_001) == 10_001


def test_errors():
    db = np.zeros((4, 8), np.float32)
    with pytest.raises(ParameterError, match="float32 or float16, got float64"):
        topk_sq_euclidean(np.zeros((1, 8)), db, k=1)
    with pytest.raises(ParameterError, match="queries have 7 dims but db has 8"):
        topk_sq_euclidean(np.zeros((1, 7), np.float32), db, k=1)
    with pytest.raises(ParameterError, match="k must be a positive integer"):
        topk_sq_euclidean(np.zeros((1, 8), np.float32), db, k=0)
    with pytest.raises(ParameterError, match="NaN"):
        topk_sq_euclidean(np.full((1, 8), np.nan, np.float32), db, k=1)
    with pytest.raises(ParameterError, match="same query batch"):
        merge_topk([(np.zeros((2, 1)), np.zeros((2, 1), int)), (np.zeros((3, 1)), np.zeros((3, 1), int))], k=1)
    with pytest.raises(ParameterError, match="parts is empty"):
        merge_topk([], k=1)


def test_query_windows_cover_the_query():
    from msdmatch.kernels.prune import query_windows

    assert query_windows(10, length=4, hop=3).tolist() == [0, 3, 6]
    assert query_windows(11, length=4, hop=3).tolist() == [0, 3, 6, 7]
    assert query_windows(3, length=4, hop=2).tolist() == [0]
    with pytest.raises(ParameterError):
        query_windows(10, length=0, hop=1)


@given(st.integers(0, 2**31 - 1), st.integers(1, 60))
@settings(max_examples=25, deadline=None)
def test_topk_multi_equals_brute_force_min_over_windows(seed, k):
    from msdmatch.kernels.prune import topk_multi

    rng = np.random.default_rng(seed)
    db = rng.standard_normal((300, 8)).astype(np.float32)
    counts = rng.integers(0, 5, size=4)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    windows = rng.standard_normal((int(offsets[-1]), 8)).astype(np.float32)
    dist, idx = topk_multi(windows, offsets, db, k=k)
    for i in range(4):
        a, b = offsets[i], offsets[i + 1]
        if a == b:
            assert np.all(idx[i] == -1) and np.all(np.isnan(dist[i]))
            continue
        ex = ((windows[a:b, None].astype(np.float64) - db[None]) ** 2).sum(-1).astype(np.float32).min(0)
        order = np.lexsort((np.arange(ex.size), ex))[:k]
        assert np.array_equal(idx[i], order)
        assert np.array_equal(dist[i], ex[order])


def test_topk_multi_rejects_bad_offsets():
    from msdmatch.kernels.prune import topk_multi

    w = np.zeros((3, 4), np.float32)
    with pytest.raises(ParameterError):
        topk_multi(w, np.array([0, 2]), np.zeros((5, 4), np.float32), k=2)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 999), k=st.integers(1, 30), n_parts=st.integers(1, 4), sort=st.booleans())
def test_merge_equals_a_full_sort(seed, k, n_parts, sort):
    """Sorted parts (the shards' form, NaN padding last) take the O(k) merge, others a full sort."""
    r = np.random.default_rng(seed)
    parts = []
    for _ in range(n_parts):
        w = int(r.integers(1, 12))
        d = r.integers(0, 4, (3, w)).astype(np.float32)  # many ties
        d[:, w - int(r.integers(0, 3)):] = np.nan
        x = r.permutation(1000)[: 3 * w].reshape(3, w)
        if sort:
            o = np.lexsort((x, d), axis=-1)
            d, x = np.take_along_axis(d, o, 1), np.take_along_axis(x, o, 1)
        parts.append((d, x))
    gd, gx = merge_topk(parts, k=k)
    d, x = np.concatenate([p[0] for p in parts], 1), np.concatenate([p[1] for p in parts], 1)
    o = np.lexsort((x, d), axis=-1)[:, :k]
    np.testing.assert_array_equal(gd, np.take_along_axis(d, o, 1))
    np.testing.assert_array_equal(gx, np.take_along_axis(x, o, 1))
