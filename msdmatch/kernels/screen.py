"""Screen: a coarse cosine DTW between the DHS rerank and the verify stage.

The DHS rerank's order decides which R candidates are screened; the screen
decides which V of them the full verify DTW sees.  It runs cosine DTW on
*screen frames*: the CQT standardised per bin (as ``verify_std_score``),
averaged over windows of :data:`POOL` frames (the DHS nets' downsampling,
372 ms) and stored as int8 unit vectors by ``msdmatch embed``.  A 30 s
preview is 81 such frames (3.9 kB); the DTW over them costs 1/64 of one
full verify DTW.

The screen score is the sum of the per-query z-scores of the screen DTW
score, the DHS ratio and the log PSE distance (:func:`screen_order`): they
disagree on different recordings (the hash bits miss a recording that
drops the bass part, which the standardised spectrogram still matches; a
rendition in another synthesis engine moves both, less so the embedding),
so their sum brings more true matches into the top V than any one alone.
"""
from __future__ import annotations

import numpy as np

from msdmatch.errors import ParameterError
from msdmatch.params import COSINE_GULLY

#: Frames averaged into one screen frame.
POOL = 8
#: int8 scale of a unit-vector component.
SCALE = 127.0
#: Version of the screen frames' definition, stored with them.
FORMAT_VERSION = 1
#: Gully of the screen DTW (as the verify DTW).
GULLY = COSINE_GULLY
#: Version of :func:`screen_order`'s rule, recorded with a match run (it decides which rows are verified).
#: 1: z(screen) + z(DHS ratio); 2: adds z(log PSE distance).
ORDER_VERSION = 2


def screen_frames(X: np.ndarray, *, pool: int = POOL) -> np.ndarray:
    """The int8 screen frames of one sequence.

    Parameters
    ----------
    X : np.ndarray [shape=(n_frames, n_bins)]
        Features as stored.
    pool : int >= 1
        Frames per screen frame; the last window may be shorter.

    Returns
    -------
    F : np.ndarray [shape=(ceil(n_frames / pool), n_bins), dtype=int8]
        Per window, the mean of the bin-standardised frames, L2-normalised,
        times :data:`SCALE`, rounded.  All-zero windows stay zero.
    """
    from msdmatch.kernels.features import standardize_bins, unit_frames

    if pool < 1:
        raise ParameterError(f"pool must be >= 1, got {pool}")
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ParameterError(f"X must be 2-D (n_frames, n_bins), got shape {X.shape}")
    if len(X) == 0:
        return np.zeros((0, X.shape[1]), np.int8)
    Z = standardize_bins(X, normalize=False)
    starts = np.arange(0, len(Z), pool)
    M = np.add.reduceat(Z, starts, axis=0) / np.diff(np.append(starts, len(Z)))[:, None]
    return np.rint(unit_frames(M) * SCALE).astype(np.int8)


def unpack(F: np.ndarray) -> np.ndarray:
    """float32 unit frames of int8 screen frames.

    Parameters
    ----------
    F : np.ndarray [shape=(n_steps, n_bins), dtype=int8]

    Returns
    -------
    U : np.ndarray [shape=(n_steps, n_bins), dtype=float32]
    """
    from msdmatch.kernels.features import unit_frames

    return unit_frames(np.asarray(F, dtype=np.float32))


def screen_scores(query: np.ndarray, cands: list[np.ndarray]) -> np.ndarray:
    """Cosine-DTW scores of a query's screen frames against its candidates'.

    Parameters
    ----------
    query : np.ndarray [shape=(m, n_bins), dtype=int8]
    cands : list of np.ndarray [shape=(n_i, n_bins), dtype=int8]

    Returns
    -------
    scores : np.ndarray [shape=(len(cands),), dtype=float64]
        :func:`msdmatch.kernels.dtw.cosine_dtw` scores (lower is better); ``inf``
        where either sequence is empty.
    """
    from msdmatch.kernels.dtw import cosine_dtw

    s = np.full(len(cands), np.inf)
    if len(query) == 0:
        return s
    q = unpack(query)
    for n, c in enumerate(cands):
        if len(c):
            s[n] = cosine_dtw(q, unpack(c), gully=GULLY, return_path=False)
    return s


def _z(x: np.ndarray) -> np.ndarray:
    """z-scores over the finite entries; non-finite entries get the worst finite z."""
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    if not ok.any():
        return np.zeros_like(x)
    z = (x - x[ok].mean()) / (x[ok].std() + 1e-9)
    z[~ok] = z[ok].max()
    return z


def screen_order(screen: np.ndarray, ratio: np.ndarray, pse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order one query's screened candidates by the screen score.

    Parameters
    ----------
    screen : np.ndarray [shape=(R,)]
        :func:`screen_scores`.
    ratio : np.ndarray [shape=(R,)]
        The rerank's order key (:func:`msdmatch.kernels.hub.corrected_ratio` of
        the DHS ratios), in the same order.
    pse : np.ndarray [shape=(R,)]
        The PSE distances (any power of the Euclidean distance: the z-score of
        their log does not depend on it), in the same order.

    Returns
    -------
    order : np.ndarray [shape=(R,), dtype=int64]
        Indices, best first; ties keep the DHS order.
    combined : np.ndarray [shape=(R,), dtype=float64]
        ``z(screen) + z(ratio) + z(log(pse + 1e-6))`` over the R candidates
        (lower is better).
    """
    screen, ratio, pse = np.asarray(screen), np.asarray(ratio), np.asarray(pse, dtype=np.float64)
    if not screen.shape == ratio.shape == pse.shape or screen.ndim != 1:
        raise ParameterError(f"screen, ratio and pse must be 1-D of one length, got {screen.shape}, "
                             f"{ratio.shape} and {pse.shape}")
    with np.errstate(invalid="ignore"):
        lp = np.log(np.maximum(pse, 0.0) + 1e-6)
    combined = _z(screen) + _z(ratio) + _z(lp)
    return np.argsort(combined, kind="stable"), combined
