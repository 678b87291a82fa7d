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
"""
from __future__ import annotations

import numpy as np

from msdmatch.errors import ParameterError

__all__ = ["hub_scores", "hub_column", "with_hub", "pad_queries"]


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
