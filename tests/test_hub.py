"""The hub corrections of the prune and the rerank (msdmatch.kernels.hub) against direct computations."""
import _dtw_reference as ref
import numpy as np
import pytest

from msdmatch.errors import ParameterError
from msdmatch.kernels.hub import (
    corrected_ratio,
    dhs_hub_scores,
    hub_column,
    hub_scores,
    pad_queries,
    with_hub,
)
from msdmatch.kernels.prune import topk_sq_euclidean
from msdmatch.params import DHS_GULLY, DHS_PENALTY


def _unit(rng, n, d=16):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_hub_scores_is_the_mean_of_the_k_largest_cosines():
    rng = np.random.default_rng(0)
    V, R = _unit(rng, 50), _unit(rng, 30)
    V[7] = np.nan
    got = hub_scores(V, R, k=4, block=8)  # blocks smaller than the input
    S = V.astype(np.float64) @ R.T.astype(np.float64)
    want = np.sort(S, axis=1)[:, -4:].mean(axis=1)
    assert np.isnan(got[7])
    np.testing.assert_allclose(np.delete(got, 7), np.delete(want, 7), atol=1e-6)


def test_hub_coordinate_adds_the_penalty_to_squared_distances():
    rng = np.random.default_rng(1)
    Q, D = _unit(rng, 5), _unit(rng, 40)
    hub = hub_scores(D, _unit(rng, 20), k=3)
    A = with_hub(D, hub_column(hub, 1.5))
    Qp = pad_queries(Q, A.shape[1])
    got = ((Qp[:, None, :].astype(np.float64) - A[None]) ** 2).sum(-1)
    raw = ((Q[:, None, :].astype(np.float64) - D[None]) ** 2).sum(-1)
    np.testing.assert_allclose(got, raw + 1.5 * (hub.astype(np.float64) + 1.0)[None], atol=1e-5)
    # the exact prune over the augmented vectors ranks by the penalised distance
    _, idx = topk_sq_euclidean(Qp, A, k=10)
    np.testing.assert_array_equal(idx, np.argsort(got, axis=1, kind="stable")[:, :10])
    # without a penalty the extra coordinate is zero and changes nothing
    np.testing.assert_array_equal(with_hub(D, None)[:, -1], 0.0)


def test_hub_column_gives_unknown_scores_no_penalty():
    np.testing.assert_array_equal(hub_column(np.array([np.nan, -1.0, 1.0]), 2.0), [0.0, 0.0, 2.0])


@pytest.mark.parametrize("kw", [dict(k=0), dict(k=31)])
def test_hub_scores_refuses_bad_k(kw):
    rng = np.random.default_rng(2)
    with pytest.raises(ParameterError):
        hub_scores(_unit(rng, 3), _unit(rng, 30), **kw)


def _words(rng, n):
    return rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)


def test_dhs_hub_scores_is_the_mean_of_the_k_lowest_reference_ratios():
    """Each preview's score against plain-Python Hamming-DTWs and the mean of the Hamming matrix."""
    rng = np.random.default_rng(3)
    previews = [_words(rng, n) for n in (9, 0, 14, 11, 7)]  # preview 1 failed: no words
    reference = [_words(rng, n) for n in (12, 8, 10, 13)]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in previews])])
    got = dhs_hub_scores(np.concatenate(previews), offsets, reference, k=2)
    assert got.shape == (5,) and got.dtype == np.float32 and np.isnan(got[1])
    for i, p in enumerate(previews):
        if not len(p):
            continue
        ratios = [ref.reference_hamming_dtw(r, p, penalty=DHS_PENALTY, gully=DHS_GULLY)
                  / ref.hamming_matrix(r, p).mean() for r in reference]
        assert got[i] == pytest.approx(np.mean(sorted(ratios)[:2]), rel=1e-5)


def test_dhs_hub_scores_refuses_bad_reference():
    rng = np.random.default_rng(4)
    words, offsets = _words(rng, 10), np.array([0, 10])
    with pytest.raises(ParameterError):
        dhs_hub_scores(words, offsets, [_words(rng, 5)], k=2)
    with pytest.raises(ParameterError):
        dhs_hub_scores(words, offsets, [_words(rng, 5), _words(rng, 0)], k=1)


def test_corrected_ratio_subtracts_known_terms_only():
    got = corrected_ratio(np.array([0.8, 0.8, np.inf]), np.array([0.3, np.nan, 0.3]))
    np.testing.assert_allclose(got, [0.5, 0.8, np.inf])
