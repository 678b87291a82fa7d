"""Rerank: DHS Hamming-DTW of each query against its pruned candidates, shard by shard.

The kernel is :func:`msdmatch.kernels.dtw.hamming_dtw_many`.  Candidates are
ordered by the DHS score over the mean of the Hamming distance matrix
(:func:`msdmatch.kernels.fusion.dhs_ratio`) less the preview's hub term
(:func:`msdmatch.kernels.hub.corrected_ratio`), then by PSE distance.
"""
from __future__ import annotations

import time

import numpy as np

from msdmatch.params import DHS_GULLY, DHS_PENALTY
from msdmatch.stages.match.shard import in_shard, owners, per_query


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
        matrices (:func:`msdmatch.kernels.dtw.hamming_matrix_mean`), float64.
    """
    return [_rerank_one(data, qw, c) for qw, c in zip(qwords, cands)]


def _rerank_one(data: dict, qw: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from msdmatch.kernels.dtw import bit_frequencies, hamming_dtw_many, hamming_matrix_mean

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


def shard_rerank_batch(data: dict, qb: dict, pruned: dict) -> dict:
    """Hamming-DTW of each query of a batch against its pruned candidates in this shard.

    Returns
    -------
    result : dict
        ``scores``: per query, ``(dhs_score, dhs_matrix_mean, hub_penalty,
        dhs_hub)`` of the candidates ``pruned['i'][q][in this shard]`` (None
        for a failed query): the prune's hub penalty and the rerank's hub term;
        ``failed``; ``cpu``.
    """
    t = time.thread_time()
    pidx = pruned["i"]
    items = [(data, qb["words"][q], pidx[q][in_shard(data, pidx[q])]) for q in range(len(pidx))]
    scores, failed = per_query(_rerank_one, items, qb["failed"])
    # each candidate's hub penalty: the square of its last prune coordinate (msdmatch.kernels.hub)
    s0 = data["shard"].start
    scores = [None if s is None else (*s, np.square(data["E"][c - s0, -1].astype(np.float64)), data["dhs_hub"][c - s0])
              for s, (_, _, c) in zip(scores, items)]
    return {"scores": scores, "failed": failed, "cpu": time.thread_time() - t}


def rerank_order(pruned: dict, parts: list[dict], *, shards, failed: dict) -> dict:
    """Gather the shards' rerank scores and order each query's candidates.

    Parameters
    ----------
    pruned : dict
        The batch's merged PSE top-K, ``d`` squared distances and ``i`` global
        rows, np.ndarray [shape=(n, K)].
    parts : list of dict
        :func:`msdmatch.stages.match.rerank.shard_rerank_batch` per shard, in shard order.
    shards : list of DbShard
    failed : dict
        The batch's failed queries so far.

    Returns
    -------
    ranked : dict
        ``pidx``, ``pdist`` [shape=(n, K)] (the PSE distance, without the
        prune's hub penalty); ``dhs_score``, ``dhs_mean``, ``ratio``,
        ``dhs_hub`` (the hub term) and ``key`` (the ratio less its hub term)
        [shape=(n, K), float64]; ``order`` [shape=(n, K), int64]: columns of
        ``pidx`` by (``key``, PSE distance); ``failed``; ``cpu`` (prune and rerank).
    """
    from msdmatch.kernels.fusion import dhs_ratio
    from msdmatch.kernels.hub import corrected_ratio

    t = time.thread_time()
    pdist, pidx = pruned["d"].astype(np.float64), pruned["i"]
    n, K = pidx.shape
    failed = dict(failed)
    owner = owners(shards, pidx)
    dhs_score = np.full(pidx.shape, np.inf)
    dhs_mean = np.full(pidx.shape, np.nan)
    hub = np.zeros(pidx.shape)
    for sid, part in enumerate(parts):
        failed.update({q: f"rerank: {r}" for q, r in part["failed"].items() if q not in failed})
        for q, sm in enumerate(part["scores"]):
            if sm is not None:
                mine = owner[q] == sid
                dhs_score[q, mine], dhs_mean[q, mine], hub[q, mine] = sm[0], sm[1], sm[3]
                pdist[q, mine] -= sm[2]
    ratio = dhs_ratio(dhs_score, dhs_mean)
    key = corrected_ratio(ratio, hub)
    order = (np.stack([np.lexsort((pdist[q], key[q])) for q in range(n)]) if n else np.zeros((0, K), np.int64))
    cpu = {"prune": pruned["cpu"], "rerank": sum(p["cpu"] for p in parts) + time.thread_time() - t}
    return {"pidx": pidx, "pdist": pdist, "dhs_score": dhs_score, "dhs_mean": dhs_mean, "ratio": ratio,
            "dhs_hub": hub, "key": key, "order": order, "failed": failed, "cpu": cpu}

