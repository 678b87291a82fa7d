"""Benchmark the PSE prune (exact Euclidean top-K) on one core, with faiss as the peer.

Times the product's own code path as ``msdmatch match`` runs it: the database
split into shards (``--shards``, match's default on a one-thread worker is 2),
:func:`msdmatch.kernels.prune.topk_sq_euclidean` on each shard with its precomputed
norms, then :func:`msdmatch.kernels.prune.merge_topk`; float32 embeddings as match
loads them, and a float16 database beside.  Peers, on the same arrays with the
same K (:func:`default_k`): faiss's exact ``IndexFlatL2`` on one thread
(``faiss.omp_set_num_threads(1)``; ``faiss-cpu`` is in the ``dev`` extra, a
benchmark peer only) and the naive baseline (one full distance matrix per
block of queries, then ``np.argpartition`` + sort).  Prints milliseconds per
query for synthetic 128-D tanh-like embeddings with the hub coordinate
appended (129-D, as match loads them, :mod:`msdmatch.kernels.hub`), the ratios (peer / ours: > 1
means msdmatch is faster), whether faiss returned the same neighbours, and the
issue-22 check: the batched prune costs <= 10 ms per query at 1M entries.
Each timing is the best of ``--repeats`` runs of the process's CPU time (every
library is held to one thread, so it is the cost on one core; wall time on a
shared, oversubscribed host measures the other tenants too).

Usage: ``python benchmarks/prune.py [--sizes 10000 100000 1000000] [--batches 1 64 256 512]``
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from _timing import best  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from msdmatch.kernels.hub import hub_column, pad_queries, with_hub  # noqa: E402
from msdmatch.kernels.prune import default_k, merge_topk, topk_sq_euclidean  # noqa: E402
from msdmatch.params import HUB_WEIGHT, MATCH  # noqa: E402

#: Issue 22: the batched prune's budget per query at 1M entries, one core.
BUDGET_MS = 10.0


def naive(queries: np.ndarray, db: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Full distance rows (GEMM expansion), argpartition, then sort the K."""
    nrm = np.einsum("ij,ij->i", db, db)
    out_d = np.empty((queries.shape[0], k), np.float32)
    out_i = np.empty((queries.shape[0], k), np.int64)
    step = 64
    for s in range(0, queries.shape[0], step):
        q = queries[s : s + step]
        d = nrm[None, :] - 2.0 * (q @ db.T)
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        pd = np.take_along_axis(d, part, 1)
        o = np.argsort(pd, axis=1)
        out_d[s : s + step] = np.take_along_axis(pd, o, 1)
        out_i[s : s + step] = np.take_along_axis(part, o, 1)
    return out_d, out_i


def embeddings(rng: np.random.Generator, n: int) -> np.ndarray:
    """Clustered tanh outputs, like PSE embeddings."""
    centres = rng.standard_normal((64, 128))
    x = centres[rng.integers(0, 64, n)] + 0.8 * rng.standard_normal((n, 128))
    return np.tanh(x).astype(np.float32)


def prune_arrays(rng: np.random.Generator, n: int, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """Database and query vectors as match holds them: a hub coordinate appended (129-D)."""
    db = with_hub(embeddings(rng, n), hub_column(rng.uniform(-0.2, 0.9, n), HUB_WEIGHT))
    return db, pad_queries(embeddings(rng, n_queries), db.shape[1])


def shards_of(db: np.ndarray, n_shards: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(embeddings, squared norms, first row) per shard, as match's shards hold them."""
    bounds = np.linspace(0, db.shape[0], n_shards + 1).astype(int)
    return [(db[a:b], np.einsum("ij,ij->i", db[a:b], db[a:b], dtype=np.float32), int(a))
            for a, b in zip(bounds[:-1], bounds[1:])]


def prune(queries: np.ndarray, shards, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The match path: top-K per shard with its norms, then the merge (global indices)."""
    parts = []
    for e, nrm, start in shards:
        d, i = topk_sq_euclidean(queries, e, k=k, db_sq_norms=nrm)
        parts.append((d, i, start))
    return merge_topk(parts, k=k)


def cpu_time(fn, repeats: int) -> float:
    """Best CPU seconds of ``repeats`` runs (one thread: the cost on one core)."""
    return best(fn, repeats)[0]


def same_neighbours(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of each query's K indices that both results hold (ties may be ordered apart)."""
    return float(np.mean([np.intersect1d(x, y).size / x.size for x, y in zip(a, b)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, MATCH.batch_size, 512])
    ap.add_argument("--shards", type=int, default=2, help="db shards, merged as match merges them")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    try:
        import faiss
    except ImportError:
        raise SystemExit("faiss is not installed: pip install -e '.[dev]' (faiss-cpu is a benchmark peer)") from None
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    verdict = []
    with threadpool_limits(limits=1):
        warm, wq = prune_arrays(rng, 5000, 8)
        prune(wq, shards_of(warm, 2), 100)
        topk_sq_euclidean(wq, warm.astype(np.float16), k=100)
        print(f"{'n_db':>9} {'batch':>5} {'k':>6} {'msdmatch':>9} {'f16':>8} {'faiss':>8} {'naive':>8} "
              f"{'faiss/ours':>10} {'naive/ours':>10} {'same as faiss':>13}   (CPU ms/query, one thread)")
        for n in args.sizes:
            db, _ = prune_arrays(rng, n, 0)
            sh, sh16 = shards_of(db, args.shards), shards_of(db.astype(np.float16), args.shards)
            index = faiss.IndexFlatL2(db.shape[1])
            index.add(db)
            k = default_k(n)
            for b in args.batches:
                q = pad_queries(embeddings(rng, b), db.shape[1])
                reps = args.repeats if n * b <= 64_000_000 else 2
                t32 = cpu_time(lambda q=q, sh=sh, k=k: prune(q, sh, k), reps) / b * 1e3
                t16 = cpu_time(lambda q=q, sh16=sh16, k=k: prune(q, sh16, k), reps) / b * 1e3
                tf = cpu_time(lambda q=q, k=k, ix=index: ix.search(q, k), reps) / b * 1e3
                tn = cpu_time(lambda q=q, db=db, k=k: naive(q, db, k), reps) / b * 1e3
                agree = same_neighbours(prune(q, sh, k)[1], index.search(q, k)[1])
                print(f"{n:>9} {b:>5} {k:>6} {t32:>9.3f} {t16:>8.3f} {tf:>8.3f} {tn:>8.3f} "
                      f"{tf / t32:>10.2f} {tn / t32:>10.2f} {agree:>13.4f}", flush=True)
                if n >= 1_000_000 and b > 1:
                    verdict.append((b, t32))
            print(f"# memory per 1M entries: float32 {db.shape[1] * 4} MB, float16 {db.shape[1] * 2} MB "
                  f"(+4 MB float32 norms); this db: {db.nbytes / 2**20:.0f} MiB f32")
    for b, t in verdict:
        ok = "PASS" if t <= BUDGET_MS else "FAIL"
        what = " (match's --batch-size)" if b == MATCH.batch_size else ""
        print(f"{ok}: batched prune at 1M entries, batch {b}{what}: {t:.2f} ms per query "
              f"(budget {BUDGET_MS:.0f} ms)")


if __name__ == "__main__":
    main()
