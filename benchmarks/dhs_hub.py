"""The DHS rerank's hub correction, measured with every preview reranked.

The rerank orders a query's candidates by the DHS ratio (Hamming-DTW score over
the mean of the Hamming matrix, :func:`msdmatch.kernels.fusion.dhs_ratio`)
less the preview's hub term, ``weight * L(p)``, where ``L(p)`` is the mean of
the preview's ``k`` lowest ratios against the DHS model's reference queries
(:mod:`msdmatch.kernels.hub`; ``embed`` writes ``hub/<model>``).  This script
scores every query of a dev corpus against every preview with the product's
rerank (:func:`msdmatch.stages.match.rerank.shard_rerank`) and prints the share
of queries whose true preview ranks within 1, 3, 10 and 1% of the database by
the ratio alone and by the corrected ratio, at the model's weight and at
``--g`` multiples of it.

    python benchmarks/dhs_hub.py --corpus DEV --db DEV/db.zarr --queries DEV/q-synth.zarr \\
        --distractors DIS/db.zarr=DIS

Every store must be embedded by the shipped models (``msdmatch embed``).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from pse_recall import distractors, truth_for, works


def dhs_arrays(store, model: str) -> dict:
    """A store's DHS words as the rerank's shard dict (every item one shard)."""
    from msdmatch.kernels.dtw import bit_frequencies
    from msdmatch.stages.match.plan import DbShard

    off = np.asarray(store.group[f"dhs/{model}/offsets"][:], np.int64)
    words = np.asarray(store.group[f"dhs/{model}/words"][:], np.uint32)
    return {"shard": DbShard(0, 0, store.n), "words": words, "offsets": off, "ok": np.diff(off) > 0,
            "bits": bit_frequencies(words, off)}


def ratios(parts: list[tuple[dict, np.ndarray]], qwords: list[np.ndarray]) -> np.ndarray:
    """DHS ratio of each query against the kept rows of every part, ``(n_queries, n_db)``."""
    from msdmatch.kernels.fusion import dhs_ratio
    from msdmatch.stages.match.rerank import shard_rerank

    out = []
    for data, keep in parts:
        scored = shard_rerank(data, qwords, [keep] * len(qwords))
        out.append(np.stack([dhs_ratio(s, m) for s, m in scored]))
    return np.concatenate(out, axis=1)


def main() -> None:
    from msdmatch.io.modelfile import load_model
    from msdmatch.io.store import Store
    from msdmatch.kernels.hub import corrected_ratio

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, type=Path)
    ap.add_argument("--db", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--distractors", action="append", default=[], metavar="STORE=CORPUS")
    ap.add_argument("--g", type=float, nargs="+", default=[0.0, 1.0],
                    help="multiples of the model's weight (0: the ratio alone)")
    a = ap.parse_args()
    Q = Store(a.queries)
    model = f"dhs-{Q.modality}"
    info = load_model(model)
    if info.hub is None:
        raise SystemExit(f"{model} has no hub reference")
    truth = truth_for(a.corpus, {"valid", "test"}, generated=True)
    own = works(a.corpus)
    query_works = {own[t] for ts in truth.values() for t in ts if own.get(t)}
    D = Store(a.db)
    parts = [(dhs_arrays(D, model), np.arange(D.n))]
    hubs = [np.asarray(D.group[f"hub/{model}"][:], np.float64)]
    db_ids = list(D.ids)
    for spec in a.distractors:
        url, corpus = spec.split("=", 1)
        X = Store(url)
        keep = np.array(distractors(list(X.ids), Path(corpus), query_works, set(db_ids)), dtype=np.int64)
        parts.append((dhs_arrays(X, model), keep))
        hubs.append(np.asarray(X.group[f"hub/{model}"][:], np.float64)[keep])
        db_ids += [X.ids[i] for i in keep]
    col = {t: j for j, t in enumerate(db_ids)}
    qo = np.asarray(Q.group[f"dhs/{model}/offsets"][:], np.int64)
    qw = np.asarray(Q.group[f"dhs/{model}/words"][:], np.uint32)
    rows = [i for i, q in enumerate(Q.ids) if q in truth and any(t in col for t in truth[q])]
    R_q = ratios(parts, [qw[qo[i] : qo[i + 1]] for i in rows])
    L = np.concatenate(hubs)
    true = [[col[t] for t in truth[Q.ids[i]] if t in col] for i in rows]
    one_pct = max(1, math.ceil(0.01 * len(db_ids)))
    w = float(info.hub["weight"])
    print(f"{len(rows)} queries, {len(db_ids)} previews, {model}: k = {info.hub['k']}, weight = {w}, "
          f"{info.hub['n_reference']} reference queries")
    for g in a.g:
        S = corrected_ratio(R_q, g * w * L[None])
        rank = np.array([int((S[n] < S[n, t].min()).sum()) for n, t in enumerate(true)])
        print(f"weight {g * w:<5} @1 {np.mean(rank < 1):.3f}  @3 {np.mean(rank < 3):.3f}  @10 {np.mean(rank < 10):.3f}  "
              f"@1% ({one_pct}) {np.mean(rank < one_pct):.3f}")


if __name__ == "__main__":
    main()
