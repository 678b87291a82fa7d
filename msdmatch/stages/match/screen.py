"""Screen: a coarse cosine DTW of each query's reranked top R, shard by shard, then the reorder.

The kernel is :func:`msdmatch.kernels.screen.screen_scores`; the order that
verify sees comes from :func:`msdmatch.kernels.screen.screen_order`.
"""
from __future__ import annotations

import time

import numpy as np

from msdmatch.stages.match.shard import in_shard, owners, per_query


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
        :func:`msdmatch.kernels.screen.screen_scores` per query.
    """
    return [_screen_one(data, qf, c) for qf, c in zip(qframes, cands)]


def _screen_one(data: dict, qf: np.ndarray, c: np.ndarray) -> np.ndarray:
    from msdmatch.kernels.screen import screen_scores

    s0, off, F = data["shard"].start, data["screen_offsets"], data["screen"]
    return screen_scores(qf, [F[off[j - s0] : off[j - s0 + 1]] for j in c])


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
    items = [(data, qb["frames"][q], top[q][in_shard(data, top[q])]) for q in range(len(top))]
    scores, failed = per_query(_screen_one, items, qb["failed"])
    return {"scores": scores, "failed": failed, "cpu": time.thread_time() - t}


def top_rows(ranked: dict, *, R: int) -> np.ndarray:
    """Global DB rows of each query's reranked top R, np.ndarray [shape=(n, R), int64]."""
    pidx, order = ranked["pidx"], ranked["order"]
    return pidx[np.arange(len(pidx))[:, None], order[:, :R]]


def screen_select(ranked: dict, parts: list[dict], *, shards, R: int) -> dict:
    """Gather the shards' screen scores and reorder each query's top R by the screen.

    Returns
    -------
    ranked : dict
        ``ranked`` with ``order[:, :R]`` reordered by
        :func:`msdmatch.kernels.screen.screen_order`, ``sscore`` [shape=(n, R)] in
        that order, ``failed`` and ``cpu['screen']`` updated.
    """
    from msdmatch.kernels.screen import screen_order

    t = time.thread_time()
    order, ratio, pdist = ranked["order"].copy(), ranked["key"], ranked["pdist"]
    top = top_rows(ranked, R=R)
    n = len(top)
    towner = owners(shards, top)
    failed = dict(ranked["failed"])
    sscore = np.full((n, R), np.inf)
    for sid, part in enumerate(parts):
        failed.update({q: f"screen: {r}" for q, r in part["failed"].items() if q not in failed})
        for q, s in enumerate(part["scores"]):
            if s is not None:
                sscore[q, towner[q] == sid] = s
    for q in range(n):
        so, _ = screen_order(sscore[q], ratio[q, order[q, :R]], pdist[q, order[q, :R]])
        sscore[q] = sscore[q, so]
        order[q, :R] = order[q, so]
    cpu = dict(ranked["cpu"], screen=sum(p["cpu"] for p in parts) + time.thread_time() - t)
    return {**ranked, "order": order, "sscore": sscore, "failed": failed, "cpu": cpu}

