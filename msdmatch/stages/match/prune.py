"""Prune: the PSE top-K of a query batch on each shard, merged by tree reduction.

Distances include each preview's hub penalty (:mod:`msdmatch.kernels.hub`);
the rerank hands on the plain PSE distance.

The kernel is :func:`msdmatch.kernels.prune.topk_sq_euclidean`; see
:mod:`msdmatch.stages.match.shard` for the shards' conventions.
"""
from __future__ import annotations

import time

import numpy as np


def shard_topk(data: dict, queries: np.ndarray, *, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Top-k of every query within one shard (global indices via the returned offset)."""
    from msdmatch.kernels.hub import pad_queries
    from msdmatch.kernels.prune import topk_sq_euclidean

    E = data["E"]
    d, i = topk_sq_euclidean(pad_queries(queries, E.shape[1]), E, k=k, db_sq_norms=data["norms"])
    return d, i, data["shard"].start


def merge(*parts, k: int):
    """Merge shard or partial top-ks (one tree-reduction node)."""
    from msdmatch.kernels.prune import merge_topk

    return merge_topk(list(parts), k=k)


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

