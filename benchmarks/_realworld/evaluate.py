"""Figures of the evaluation: the prune recall curve and top-1, from the stores and MATCHES.

A query's PSE rank is ``1 + #{db entries strictly nearer than its true preview}``
by exact Euclidean distance between the stored embeddings (ties count for the
query); it is within a share ``p`` of a database of ``M`` previews when the rank
is at most ``max(1, ceil(p M))``, as ``msdmatch report`` counts its 1%.  A query
that failed (no features, or its preview missing from the database) counts as
a miss at every share.
"""
from __future__ import annotations

import csv
import math

import numpy as np

#: Shares of the database at which the prune recall is reported.
SHARES = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1)


def true_ranks(q: np.ndarray, db: np.ndarray, true_idx: np.ndarray) -> np.ndarray:
    """Rank of each query's true entry by exact Euclidean distance.

    Parameters
    ----------
    q : np.ndarray [shape=(n, d)]
    db : np.ndarray [shape=(m, d)]
    true_idx : np.ndarray [shape=(n,), dtype=int]
        Row of each query's true entry in ``db``.

    Returns
    -------
    rank : np.ndarray [shape=(n,), dtype=float64]
        1-based; entries at a distance equal to the true one's do not count;
        ``inf`` when the query's or the true entry's embedding is not finite.
    """
    q = np.asarray(q, np.float64)
    db = np.asarray(db, np.float64)
    d = (q * q).sum(1)[:, None] - 2.0 * q @ db.T + (db * db).sum(1)[None, :]
    d_true = d[np.arange(len(true_idx)), true_idx]
    return np.where(np.isfinite(d_true), 1.0 + (d < d_true[:, None]).sum(axis=1), np.inf)


def recall_curve(ranks: np.ndarray, *, n_db: int, n_queries: int, shares=SHARES) -> dict[str, float]:
    """Share of ``n_queries`` whose rank is within ``max(1, ceil(p n_db))``, for each share ``p``.

    ``ranks`` holds the ranks of the queries that could be ranked; the other
    queries (up to ``n_queries``) count as misses.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    return {str(p): float(np.sum(ranks <= max(1, math.ceil(p * n_db))) / n_queries) for p in shares}


def read_truth(path: str) -> dict[str, str]:
    """``query_id -> track_id`` from a truth.csv with one row per query."""
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["query_id"]: r["track_id"] for r in csv.DictReader(fh)}


def top1(matches_csv: str, truth: dict[str, str]) -> float:
    """Share of the truth's queries whose rank-1 MATCHES row is their true preview."""
    first: dict[str, str] = {}
    with open(matches_csv, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if int(float(r["rank"])) == 1:
                first[r["query_id"]] = r["track_id"]
    return sum(first.get(q) == t for q, t in truth.items()) / len(truth)


def store_ranks(queries: str, db: str, truth: dict[str, str], *, model: str) -> dict:
    """PSE and mean/std-baseline ranks of the truth's queries that both stores hold.

    Parameters
    ----------
    queries, db : str
        Embedded query and database stores.
    model : str
        The PSE array name under ``pse/`` (e.g. ``pse-midi-synth``).

    Returns
    -------
    out : dict
        ``pse`` and ``baseline`` rank arrays, ``query_ids`` ranked and ``n_db``.
    """
    from msdmatch.io.store import Store, prune_vectors
    from msdmatch.kernels.hub import pad_queries
    from msdmatch.stages.report import meanstd_embedding

    Q, D = Store(queries), Store(db)
    row = {t: i for i, t in enumerate(D.ids)}
    qrows = [(i, row[truth[q]]) for i, q in enumerate(Q.ids) if q in truth and truth[q] in row]
    qi = np.array([a for a, _ in qrows], dtype=np.int64)
    ti = np.array([b for _, b in qrows], dtype=np.int64)
    de = prune_vectors(D.group, model)  # ranked as the prune ranks, hub penalty included
    qe = pad_queries(np.asarray(Q.group[f"pse/{model}"][:], np.float32)[qi], de.shape[1])
    qb = np.stack([meanstd_embedding(Q.sequence(int(i))) for i in qi])
    db_b = np.stack([meanstd_embedding(x) for a in range(0, D.n, 1024)
                     for x in D.sequences(a, min(a + 1024, D.n))])
    return {"pse": true_ranks(qe, de, ti), "baseline": true_ranks(qb, db_b, ti),
            "query_ids": [Q.ids[int(i)] for i in qi], "n_db": D.n}
