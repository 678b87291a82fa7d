"""The screen between the DHS rerank and verify: pure functions, hand-worked."""
import numpy as np
import pytest

from msdmatch.errors import ParameterError
from msdmatch.kernels import screen
from msdmatch.kernels.dtw import cosine_dtw
from msdmatch.kernels.features import standardize_bins, unit_frames


def test_screen_frames_pool_standardised_windows():
    rng = np.random.default_rng(0)
    X = rng.random((21, 48)).astype(np.float32)
    F = screen.screen_frames(X)
    assert F.shape == (3, 48) and F.dtype == np.int8  # ceil(21 / 8): the last window holds 5 frames
    Z = standardize_bins(X, normalize=False)
    want = unit_frames(np.stack([Z[0:8].mean(0), Z[8:16].mean(0), Z[16:21].mean(0)]))
    np.testing.assert_allclose(F / screen.SCALE, want, atol=0.5 / screen.SCALE + 1e-6)
    # a static equalisation (an offset and a gain per bin) does not change them
    G = screen.screen_frames(X * rng.uniform(0.5, 2, 48) + rng.normal(0, 3, 48))
    assert np.abs(G.astype(int) - F).max() <= 1
    np.testing.assert_allclose(np.linalg.norm(screen.unpack(F), axis=1), 1, atol=1e-6)


def test_screen_frames_edge_cases():
    assert screen.screen_frames(np.zeros((0, 48))).shape == (0, 48)
    np.testing.assert_array_equal(screen.screen_frames(np.ones((10, 48))), 0)  # nothing changes: zero frames
    with pytest.raises(ParameterError, match="pool must be >= 1"):
        screen.screen_frames(np.ones((4, 48)), pool=0)
    with pytest.raises(ParameterError, match="2-D"):
        screen.screen_frames(np.ones(48))


def test_screen_scores_are_cosine_dtws_of_the_unpacked_frames():
    rng = np.random.default_rng(1)
    q = screen.screen_frames(rng.random((90, 48)))
    cands = [screen.screen_frames(rng.random((n, 48))) for n in (40, 64)] + [np.zeros((0, 48), np.int8)]
    s = screen.screen_scores(q, cands)
    for k in range(2):
        assert s[k] == pytest.approx(cosine_dtw(screen.unpack(q), screen.unpack(cands[k]), gully=0.96,
                                                return_path=False), abs=1e-9)
    assert s[2] == np.inf
    assert np.all(screen.screen_scores(q[:0], cands) == np.inf)


def test_screen_order_sums_z_scores():
    sc = np.array([0.5, 0.2, 0.4, np.inf])
    ratio = np.array([1.0, 3.0, 1.0, 2.0])
    pse = np.array([4.0, 1.0, 9.0, 2.0])
    order, combined = screen.screen_order(sc, ratio, pse)
    z = lambda x: (x - x.mean()) / x.std()  # noqa: E731
    zs = z(np.array([0.5, 0.2, 0.4]))
    want = np.array([zs[0], zs[1], zs[2], zs.max()]) + z(ratio) + z(np.log(pse + 1e-6))  # inf: worst finite z
    np.testing.assert_allclose(combined, want, atol=1e-6)
    assert order.tolist() == np.argsort(want, kind="stable").tolist()
    # the PSE term is the same for squared and plain distances (z of a log)
    np.testing.assert_allclose(screen.screen_order(sc, ratio, np.sqrt(pse))[1], combined, atol=1e-3)
    # one candidate: no spread, order unchanged
    assert screen.screen_order(np.array([0.3]), np.array([2.0]), np.array([1.0]))[0].tolist() == [0]
    with pytest.raises(ParameterError, match="one length"):
        screen.screen_order(np.zeros(3), np.zeros(3), np.zeros(2))
