"""Hub penalty of the PSE prune: previews that lie near every MIDI file rank lower.

In a shared embedding space some audio vectors are *hubs*: close to many
MIDI vectors at once, they enter the top K of queries they have nothing to do
with (renditions the audio net finds unfamiliar land there).  Cross-domain
similarity local scaling (CSLS; Conneau et al., 2018) corrects for it by
subtracting each item's mean similarity to its nearest neighbours in the other
modality.  msdmatch measures that once per preview against a fixed reference
set, the MIDI vectors of the PSE's own training queries:

    hub(p) = mean of the k largest cosines between p and the reference vectors

and ranks by ``‖q − p‖² + w · hub(p)``.  The query's own term of CSLS is a
constant within a query and drops out of its ranking.

The penalty enters the exact Euclidean prune as one extra coordinate: the
preview gets ``sqrt(w (hub + 1))`` and the query 0, which adds ``w (hub + 1)``
to every squared distance (the constant ``w`` leaves every ranking as it is).

The DHS rerank has the same failure: a preview whose hash sequence aligns
cheaply with many MIDI files climbs every query's order.  Its correction is
measured the same way, with DHS ratios (lower is better) instead of cosines:

    L(p) = mean of the k lowest DHS ratios of the reference queries against p

and the rerank orders by ``ratio - w · L(p)`` (:func:`dhs_hub_scores`,
:func:`corrected_ratio`); the reference is a sample of the DHS model's own
training queries, as hash sequences.
"""
from __future__ import annotations

import numpy as np

from msdmatch.errors import ParameterError

__all__ = ["hub_scores", "hub_column", "with_hub", "pad_queries", "dhs_hub_scores", "corrected_ratio"]


def hub_scores(vectors: np.ndarray, reference: np.ndarray, *, k: int, block: int = 4096) -> np.ndarray:
    """Mean of each vector's ``k`` largest inner products with the reference vectors.

    Parameters
    ----------
    vectors : np.ndarray [shape=(n, d)]
        Unit-length PSE embeddings (audio side); non-finite rows are allowed.
    reference : np.ndarray [shape=(m, d)]
        Unit-length reference embeddings (MIDI side), ``m >= k``.
    k : int > 0
    block : int > 0
        Rows per matrix product (bounds the ``(block, m)`` temporary).

    Returns
    -------
    hub : np.ndarray [shape=(n,), dtype=float32]
        NaN for a row that is not finite.
    """
    V = np.asarray(vectors, np.float32)
    R = np.asarray(reference, np.float32)
    if V.ndim != 2 or R.ndim != 2 or V.shape[1] != R.shape[1]:
        raise ParameterError(f"vectors {V.shape} and reference {R.shape} must be 2-D with the same width")
    if not 1 <= int(k) <= len(R):
        raise ParameterError(f"k must be in 1..{len(R)} (the reference's size), got {k!r}")
    out = np.full(len(V), np.nan, np.float32)
    rows = np.flatnonzero(np.all(np.isfinite(V), axis=1))
    for a in range(0, len(rows), block):
        r = rows[a : a + block]
        S = V[r] @ R.T
        out[r] = np.partition(S, R.shape[0] - k, axis=1)[:, -k:].mean(axis=1)
    return out


def hub_column(hub: np.ndarray, weight: float) -> np.ndarray:
    """The extra preview coordinate that adds ``weight * (hub + 1)`` to squared distances.

    Parameters
    ----------
    hub : np.ndarray [shape=(n,)]
        :func:`hub_scores`; a non-finite score gets no penalty.
    weight : float >= 0

    Returns
    -------
    column : np.ndarray [shape=(n,), dtype=float32]
    """
    if not weight >= 0:
        raise ParameterError(f"weight must be >= 0, got {weight!r}")
    h = np.asarray(hub, np.float64)
    h = np.where(np.isfinite(h), np.clip(h, -1.0, 1.0), -1.0)
    return np.sqrt(weight * (h + 1.0)).astype(np.float32)


def with_hub(vectors: np.ndarray, column: np.ndarray | None) -> np.ndarray:
    """Preview vectors with their hub coordinate appended, ``(n, d + 1)`` float32.

    ``column=None`` (a model without a hub penalty) appends zeros.
    """
    V = np.asarray(vectors, np.float32)
    c = np.zeros(len(V), np.float32) if column is None else np.asarray(column, np.float32)
    return np.concatenate([V, c[:, None]], axis=1)


def pad_queries(queries: np.ndarray, width: int) -> np.ndarray:
    """Query vectors with zero coordinates appended up to ``width`` columns (float32)."""
    Q = np.asarray(queries, np.float32)
    if Q.shape[1] > width:
        raise ParameterError(f"queries have {Q.shape[1]} dims, more than the database's {width}")
    return np.pad(Q, ((0, 0), (0, width - Q.shape[1])))


def dhs_hub_scores(words: np.ndarray, offsets: np.ndarray, reference: list[np.ndarray], *, k: int) -> np.ndarray:
    """Mean of each hash sequence's ``k`` lowest DHS ratios against the reference queries.

    Parameters
    ----------
    words : np.ndarray [shape=(total,), dtype=uint32]
        Packed DHS words of the previews, stored flat.
    offsets : np.ndarray [shape=(n + 1,), integer]
        Preview ``i`` is ``words[offsets[i]:offsets[i+1]]``; it may be empty (a failed item).
    reference : list of np.ndarray [shape=(M_r,), dtype=uint32]
        Non-empty hash sequences of the reference queries, ``len(reference) >= k``.
    k : int > 0

    Returns
    -------
    hub : np.ndarray [shape=(n,), dtype=float32]
        :func:`msdmatch.kernels.fusion.dhs_ratio` of the rerank's Hamming-DTW
        (:func:`msdmatch.kernels.dtw.hamming_dtw_many`), averaged over the
        ``k`` reference queries that align best; NaN for an empty sequence.
    """
    from msdmatch.kernels.dtw import bit_frequencies, hamming_dtw_many, hamming_matrix_mean
    from msdmatch.kernels.fusion import dhs_ratio

    off = np.asarray(offsets, np.int64)
    if not 1 <= int(k) <= len(reference):
        raise ParameterError(f"k must be in 1..{len(reference)} (the reference's size), got {k!r}")
    if any(len(r) == 0 for r in reference):
        raise ParameterError("every reference hash sequence must be non-empty")
    ok = np.diff(off) > 0
    out = np.full(len(off) - 1, np.nan, np.float32)
    if not ok.any():
        return out
    # empty sequences hold no words, so dropping their offsets leaves ``words`` as it is
    sub = np.concatenate([off[:1], off[1:][ok]])
    freqs = bit_frequencies(words, sub)
    R = np.empty((len(reference), int(ok.sum())))
    for i, r in enumerate(reference):
        r = np.asarray(r, np.uint32)
        score = hamming_dtw_many(r, words, sub)
        R[i] = dhs_ratio(score, hamming_matrix_mean(bit_frequencies(r, np.array([0, len(r)]))[0], freqs))
    out[ok] = np.sort(R, axis=0)[: int(k)].mean(axis=0)
    return out


def corrected_ratio(ratio: np.ndarray, term: np.ndarray) -> np.ndarray:
    """The rerank's order key: DHS ratios minus their previews' weighted hub terms.

    Parameters
    ----------
    ratio : np.ndarray [shape=(...)]
        :func:`msdmatch.kernels.fusion.dhs_ratio` (``inf`` for a candidate not reranked).
    term : np.ndarray [shape=(...)]
        ``weight * L(p)`` per candidate (:func:`dhs_hub_scores`); a non-finite
        term (no hub score) corrects nothing.

    Returns
    -------
    key : np.ndarray [shape=(...), dtype=float64]
        Lower is better; may be negative.
    """
    t = np.asarray(term, np.float64)
    return np.asarray(ratio, np.float64) - np.where(np.isfinite(t), t, 0.0)
