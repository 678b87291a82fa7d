"""The prune's hub penalty (msdmatch.kernels.hub) against direct computations."""
import numpy as np
import pytest

from msdmatch.errors import ParameterError
from msdmatch.kernels.hub import hub_column, hub_scores, pad_queries, with_hub
from msdmatch.kernels.prune import topk_sq_euclidean


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
