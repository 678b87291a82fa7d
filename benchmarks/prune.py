"""Benchmark the PSE prune (exact Euclidean top-K) on one thread.

Prints milliseconds per query for synthetic 128-D tanh-like embeddings at
several database sizes and query batch sizes, for :func:`topk_sq_euclidean`
(float32 and float16 database) and for the naive baseline (one full distance
matrix per block of queries, then ``np.argpartition`` + sort), with the ratio.
K follows :func:`default_k`.  Each timing is the best of ``--repeats`` runs,
since the machine is shared.  BLAS and numba are limited to one thread.

Usage: ``python benchmarks/prune.py [--sizes 10000 100000 1000000] [--batches 1 64 512]``
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from _timing import best_time  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from msdmatch.prune import default_k, topk_sq_euclidean  # noqa: E402


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, 512])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with threadpool_limits(limits=1):
        warm = embeddings(rng, 5000)
        topk_sq_euclidean(warm[:8], warm, k=100)
        topk_sq_euclidean(warm[:8], warm.astype(np.float16), k=100)
        print(f"{'n_db':>9} {'batch':>5} {'k':>6} {'fused f32':>10} {'fused f16':>10} "
              f"{'naive':>9} {'naive/fused':>11}   (ms/query)")
        for n in args.sizes:
            db = embeddings(rng, n)
            db16 = db.astype(np.float16)
            k = default_k(n)
            for b in args.batches:
                q = embeddings(rng, b)
                reps = args.repeats if n * b <= 64_000_000 else 2
                t32 = best_time(lambda q=q, db=db, k=k: topk_sq_euclidean(q, db, k=k), reps) / b * 1e3
                t16 = best_time(lambda q=q, db16=db16, k=k: topk_sq_euclidean(q, db16, k=k), reps) / b * 1e3
                tn = best_time(lambda q=q, db=db, k=k: naive(q, db, k), reps) / b * 1e3
                print(f"{n:>9} {b:>5} {k:>6} {t32:>10.3f} {t16:>10.3f} {tn:>9.3f} {tn / t32:>11.2f}",
                      flush=True)
            print(f"# memory per 1M entries: float32 {128 * 4} MB, float16 {128 * 2} MB "
                  f"(+4 MB float32 norms); this db: {db.nbytes / 2**20:.0f} MiB f32")


if __name__ == "__main__":
    main()
