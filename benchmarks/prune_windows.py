"""Cost of windowed PSE queries: the batched prune with several vectors per query, one core.

Times :func:`msdmatch.kernels.prune.topk_multi` (``W`` vectors per query, exact top-K
by the minimum distance over a query's vectors) against the one-vector prune
(:func:`msdmatch.kernels.prune.topk_sq_euclidean`, ``W = 1``) on the same synthetic
1M-entry database (``benchmarks/prune.py``'s clustered tanh embeddings), K =
:func:`default_k`, queries in batches.  Prints milliseconds per query, the
ratio to ``W = 1`` and the issue-22 check (<= 10 ms per query at 1M).  Each
timing is the best CPU time of ``--repeats`` runs (one thread, so one core's
cost; the wall time beside it), since the machine is shared.

Usage: ``python benchmarks/prune_windows.py [--size 1000000] [--batch 512] [--windows 1 2 4 8]``
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
from prune import BUDGET_MS, embeddings  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from msdmatch.kernels.prune import default_k, topk_multi, topk_sq_euclidean  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=512, help="queries per batch")
    ap.add_argument("--windows", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    db = embeddings(rng, a.size)
    nrm = np.einsum("ij,ij->i", db, db, dtype=np.float32)
    k = default_k(a.size)
    base = None
    print(f"db {a.size} x 128 float32, K={k}, batch {a.batch} queries, one core")
    with threadpool_limits(1):
        for w in a.windows:
            q = embeddings(rng, a.batch * w)
            off = np.arange(0, a.batch * w + 1, w)
            if w == 1:
                fn = lambda q=q: topk_sq_euclidean(q, db, k=k, db_sq_norms=nrm)  # noqa: E731
            else:
                fn = lambda q=q, off=off: topk_multi(q, off, db, k=k, db_sq_norms=nrm)  # noqa: E731
            fn()  # compile
            cpu, wall, _ = best(fn, repeats=a.repeats)
            ms = 1e3 * cpu / a.batch
            base = base or ms
            ok = "PASS" if ms <= BUDGET_MS else "FAIL"
            print(f"W={w:2d} vectors/query: {ms:7.2f} ms CPU per query ({1e3 * wall / a.batch:.2f} wall; "
                  f"{ms / base:.2f}x W=1)  "
                  f"issue-22 budget {BUDGET_MS:.0f} ms: {ok}")


if __name__ == "__main__":
    main()
