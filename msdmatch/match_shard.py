"""Work on one database shard: load it, and prune, rerank and screen a query batch against it.

Conventions
-----------
- A loaded shard (:func:`load_shard`) is a dict of its rows' PSE
  embeddings ``E`` (n, 128) float32, packed DHS words with local
  ``offsets``, bit frequencies and int8 screen frames; failed items get
  embeddings far from everything (1e6) and ``ok`` False.
- Candidate indices are global database rows (int64).  A shard works only
  on the candidates inside ``start:stop``.
- The ``*_batch`` functions take a query batch (:func:`msdmatch.match_batch.load_queries`)
  and return a dict with the results and ``cpu`` (thread CPU-seconds spent);
  a query whose kernel raises is reported in ``failed`` (local query index ->
  reason) instead of failing the batch.
"""
from __future__ import annotations

import time

import numpy as np

from .match_plan import DbShard

#: DESIGN.md matching constants.
DHS_PENALTY = 15
DHS_GULLY = 0.9


def load_shard(shard: DbShard, *, url: str, pse: str, dhs: str, storage_options: dict | None = None) -> dict:
    """Load one database shard's embeddings, hash sequences, bit frequencies and screen frames."""
    from .dtw import bit_frequencies
    from .store import open_group

    g = open_group(url, storage_options=storage_options)
    E = np.asarray(g[f"pse/{pse}"][shard.start : shard.stop], dtype=np.float32)
    off = np.asarray(g[f"dhs/{dhs}/offsets"][shard.start : shard.stop + 1], dtype=np.int64)
    words = np.asarray(g[f"dhs/{dhs}/words"][off[0] : off[-1]], dtype=np.uint32)
    ok = np.all(np.isfinite(E), axis=1) & (np.diff(off) > 0)
    E[~ok] = 1e6  # failed items: far from everything
    soff = np.asarray(g["screen/offsets"][shard.start : shard.stop + 1], dtype=np.int64)
    return {"shard": shard, "E": E, "norms": np.einsum("ij,ij->i", E, E), "words": words,
            "offsets": off - off[0], "ok": ok, "bits": bit_frequencies(words, off - off[0]),
            "screen": np.asarray(g["screen/frames"][soff[0] : soff[-1]], dtype=np.int8),
            "screen_offsets": soff - soff[0]}


def shard_topk(data: dict, queries: np.ndarray, *, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Top-k of every query within one shard (global indices via the returned offset)."""
    from .prune import topk_sq_euclidean

    d, i = topk_sq_euclidean(queries, data["E"], k=k, db_sq_norms=data["norms"])
    return d, i, data["shard"].start


def merge(*parts, k: int):
    """Merge shard or partial top-ks (one tree-reduction node)."""
    from .prune import merge_topk

    return merge_topk(list(parts), k=k)


def shard_rerank(data: dict, qwords: list[np.ndarray],
                 cands: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Hamming-DTW of each query against its candidates that live in this shard.

    Parameters
    ----------
    qwords : list of np.ndarray [shape=(M_q,), uint32]
    cands : list of np.ndarray [shape=(c_q,), int64]
        Global database rows, all inside this shard.

    Returns
    -------
    scores : list of (np.ndarray [shape=(c_q,)], np.ndarray [shape=(c_q,)])
        Per query, the Hamming-DTW scores and the means of the Hamming distance
        matrices (:func:`msdmatch.dtw.hamming_matrix_mean`), float64.
    """
    return [_rerank_one(data, qw, c) for qw, c in zip(qwords, cands)]


def _rerank_one(data: dict, qw: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from .dtw import bit_frequencies, hamming_dtw_many, hamming_matrix_mean

    s0, off, words = data["shard"].start, data["offsets"], data["words"]
    if len(c) == 0 or len(qw) == 0:
        return np.full(len(c), np.inf), np.full(len(c), np.nan)
    local = c - s0
    ok = data["ok"][local]
    lens = off[local + 1] - off[local]
    sub_off = np.concatenate([[0], np.cumsum(np.where(ok, lens, 0))]).astype(np.int64)
    sub = np.concatenate([words[off[j] : off[j + 1]] for j in local[ok]]) if ok.any() else np.zeros(0, np.uint32)
    scores = np.full(len(c), np.inf)
    if ok.any():
        keep_off = np.concatenate([[0], sub_off[1:][ok]])
        scores[ok] = hamming_dtw_many(qw, sub, keep_off, penalty=DHS_PENALTY, gully=DHS_GULLY)
    qfreq = bit_frequencies(qw, np.array([0, len(qw)]))[0]
    return scores, hamming_matrix_mean(qfreq, data["bits"][local])


def shard_screen(data: dict, qframes: list[np.ndarray], cands: list[np.ndarray]) -> list[np.ndarray]:
    """Screen DTW scores of each query against its candidates that live in this shard.

    Parameters
    ----------
    qframes : list of np.ndarray [shape=(m_q, n_bins), int8]
        The queries' screen frames.
    cands : list of np.ndarray [shape=(c_q,), int64]
        Global database rows, all inside this shard.

    Returns
    -------
    scores : list of np.ndarray [shape=(c_q,), float64]
        :func:`msdmatch.screen.screen_scores` per query.
    """
    return [_screen_one(data, qf, c) for qf, c in zip(qframes, cands)]


def _screen_one(data: dict, qf: np.ndarray, c: np.ndarray) -> np.ndarray:
    from .screen import screen_scores

    s0, off, F = data["shard"].start, data["screen_offsets"], data["screen"]
    return screen_scores(qf, [F[off[j - s0] : off[j - s0 + 1]] for j in c])


# ------------------------------------------------------------------ one query batch


def _in_shard(data: dict, rows: np.ndarray) -> np.ndarray:
    s = data["shard"]
    return (rows >= s.start) & (rows < s.stop)


def _per_query(fn, items, skip) -> tuple[list, dict[int, str]]:
    """``fn(*item)`` per query; a query that raises is recorded, not fatal."""
    from .cluster import one_line

    out: list = []
    failed: dict[int, str] = {}
    for q, item in enumerate(items):
        if q in skip:
            out.append(None)
            continue
        try:
            out.append(fn(*item))
        except Exception as e:  # noqa: BLE001 - one query's error must not fail its batch
            out.append(None)
            failed[q] = one_line(e)
    return out, failed


def shard_prune_batch(data: dict, qb: dict, *, k: int) -> dict:
    """PSE top-k of a query batch within this shard: ``{'d', 'i', 'offset', 'cpu'}``."""
    t = time.thread_time()
    d, i, off = shard_topk(data, qb["E"], k=k)
    return {"d": d, "i": i, "offset": off, "cpu": time.thread_time() - t}


def merge_batch(*parts: dict, k: int) -> dict:
    """Merge shard top-ks of one batch (a tree node): ``{'d', 'i', 'offset': 0, 'cpu'}``."""
    t = time.thread_time()
    d, i = merge(*[(p["d"], p["i"], p["offset"]) for p in parts], k=k)
    return {"d": d, "i": i, "offset": 0, "cpu": sum(p["cpu"] for p in parts) + time.thread_time() - t}


def shard_rerank_batch(data: dict, qb: dict, pruned: dict) -> dict:
    """Hamming-DTW of each query of a batch against its pruned candidates in this shard.

    Returns
    -------
    result : dict
        ``scores``: per query, ``(dhs_score, dhs_matrix_mean)`` of the
        candidates ``pruned['i'][q][in this shard]`` (None for a failed query);
        ``failed``; ``cpu``.
    """
    t = time.thread_time()
    pidx = pruned["i"]
    items = [(data, qb["words"][q], pidx[q][_in_shard(data, pidx[q])]) for q in range(len(pidx))]
    scores, failed = _per_query(_rerank_one, items, qb["failed"])
    return {"scores": scores, "failed": failed, "cpu": time.thread_time() - t}


def shard_screen_batch(data: dict, qb: dict, top: np.ndarray) -> dict:
    """Screen DTW of each query of a batch against its top-R candidates in this shard.

    Parameters
    ----------
    top : np.ndarray [shape=(n_queries, R), int64]
        Global database rows of each query's reranked top R.

    Returns
    -------
    result : dict
        ``scores``: per query, the screen scores of ``top[q][in this shard]``
        (None for a failed query); ``failed``; ``cpu``.
    """
    t = time.thread_time()
    items = [(data, qb["frames"][q], top[q][_in_shard(data, top[q])]) for q in range(len(top))]
    scores, failed = _per_query(_screen_one, items, qb["failed"])
    return {"scores": scores, "failed": failed, "cpu": time.thread_time() - t}
