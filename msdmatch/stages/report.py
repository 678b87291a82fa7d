"""What the cascade is measured against, on the same queries.

- :func:`meanstd_embedding`: the per-bin mean and standard deviation of a
  sequence's frames (the ICASSP paper's baseline for PSE pruning).
- :func:`brute_force_shard`: the verify DTW of a query against every database
  entry of a shard: the gold standard that pruning and reranking approximate.
- :func:`run_report`: ``msdmatch report`` -- the MATCHES metrics, plus, when
  the stores are given, the PSE-vs-baseline pruning recall and the
  brute-force DTW accuracy and time per query next to the cascade's.
"""
from __future__ import annotations

import time

import numpy as np

from msdmatch.errors import ParameterError


def meanstd_embedding(X: np.ndarray) -> np.ndarray:
    """Mean and standard deviation of each bin.

    Parameters
    ----------
    X : np.ndarray [shape=(n_frames, n_bins)]

    Returns
    -------
    e : np.ndarray [shape=(2 * n_bins,), dtype=float32]
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ParameterError(f"X must have shape (n_frames>0, n_bins), got {X.shape}")
    return np.concatenate([X.mean(axis=0), X.std(axis=0)])


def true_ranks(dist: np.ndarray, true_idx: np.ndarray) -> np.ndarray:
    """1-based rank of each query's true entry by ascending distance (ties count against).

    Parameters
    ----------
    dist : np.ndarray [shape=(n_queries, n_db)]
    true_idx : np.ndarray [shape=(n_queries,)]
    """
    d_true = dist[np.arange(len(true_idx)), true_idx]
    return 1 + (dist < d_true[:, None]).sum(axis=1)


def sq_dists(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances, shape (len(A), len(B))."""
    A = np.asarray(A, np.float64)
    B = np.asarray(B, np.float64)
    return np.maximum((A * A).sum(1)[:, None] - 2 * A @ B.T + (B * B).sum(1)[None], 0.0)


def brute_force_shard(rows: tuple[int, int], *, q_url: str, db_url: str, queries: list[int],
                      storage_options: dict | None = None) -> tuple[np.ndarray, float]:
    """Verify-DTW scores of ``queries`` against database rows ``rows[0]:rows[1]``.

    Returns
    -------
    scores : np.ndarray [shape=(2, len(queries), rows[1] - rows[0])]
        The thesis's cosine DTW on the features as stored (0) and on
        bin-standardised features (1), as the verify step computes them.
    seconds : np.ndarray [shape=(2,)]
        Compute time spent in each DTW.
    """
    from msdmatch.io.store import Store
    from msdmatch.kernels.dtw import cosine_dtw
    from msdmatch.kernels.features import standardize_bins
    from msdmatch.stages.match.verify import VERIFY_GULLY

    Q = Store(q_url, storage_options=storage_options)
    D = Store(db_url, storage_options=storage_options)
    Ys = D.sequences(*rows)
    Xs = [Q.sequence(q) for q in queries]
    out, secs = np.zeros((2, len(Xs), len(Ys))), np.zeros(2)
    for v, prep in enumerate((np.asarray, standardize_bins)):
        Yv = [prep(Y) for Y in Ys]
        for i, X in enumerate(Xs):
            Xv = prep(X)
            t = time.perf_counter()
            out[v, i] = [cosine_dtw(Xv, Y, gully=VERIFY_GULLY, return_path=False) for Y in Yv]
            secs[v] += time.perf_counter() - t
    return out, secs


def run_report(matches_path: str, truth_path: str, *, out_dir: str | None = None,
               queries: str | None = None, db: str | None = None, brute_force: int = 0,
               threshold: float | None = None, client=None, scheduler: str | None = None,
               n_workers: int | None = None, storage_options: dict | None = None, seed: int = 0,
               warn=None) -> dict:
    """Evaluate a MATCHES table and, given the stores, compare with the baselines.

    Parameters
    ----------
    truth_path : str
        ``query_id,track_id``: several rows per query allowed (any counts),
        an empty ``track_id`` = no match exists.
    brute_force : int
        Test queries (drawn with ``seed``) to also match by brute-force DTW
        against the whole database; 0 to skip.
    threshold : float, optional
        Accept a top-1 at this confidence (default: the ``matched`` column,
        else 0.5); see :func:`msdmatch.evaluation.metrics.evaluate`.
    warn : callable, optional
        Called with each warning (truth and MATCHES that do not agree), e.g.
        to print it on stderr; the warnings are also in ``metrics['warnings']``.

    Returns
    -------
    metrics : dict (also written to ``out_dir/metrics.json``, with
        ``rank_cdf.png``, ``distances.png``, ``reliability.png`` (top-1
        confidence per query) and ``roc.png``)
    """
    from msdmatch.evaluation import metrics as report
    from msdmatch.io.outputs import check_out_dir, mark_out_dir

    if out_dir:  # a foreign or unwritable folder is refused before any work
        check_out_dir(out_dir, kind="report")
    matches = report.read_matches(matches_path, storage_options=storage_options)
    truth = report.read_truth(truth_path)
    keep = np.isin(matches["query_id"], truth["query_id"])
    n_extra = len(set(matches["query_id"][~keep].tolist()))
    matches = {k: v[keep] for k, v in matches.items()}
    metrics = report.evaluate(matches, truth, stage_ranks=_stage_ranks(matches, truth), threshold=threshold)
    if n_extra:
        metrics["warnings"].append(f"{n_extra} queries in matches have no truth rows and are ignored")
    for w in metrics["warnings"]:
        if warn is not None:
            warn(w)
    if queries and db:
        from msdmatch.executor import using_client

        with using_client(client, scheduler=scheduler, n_workers=n_workers) as c:
            metrics.update(_compare(matches, truth, metrics, queries=queries, db=db,
                                    brute_force=brute_force, client=c,
                                    storage_options=storage_options, seed=seed))
    if out_dir:
        mark_out_dir(out_dir, kind="report")
        report.write_report(metrics, out_dir)
        report.plot_rank_cdf(metrics, f"{out_dir}/rank_cdf.png")
        report.plot_distance_histograms(matches, truth, f"{out_dir}/distances.png")
        report.plot_reliability(metrics, f"{out_dir}/reliability.png")
        report.plot_roc(metrics, f"{out_dir}/roc.png")
    return metrics


def _truth_pairs(truth: dict) -> dict[str, set[str]]:
    from msdmatch.evaluation.openset import truth_sets

    return truth_sets(truth["query_id"].tolist(), truth["track_id"].tolist())


def _stage_ranks(matches: dict, truth: dict) -> dict | None:
    """A valid track's best rank after each stage, from the MATCHES ``stage`` column."""
    if "stage" not in matches:
        return None
    t = _truth_pairs(truth)
    qids = np.array(sorted(q for q, s in t.items() if s), dtype=str)
    out = {"query_id": qids, "pse_rank": np.full(len(qids), np.nan),
           "dhs_rank": np.full(len(qids), np.nan), "screen_rank": np.full(len(qids), np.nan),
           "final_rank": np.full(len(qids), np.nan)}
    has_prune = bool(np.any(matches["stage"] == "prune"))
    for n, q in enumerate(qids):
        sel = (matches["query_id"] == q) & np.isin(matches["track_id"], list(t[q]))
        if not sel.any():
            continue
        best = np.argmin(matches["rank"][sel])
        rank, stage = int(matches["rank"][sel][best]), str(matches["stage"][sel][best])
        out["pse_rank"][n] = rank
        if stage in ("verify", "rerank"):
            out["dhs_rank"][n] = rank
        if stage == "verify":
            out["screen_rank"][n] = rank
        out["final_rank"][n] = rank
    if not has_prune:
        del out["pse_rank"]  # rows beyond R were not written: PSE survival is unknown
    return out


def _best_per_query(ranks: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Smallest rank of each query over its (query, valid track) pairs."""
    best = np.full(n, np.inf)
    np.minimum.at(best, owner, ranks)
    return best


def _compare(matches, truth, metrics, *, queries, db, brute_force, client, storage_options, seed) -> dict:
    from msdmatch.io.store import Store
    from msdmatch.kernels.prune import default_k

    Q = Store(queries, storage_options=storage_options)
    D = Store(db, storage_options=storage_options)
    t = _truth_pairs(truth)
    db_row = {tid: i for i, tid in enumerate(D.ids)}
    qrows = [i for i, q in enumerate(Q.ids) if any(x in db_row for x in t.get(q, ()))]
    # one (query, valid track) pair per duplicate; a query counts at its best pair
    pair_q = np.array([n for n, i in enumerate(qrows) for x in sorted(t[Q.ids[i]]) if x in db_row], dtype=np.int64)
    true_idx = np.array([db_row[x] for i in qrows for x in sorted(t[Q.ids[i]]) if x in db_row], dtype=np.int64)
    K = default_k(D.n)
    one_pct = max(1, int(np.ceil(0.01 * D.n)))
    out: dict = {"prune_k": K, "db_size": D.n}
    # PSE against the mean/std baseline, on the same queries
    pse = f"pse-{Q.modality}"
    if f"pse/{pse}" in Q.group and f"pse/{pse}" in D.group and qrows:
        from msdmatch.io.store import prune_vectors
        from msdmatch.kernels.hub import pad_queries

        E = prune_vectors(D.group, pse)  # ranked as the prune ranks, hub penalty included
        dist = sq_dists(pad_queries(Q.group[f"pse/{pse}"][:][qrows], E.shape[1]), E)
        r = _best_per_query(true_ranks(dist[pair_q], true_idx), pair_q, len(qrows))
        out["pse_top_1pct"] = float(np.mean(r <= one_pct))
        out["pse_top_k"] = float(np.mean(r <= K))
        out["pse_mean_rank"] = float(np.mean(r))
    qb = np.stack([meanstd_embedding(Q.sequence(i)) for i in qrows]) if qrows else np.zeros((0, 96))
    # block by block: the database's features need not fit in memory, only its 96-d summaries
    db_b = np.stack([meanstd_embedding(x) for a in range(0, D.n, 1024)
                     for x in D.sequences(a, min(a + 1024, D.n))])
    rb = (_best_per_query(true_ranks(sq_dists(qb, db_b)[pair_q], true_idx), pair_q, len(qrows))
          if qrows else np.zeros(0))
    out["baseline_top_1pct"] = float(np.mean(rb <= one_pct)) if qrows else float("nan")
    out["baseline_top_k"] = float(np.mean(rb <= K)) if qrows else float("nan")
    out["baseline_mean_rank"] = float(np.mean(rb)) if qrows else float("nan")
    out["one_pct"] = one_pct
    if brute_force and qrows:
        out.update(_brute_force(matches, metrics, Q, D, qrows, (pair_q, true_idx), n=brute_force, client=client,
                                queries=queries, db=db, storage_options=storage_options, seed=seed))
    return out


def _brute_force(matches, metrics, Q, D, qrows, pairs, *, n, client, queries, db, storage_options,
                 seed) -> dict:
    from msdmatch.executor import run_shards, total_threads

    pick = np.sort(np.random.default_rng(seed).permutation(len(qrows))[: min(n, len(qrows))])
    sel = [qrows[i] for i in pick]
    step = max(1, -(-D.n // (4 * total_threads(client))))
    blocks = [(a, min(a + step, D.n)) for a in range(0, D.n, step)]
    res = run_shards(client, brute_force_shard, blocks, name="report-brute-force",
                     kwargs={"q_url": queries, "db_url": db, "queries": sel,
                             "storage_options": storage_options})
    S = np.concatenate([r[0] for r in res], axis=2)
    cpu = sum(r[1] for r in res)
    qids = [Q.ids[i] for i in sel]
    cascade_rank = metrics.get("ranks", {})
    cr = np.array([cascade_rank.get(q) or np.inf for q in qids], dtype=float)
    out = {"brute_force_queries": len(sel),
           "cascade_top_1_same_queries": float(np.mean(cr == 1)) if cascade_rank else float("nan")}
    pair_q, true_idx = pairs
    pos = {int(q): k for k, q in enumerate(pick)}
    in_pick = np.isin(pair_q, pick)
    owner = np.array([pos[int(q)] for q in pair_q[in_pick]], dtype=np.int64)
    for v, name in enumerate(("brute_force", "brute_force_std")):
        r = _best_per_query(true_ranks(S[v][owner], true_idx[in_pick]), owner, len(sel))
        out[f"{name}_top_1"] = float(np.mean(r == 1))
        out[f"{name}_seconds_per_query_core"] = float(cpu[v]) / len(sel)
    return out
