"""One query batch through the cascade: the steps between the shards' work, and its MATCHES rows.

Conventions
-----------
- A query batch (:func:`load_queries`) holds store rows ``start:stop`` of the
  query store: PSE embeddings ``E`` (n, 128) float32 (zeros for a failed
  query), hash words and screen frames per query, ids, and ``failed``
  (local query index -> reason) for queries that cannot be matched: no
  finite PSE embedding, or an empty hash sequence.
- Every function here except :func:`load_queries` is pure: numpy in,
  numpy/dicts out.  Results carry ``cpu`` (thread CPU-seconds) so the job
  can report each stage's cost.
- Rows (:func:`assemble`) follow :mod:`msdmatch.stages.match.job`: per query the V
  verified (ranked by the fused confidence), then ranks V+1..R (by the
  screen's combined score), then with ``keep='all'`` the rest of the K
  pruned (by PSE distance).  Each row carries ``thesis_confidence`` =
  clip(2(1 - verify_score), 0, 1) (NaN when not verified); each query's top
  row carries ``matched`` = confidence >= threshold (False on the others);
  the verified row with the best ``verify_score`` carries ``query_start``,
  ``query_end`` (NaN on the others).
"""
from __future__ import annotations

import time

import numpy as np

from msdmatch.stages.match.verify import VERIFY_COLUMNS

#: Columns a batch's rows have, in order (MATCH_COLUMNS, OPTIONAL_COLUMNS, then these).
DECISION_COLUMNS = ("thesis_confidence", "matched", "query_start", "query_end")
#: Columns of the failures table.
FAILURE_COLUMNS = ("query_id", "stage", "reason")


def load_queries(batch, *, url: str, pse: str, dhs: str, storage_options: dict | None = None) -> dict:
    """Read one query batch from the query store (the only reads of query arrays by the job).

    Returns
    -------
    qb : dict
        ``batch``; ``ids`` list of str; ``E`` np.ndarray [shape=(n, d), float32];
        ``words`` list of np.ndarray uint32; ``frames`` list of np.ndarray int8;
        ``failed`` dict (local index -> reason).
    """
    from msdmatch.io.store import open_group

    g = open_group(url, storage_options=storage_options)
    a, b = batch.start, batch.stop
    E = np.asarray(g[f"pse/{pse}"][a:b], dtype=np.float32)
    ok = np.all(np.isfinite(E), axis=1)
    E[~ok] = 0.0
    off = np.asarray(g[f"dhs/{dhs}/offsets"][a : b + 1], np.int64)
    words = np.asarray(g[f"dhs/{dhs}/words"][off[0] : off[-1]], np.uint32)
    soff = np.asarray(g["screen/offsets"][a : b + 1], np.int64)
    frames = np.asarray(g["screen/frames"][soff[0] : soff[-1]], np.int8)
    failed: dict[int, str] = {}
    for q in range(b - a):
        if not ok[q]:
            failed[q] = "embed: no finite PSE embedding (the query failed in `msdmatch embed`)"
        elif off[q + 1] == off[q]:
            failed[q] = "embed: empty hash sequence (too short for the DHS model)"
    return {"batch": batch, "ids": [str(s) for s in g["ids"][a:b]], "E": E,
            "words": [words[x - off[0] : y - off[0]] for x, y in zip(off[:-1], off[1:])],
            "frames": [frames[x - soff[0] : y - soff[0]] for x, y in zip(soff[:-1], soff[1:])],
            "failed": failed}


def verify_jobs(ranked: dict, *, start: int, V: int, chunks: int) -> list[list[tuple[int, int, list[int]]]]:
    """The verify work of a batch in ``chunks`` lists of (local query, query row, [db rows])."""
    pidx, order = ranked["pidx"], ranked["order"]
    jobs = [(q, start + q, [int(pidx[q, j]) for j in order[q, :V]])
            for q in range(len(pidx)) if q not in ranked["failed"]]
    nb = max(1, min(len(jobs), chunks))
    return [jobs[i::nb] for i in range(nb)]


def assemble(ranked: dict, verified: list[dict], *, ids: list[str], db_ids, R: int, V: int, keep: str,
             fusion_model, threshold: float) -> tuple[dict, dict, dict]:
    """The MATCHES rows and failures of one batch.

    Parameters
    ----------
    ranked : dict
        :func:`screen_select`'s result.
    verified : list of dict
        :func:`msdmatch.stages.match.verify.verify_chunk` results.
    ids : list of str
        The batch's query ids.
    db_ids : sequence of str
        Database ids, indexable by global row.
    fusion_model : FusionModel or None
        None: ``confidence`` is the thesis's DTW confidence.
    threshold : float
        ``matched`` = top row's confidence >= threshold.

    Returns
    -------
    table : dict of str to np.ndarray [shape=(n_rows,)]
    failures : dict of str to np.ndarray [shape=(n_failed,)]
        ``query_id, stage, reason``.
    cpu : dict
        Thread CPU-seconds per stage (``prune``, ``rerank``, ``screen``,
        ``verify``, ``span``, ``assemble``).
    """
    from msdmatch.evaluation.metrics import MATCH_COLUMNS, OPTIONAL_COLUMNS
    from msdmatch.kernels.dtw import dtw_confidence

    t = time.thread_time()
    failed = dict(ranked["failed"])
    vscore_of: dict[int, np.ndarray] = {}
    span_of: dict[int, dict[int, tuple[float, float]]] = {}
    for v in verified:
        vscore_of.update(v["scores"])
        span_of.update(v["spans"])
        failed.update({q: r for q, r in v["failed"].items() if q not in failed})
    pidx, pdist, order = ranked["pidx"], ranked["pdist"], ranked["order"]
    dhs_score, dhs_mean, dhs_hub, sscore = ranked["dhs_score"], ranked["dhs_mean"], ranked["dhs_hub"], ranked["sscore"]
    cols: dict[str, list] = {c: [] for c in MATCH_COLUMNS + OPTIONAL_COLUMNS + DECISION_COLUMNS}
    unverified = np.full(len(VERIFY_COLUMNS), np.nan)
    for q in range(len(pidx)):
        if q in failed:
            continue
        o = order[q]
        vs = np.full((V, len(VERIFY_COLUMNS)), np.inf)
        got = vscore_of.get(q, vs)
        vs[: len(got)] = got
        pse_d = np.sqrt(np.maximum(pdist[q], 0.0))
        if fusion_model is not None:
            from msdmatch.kernels.fusion import features_for, predict_proba

            conf = predict_proba(fusion_model, features_for(
                {"dhs_score": dhs_score[q, o[:V]], "pse_distance": pse_d[o[:V]],
                 "dhs_matrix_mean": dhs_mean[q, o[:V]], "dhs_hub": dhs_hub[q, o[:V]], **dict(zip(VERIFY_COLUMNS, vs.T, strict=True))}))
        else:
            conf = dtw_confidence(vs[:, 0])
        vorder = np.lexsort((vs[:, 0], -conf))
        spans = span_of.get(q, {})
        rows = [(o[j], conf[j], vs[j], sscore[q, j], "verify", spans.get(int(j))) for j in vorder]
        rows += [(o[j], np.nan, unverified, sscore[q, j], "rerank", None) for j in range(V, R)]
        if keep == "all":
            rest = np.sort(o[R:])  # pidx is sorted by pse distance already
            rows += [(j, np.nan, unverified, np.nan, "prune", None) for j in rest]
        for rank, (j, c, v, sc, st, span) in enumerate(rows, start=1):
            cols["query_id"].append(ids[q])
            cols["rank"].append(rank)
            cols["track_id"].append(db_ids[int(pidx[q, j])])
            cols["confidence"].append(float(c))
            cols["dhs_score"].append(float(dhs_score[q, j]))
            cols["pse_distance"].append(float(pse_d[j]))
            cols["dhs_matrix_mean"].append(float(dhs_mean[q, j]))
            cols["dhs_hub"].append(float(dhs_hub[q, j]))
            for name, x in zip(VERIFY_COLUMNS, v, strict=True):
                cols[name].append(float(x))
            cols["screen_score"].append(float(sc))
            cols["stage"].append(st)
            cols["thesis_confidence"].append(float(dtw_confidence(v[0])) if st == "verify" else np.nan)
            cols["matched"].append(bool(rank == 1 and c >= threshold))
            cols["query_start"].append(span[0] if span else np.nan)
            cols["query_end"].append(span[1] if span else np.nan)
    table = {k: np.asarray(v, dtype=_DTYPES.get(k)) for k, v in cols.items()}
    bad = sorted(failed)
    failures = {"query_id": np.asarray([ids[q] for q in bad], dtype=str),
                "stage": np.asarray([failed[q].split(":", 1)[0] for q in bad], dtype=str),
                "reason": np.asarray([failed[q].split(":", 1)[-1].strip() for q in bad], dtype=str)}
    cpu = dict(ranked["cpu"], verify=sum(v["cpu"] for v in verified),
               span=sum(v["span_cpu"] for v in verified), assemble=time.thread_time() - t)
    return table, failures, cpu


_DTYPES = {"query_id": str, "track_id": str, "stage": str, "rank": np.int64, "matched": bool,
           **{c: np.float64 for c in ("confidence", "verify_score", "dhs_score", "pse_distance",
                                     "dhs_matrix_mean", "dhs_hub", "verify_std_score", "verify_dhs_score",
                                     "verify_high_score", "screen_score", "thesis_confidence",
                                     "query_start", "query_end")}}
