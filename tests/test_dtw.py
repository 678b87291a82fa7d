"""Tests for msdmatch.kernels.dtw against hand-worked examples and numpy references."""

from __future__ import annotations

import _dtw_reference as ref
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msdmatch.errors import ParameterError
from msdmatch.kernels.dtw import (
    bit_frequencies,
    cosine_dtw,
    dtw_confidence,
    hamming_dtw,
    hamming_dtw_many,
    hamming_matrix_mean,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


def u32(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.uint32)


def test_hamming_hand_worked() -> None:
    # query rows q = [0b0000, 0b1111, 0b0011], candidate cols c = [0b0001, 0b1111]
    # D = popcount(q_i ^ c_j):
    #        c0  c1
    #   q0 [  1,  4 ]
    #   q1 [  3,  0 ]
    #   q2 [  1,  2 ]
    # penalty 2.  First row/column are fresh starts (cost, length):
    #   (0,0)=(1,1) (0,1)=(4,1) (1,0)=(3,1) (2,0)=(1,1)
    #   (1,1): diag (0,0)->(1+0,2)=(1,2); up (0,1)->(4+2+0,2); left (1,0)->(3+2,2) => (1,2)
    #   (2,1): diag (1,0)->(3+2,2)=(5,2); up (1,1)->(1+2+2,3)=(5,3); left (2,0)->(1+2+2,2)=(5,2)
    #          equal cost 5: the longer path wins => (5,3)
    # gully 0.5: g = min(floor(0.5*2), 1) = 1; ends: last column rows 1,2 and last row col 1
    #   (1,1) -> 1/2 = 0.5 ; (2,1) -> 5/3.  Best 0.5.
    q = u32(0b0000, 0b1111, 0b0011)
    c = u32(0b0001, 0b1111)
    assert hamming_dtw(q, c, penalty=2, gully=0.5) == 0.5
    # gully 1: g = min(2, 1) = 1 -> same end cells here.
    assert hamming_dtw(q, c, penalty=2, gully=1.0) == 0.5
    # gully 0: g = 0 adds (0,1)=4/1 and (2,0)=1/1; best still 0.5.
    assert hamming_dtw(q, c, penalty=2, gully=0.0) == 0.5


def test_hamming_tie_prefers_longer_path() -> None:
    # D = [[0, 0], [5, 0]] with penalty 0 (q=[0, 0b11111], c=[0, 0b11111]... built directly):
    # q = [0, 31], c = [0, 31]: D = [[0,5],[5,0]].  (1,1): diag (0,0)=(0,1) -> (0,2).
    # g = min(floor(0.9*2), 1) = 1; ends (1,1)=0/2, (0,1)... not allowed (row 0 < g).
    q = u32(0, 31)
    assert hamming_dtw(q, q) == 0.0
    # Equal-cost tie: D = [[1, 1], [1, 1]], penalty 0 -> (1,1) from diag (1,1)+1 = (2,2),
    # from up (0,1)=(1,1)+1 = (2,2), same; score 1.0 either way.
    assert hamming_dtw(u32(1, 1), u32(0, 0), penalty=0) == 1.0


def test_hamming_dp_is_not_min_ratio() -> None:
    # Documented behaviour: the DP minimises accumulated cost, then divides.
    # D = [[0, 9, 9], [9, 0, 0] ...]: search for a case where the two differ.
    rng = np.random.default_rng(3)
    found = False
    for _ in range(300):
        q = rng.integers(0, 16, 3).astype(np.uint32)
        c = rng.integers(0, 16, 3).astype(np.uint32)
        a = hamming_dtw(q, c, penalty=1, gully=0.0)
        assert a == ref.brute_force_hamming_dtw(q, c, penalty=1, gully=0.0)
        found |= a > ref.brute_force_min_ratio(q, c, penalty=1, gully=0.0)
    assert found


def words_strategy(max_len: int) -> st.SearchStrategy[np.ndarray]:
    return st.lists(
        st.integers(0, 2**32 - 1), min_size=1, max_size=max_len
    ).map(lambda v: np.array(v, dtype=np.uint32))


@settings(max_examples=60, deadline=None)
@given(
    q=words_strategy(5),
    c=words_strategy(4),
    penalty=st.integers(0, 40),
    gully=st.floats(0.0, 1.0),
    narrow=st.booleans(),
)
def test_hamming_matches_brute_force(q, c, penalty, gully, narrow) -> None:  # type: ignore[no-untyped-def]
    if narrow:  # few distinct distances: many ties
        q, c = q & np.uint32(3), c & np.uint32(3)
    got = hamming_dtw(q, c, penalty=penalty, gully=gully)
    assert got == ref.brute_force_hamming_dtw(q, c, penalty=penalty, gully=gully)


@settings(max_examples=60, deadline=None)
@given(
    q=words_strategy(40),
    c=words_strategy(30),
    penalty=st.integers(0, 40),
    gully=st.floats(0.0, 1.0),
)
def test_hamming_matches_reference(q, c, penalty, gully) -> None:  # type: ignore[no-untyped-def]
    got = hamming_dtw(q, c, penalty=penalty, gully=gully)
    assert got == ref.reference_hamming_dtw(q, c, penalty=penalty, gully=gully)


def make_batch(rng: np.random.Generator, m: int, n: int, lo: int, hi: int):  # type: ignore[no-untyped-def]
    query = rng.integers(0, 2**32, m, dtype=np.uint32)
    lengths = rng.integers(lo, hi + 1, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    words = rng.integers(0, 2**32, int(offsets[-1]), dtype=np.uint32)
    for i in range(0, n, 7):  # related candidates: noisy query segments
        a = int(rng.integers(0, max(1, m - lengths[i])))
        seg = query[a : a + lengths[i]].copy()
        seg ^= np.uint32(1) << rng.integers(0, 32, seg.size).astype(np.uint32)
        words[offsets[i] : offsets[i] + seg.size] = seg
    return query, words, offsets


def test_many_matches_single(rng: np.random.Generator) -> None:
    query, words, offsets = make_batch(rng, 37, 150, 1, 25)
    got = hamming_dtw_many(query, words, offsets, penalty=7, gully=0.8)
    for i in range(0, 150, 5):
        cand = words[offsets[i] : offsets[i + 1]]
        assert got[i] == ref.reference_hamming_dtw(query, cand, penalty=7, gully=0.8)


@pytest.mark.parametrize("top_r", [1, 5, 30, 149, 150, 400])
def test_many_top_r_equals_exhaustive(rng: np.random.Generator, top_r: int) -> None:
    query, words, offsets = make_batch(rng, 120, 150, 10, 30)
    full = hamming_dtw_many(query, words, offsets)
    top = hamming_dtw_many(query, words, offsets, top_r=top_r)
    r = min(top_r, 150)
    order_full = np.lexsort((np.arange(150), full))[:r]
    order_top = np.lexsort((np.arange(150), top))[:r]
    np.testing.assert_array_equal(order_full, order_top)
    np.testing.assert_array_equal(full[order_full], top[order_top])
    finite = np.isfinite(top)
    np.testing.assert_array_equal(top[finite], full[finite])
    assert np.all(full[~finite] > np.sort(full)[r - 1])


def test_identical_sequences_score_zero(rng: np.random.Generator) -> None:
    q = rng.integers(0, 2**32, 50, dtype=np.uint32)
    assert hamming_dtw(q, q) == 0.0
    assert hamming_dtw(q, q[10:30]) == 0.0  # subsequence via free start


def test_one_step_sequences() -> None:
    # M == 1: every cell starts and ends a path; the score is the smallest distance.
    assert hamming_dtw(u32(0b111), u32(0b1, 0b110, 0b0)) == 1.0
    assert hamming_dtw(u32(0b1, 0b110, 0b0), u32(0b111)) == 1.0
    assert hamming_dtw(u32(5), u32(5)) == 0.0


def test_empty_inputs() -> None:
    with pytest.raises(ParameterError, match="query is empty"):
        hamming_dtw(u32(), u32(1))
    with pytest.raises(ParameterError, match="candidate is empty"):
        hamming_dtw(u32(1), u32())
    with pytest.raises(ParameterError, match="candidate 1 is empty"):
        hamming_dtw_many(u32(1), u32(1, 2), np.array([0, 2, 2]))
    out = hamming_dtw_many(u32(1), u32(), np.array([0]))
    assert out.shape == (0,) and out.dtype == np.float64


def test_hamming_errors() -> None:
    with pytest.raises(ParameterError, match=r"query must have dtype uint32.*astype"):
        hamming_dtw(np.array([1, 2]), u32(1))
    with pytest.raises(ParameterError, match="CQT features"):
        hamming_dtw(np.zeros(3), u32(1))
    with pytest.raises(ParameterError, match="must be 1-D"):
        hamming_dtw(np.zeros((2, 2), np.uint32), u32(1))
    with pytest.raises(ParameterError, match="gully must be in"):
        hamming_dtw(u32(1), u32(1), gully=1.5)
    with pytest.raises(ParameterError, match="penalty must be a non-negative integer"):
        hamming_dtw(u32(1), u32(1), penalty=1.5)
    with pytest.raises(ParameterError, match="non-decreasing"):
        hamming_dtw_many(u32(1), u32(1, 2), np.array([0, 2, 1]))
    with pytest.raises(ParameterError, match="offsets must lie"):
        hamming_dtw_many(u32(1), u32(1, 2), np.array([0, 3]))
    with pytest.raises(ParameterError, match="top_r must be"):
        hamming_dtw_many(u32(1), u32(1, 2), np.array([0, 2]), top_r=0)


def unit_rows(rng: np.random.Generator, n: int, d: int = 48) -> np.ndarray:
    x = np.abs(rng.normal(size=(n, d)))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_cosine_hand_worked() -> None:
    # X rows e0, e1; Y rows e0, e0, e1 (unit vectors in 2-D).
    # C = 1 - X Y^T = [[0, 0, 1],
    #                  [1, 1, 0]]
    # penalty 0.5, gully 1 -> g = min(2, 1) = 1.
    # Row 0 starts: A=[0,0,1], L=[1,1,1].  (1,0) start: A=1, L=1.
    # (1,1): diag A(0,0)=0, up 0+.5, left 1+.5 -> 0 + C=1 -> A=1, L=2
    # (1,2): diag A(0,1)=0, up 1+.5, left 1+.5 -> 0 + 0 -> A=0, L=2 (path (0,1),(1,2))
    # ends: last col rows >=1: (1,2) 0/2 = 0; last row cols >= 1: (1,1) 1/2.
    # score 0 / 2 / mean(C[0:2, 1:3]) = 0.
    X = np.array([[1, 0], [0, 1]], np.float32)
    Y = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    s, path = cosine_dtw(X, Y, penalty=0.5, gully=1.0)
    assert s == 0.0
    np.testing.assert_array_equal(path, [[0, 1], [1, 2]])
    # Swap to force a cost: Y' rows e1, e0 -> C = [[1, 0], [0, 1]], penalty 0.5
    # (1,1): diag A(0,0)=1, up 0+.5=.5, left 0+.5=.5 -> up wins (tie with left, vertical
    # preferred) -> A = .5 + 1 = 1.5, L = 2.  g = min(2, 1) = 1.
    # ends: last col rows >= 1: (1,1) = 1.5/2 = .75; last row cols >= 1: (1,1) again.
    # path (0,1),(1,1): box C[0:2, 1:2] = [0, 1], mean .5 -> score .75 / .5 = 1.5
    s, path = cosine_dtw(X, Y[1:][::-1], penalty=0.5, gully=1.0)
    assert s == pytest.approx(1.5)
    np.testing.assert_array_equal(path, [[0, 1], [1, 1]])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 9),
    m=st.integers(1, 9),
    gully=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
)
def test_cosine_matches_reference(n, m, gully, seed, dtype) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    X = unit_rows(rng, n, 6).astype(dtype)
    Y = unit_rows(rng, m, 6).astype(dtype)
    s, path = cosine_dtw(X, Y, gully=gully)
    rs, rpath = ref.reference_cosine_dtw(X, Y, gully=gully)
    assert s == rs
    np.testing.assert_array_equal(path, rpath)
    steps = np.diff(path, axis=0)
    assert np.all((steps >= 0) & (steps <= 1)) and np.all(steps.sum(axis=1) >= 1)
    assert path[0, 0] == 0 or path[0, 1] == 0


def test_cosine_confidence_stretch_vs_random(rng: np.random.Generator) -> None:
    X = unit_rows(rng, 300)
    # smooth-ish sequence so stretched copies stay similar
    X = np.cumsum(X, axis=0)
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    idx = np.clip(np.round(np.linspace(0, 299, 380) + rng.normal(0, 1, 380)), 0, 299)
    Y = X[np.sort(idx.astype(int))].astype(np.float16)
    s, path = cosine_dtw(X, Y)
    assert dtw_confidence(s) > 0.9
    R = unit_rows(rng, 350)
    s_rand = cosine_dtw(X, R, return_path=False)
    assert dtw_confidence(s_rand) < 0.3


def test_dtw_confidence_values() -> None:
    np.testing.assert_array_equal(dtw_confidence(np.array([0.0, 0.5, 0.75, 1.2])), [1, 1, 0.5, 0])
    assert dtw_confidence(0.6) == pytest.approx(0.8)


def test_cosine_errors() -> None:
    X = np.eye(3, dtype=np.float32)
    with pytest.raises(ParameterError, match="X must be float16"):
        cosine_dtw(X.astype(int), X)
    with pytest.raises(ParameterError, match="Y must be 2-D"):
        cosine_dtw(X, X[0])
    with pytest.raises(ParameterError, match="Y has no frames"):
        cosine_dtw(X, X[:0])
    with pytest.raises(ParameterError, match="X has 3 bins but Y has 2"):
        cosine_dtw(X, X[:, :2])
    with pytest.raises(ParameterError, match="NaN"):
        cosine_dtw(X * np.nan, X)
    with pytest.raises(ParameterError, match="penalty must be"):
        cosine_dtw(X, X, penalty=-1)


def cost_median(dots: np.ndarray) -> tuple[np.ndarray, float, bool]:
    """Run the cost and median kernels on float32 dot products."""
    from msdmatch.kernels import _dtw_kernels as _k

    flat = np.array(dots, dtype=np.float32).reshape(-1)
    hist, exact = _k._cost_in_place(flat, True)
    return flat, float(_k._median_from_hist(flat, hist)), bool(exact)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 1000, 1001, 40_000, 40_001])
def test_cost_median_matches_numpy(rng: np.random.Generator, size: int) -> None:
    # Arbitrary float32 "dot products", beyond [-1, 2] so both clips fire.
    dots = rng.uniform(-1.5, 3.0, size).astype(np.float32)
    C, med, exact = cost_median(dots)
    expect = np.clip(1.0 - dots, 0.0, 2.0)
    np.testing.assert_array_equal(C, expect)
    assert exact
    assert med == np.median(expect.astype(np.float64))


@pytest.mark.parametrize("size", [2, 5, 64, 999, 5000])
def test_cost_median_with_ties(rng: np.random.Generator, size: int) -> None:
    # Few distinct values: the middle ranks fall inside long runs of ties,
    # or straddle two values (even sizes).
    levels = np.array([-0.5, 0.0, 0.25, 0.5, 1.0, 2.5], dtype=np.float32)
    dots = rng.choice(levels, size)
    C, med, _ = cost_median(dots)
    assert med == np.median(C.astype(np.float64))
    for value in (0.0, 1.0, 1.5, 3.0):  # all equal, incl. clipped to 0 and 2
        C, med, _ = cost_median(np.full(size, value))
        assert med == np.median(C.astype(np.float64))
    # Two values split half and half: median is their mean.
    C, med, _ = cost_median(np.repeat(np.float32([0.9, 0.1]), 50))
    lo, hi = np.float64(C.min()), np.float64(C.max())
    assert med == np.median(C.astype(np.float64)) == (lo + hi) / 2


def test_cost_median_neighbouring_keys() -> None:
    # Middle values one float32 step apart, in the same and in adjacent
    # histogram bins (bins are 2**12 keys wide, a key is 2**-24).
    for key in (4096 * 100 - 1, 4096 * 100, 4096 * 100 + 7):
        a = np.float32(1.0 - key / 2**24)
        b = np.float32(1.0 - (key + 1) / 2**24)
        C, med, _ = cost_median(np.array([a, a, b, b], dtype=np.float32))
        assert med == np.median(C.astype(np.float64))


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 40),
    m=st.integers(1, 40),
    seed=st.integers(0, 2**31),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
)
def test_cosine_costs_are_exact_keys(n, m, seed, dtype) -> None:  # type: ignore[no-untyped-def]
    # The property the median selection and the box sums rest on.
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, 5)) * rng.uniform(0.1, 3.0)).astype(dtype)
    Y = rng.normal(size=(m, 5)).astype(dtype)
    dots = X.astype(np.float32) @ Y.astype(np.float32).T
    C, med, exact = cost_median(dots)
    assert exact
    keys = C.astype(np.float64) * 2**24
    np.testing.assert_array_equal(keys, np.round(keys))
    assert med == np.median(C.astype(np.float64))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 30),
    m=st.integers(1, 30),
    gully=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
    penalty=st.one_of(st.none(), st.floats(0.0, 2.0)),
)
def test_cosine_score_without_path_equals_with_path(n, m, gully, seed, penalty) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    X = unit_rows(rng, n, 6)
    Y = X[np.sort(rng.integers(0, n, m))] if rng.random() < 0.5 else unit_rows(rng, m, 6)
    s, _ = cosine_dtw(X, Y, gully=gully, penalty=penalty)
    assert cosine_dtw(X, Y, gully=gully, penalty=penalty, return_path=False) == s


def test_cosine_score_kernel_start_cell(rng: np.random.Generator) -> None:
    # The start cell carried through the DP is the traceback's first cell.
    from msdmatch.kernels import _dtw_kernels as _k

    X = unit_rows(rng, 120)
    Y = X[np.sort(rng.integers(20, 90, 70))]
    for A, B in ((X, Y), (Y, X), (X, unit_rows(rng, 50))):
        C = np.clip(1.0 - A @ B.T, 0.0, 2.0).astype(np.float32)
        for g in (0, 10, min(C.shape) - 1):
            steps, ei, ej, cost, length = _k._cosine_dtw_kernel(C, 0.3, g)
            path = _k._traceback(steps, ei, ej, length)
            got = _k._cosine_dtw_score_kernel(C, 0.3, g)
            assert got == (ei, ej, cost, length, path[0, 0], path[0, 1])


def test_cosine_realistic_sizes_match_float64_pipeline(rng: np.random.Generator) -> None:
    # The float32 cost path gives the same score as float64 costs with
    # np.median and a numpy box mean.
    from msdmatch.kernels import _dtw_kernels as _k

    X = unit_rows(rng, 400).astype(np.float16)
    Y = X[np.sort(rng.integers(50, 350, 260))]
    s, path = cosine_dtw(X, Y)
    C = np.clip((1.0 - X.astype(np.float32) @ Y.astype(np.float32).T).astype(np.float64), 0, 2)
    steps, ei, ej, cost, length = _k._cosine_dtw_kernel(C, float(np.median(C)), 249)
    ref_path = _k._traceback(steps, ei, ej, length)
    np.testing.assert_array_equal(path, ref_path)
    box = C[path[0, 0] : ei + 1, path[0, 1] : ej + 1]
    assert s == cost / length / box.mean()
    assert cosine_dtw(X, Y, return_path=False) == s


def test_hamming_matrix_mean_equals_mean_of_popcount_matrix(rng) -> None:
    words = rng.integers(0, 2**32, 70, dtype=np.uint32)
    words[40:55] &= np.uint32(0x0000FFFF)  # a sequence with skewed bits
    offsets = np.array([0, 12, 40, 55, 55, 70])  # includes an empty sequence
    freq = bit_frequencies(words, offsets)
    assert freq.shape == (5, 32) and freq.dtype == np.float32
    assert np.all(freq[3] == 0) and np.all(freq[2, 16:] == 0)
    bits = (words[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    np.testing.assert_allclose(freq[1], bits[12:40].mean(axis=0), rtol=1e-6)
    q = words[:9]
    got = hamming_matrix_mean(bit_frequencies(q, np.array([0, 9]))[0], freq)
    for i in (0, 1, 2, 4):
        c = words[offsets[i]:offsets[i + 1]]
        D = [[bin(int(a) ^ int(b)).count("1") for b in c] for a in q]
        assert got[i] == pytest.approx(np.mean(D), rel=1e-6)
    with pytest.raises(ParameterError, match="shape"):
        hamming_matrix_mean(freq[0, :16], freq)
    with pytest.raises(ParameterError, match="non-decreasing"):
        bit_frequencies(words, np.array([0, 20, 10]))


def test_cosine_dtw_pair_equals_two_calls(rng: np.random.Generator) -> None:
    # The interleaved pair kernel is the single kernel twice, bit for bit.
    from msdmatch.kernels.dtw import cosine_dtw_pair
    from msdmatch.kernels.features import standardize_bins

    X = unit_rows(rng, 90)
    for Y in (X[np.sort(rng.integers(10, 80, 40))], unit_rows(rng, 130), unit_rows(rng, 1)):
        for gully in (0.0, 0.5, 0.96, 1.0):
            Xs, Ys = standardize_bins(X), standardize_bins(Y)
            want = (cosine_dtw(X, Y, gully=gully, return_path=False),
                    cosine_dtw(Xs, Ys, gully=gully, return_path=False))
            assert cosine_dtw_pair(X, Y, Xs, Ys, gully=gully) == want
            assert cosine_dtw_pair(Y, X, Ys, Xs, gully=gully) == (
                cosine_dtw(Y, X, gully=gully, return_path=False), cosine_dtw(Ys, Xs, gully=gully, return_path=False))


def test_cosine_dtw_pair_refuses_views_of_different_lengths(rng: np.random.Generator) -> None:
    from msdmatch.kernels.dtw import cosine_dtw_pair

    X, Y = unit_rows(rng, 20), unit_rows(rng, 10)
    with pytest.raises(ParameterError, match="same numbers of frames"):
        cosine_dtw_pair(X, Y, X[:19], Y)
