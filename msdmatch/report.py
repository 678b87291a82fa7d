"""Evaluate a MATCHES table against the true pairs: rank table, MRR, calibration, plots.

Conventions
-----------
* MATCHES is a table (dict of equal-length numpy columns) with one row per
  (query, candidate): ``query_id, rank, track_id, confidence, verify_score,
  dhs_score, pse_distance`` and, as written by ``msdmatch match``, the
  optional ``dhs_matrix_mean`` (it adds the single score ``dhs_ratio``),
  ``verify_std_score``, ``verify_dhs_score``, ``verify_high_score``,
  ``screen_score`` and ``stage`` (it gives the per-stage recall); ranks
  start at 1.  Scores are "lower is better"; NaN means the stage did not
  score the candidate.
* TRUTH maps each query id to its true track id (columns ``query_id,
  track_id``).
* A query whose true track is not in its candidate list, or which has no rows
  at all, has rank infinity.
* ``stage_ranks`` (optional) is a table ``query_id, track_id, pse_rank,
  dhs_rank, final_rank`` giving, for the true track of each query, its rank
  in each stage (missing or NaN = did not survive that stage).
* :func:`evaluate` follows the mir_eval protocol: validate, then compute named
  metrics into a dict.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from msdmatch.errors import MsdmatchError, ParameterError
from msdmatch.fusion import expected_calibration_error, reliability_curve, single_scores

__all__ = [
    "MATCH_COLUMNS",
    "RANK_CUTOFFS",
    "evaluate",
    "read_matches",
    "read_truth",
    "write_matches",
    "write_report",
    "plot_rank_cdf",
    "plot_distance_histograms",
    "plot_reliability",
]

MATCH_COLUMNS = ("query_id", "rank", "track_id", "confidence", "verify_score", "dhs_score",
                 "pse_distance")
#: Written after MATCH_COLUMNS when present; other tools' tables may lack them.
OPTIONAL_COLUMNS = ("dhs_matrix_mean", "verify_std_score", "verify_dhs_score", "verify_high_score",
                    "screen_score", "stage")
#: The cascade's stages, in order, for the per-stage recall.
STAGES = ("pse", "dhs", "screen", "final")
RANK_CUTOFFS = (1, 10, 100, 1000, 10000)
_SCORES = ("verify_score", "dhs_score", "pse_distance")


# ----------------------------------------------------------------------------- I/O


def _as_str(a) -> np.ndarray:
    return np.asarray(a).astype(str)


def _check_matches(m: Mapping, name: str = "matches") -> dict:
    missing = [c for c in MATCH_COLUMNS if c not in m]
    if missing:
        raise ParameterError(
            f"{name} has columns {sorted(m)}; expected {','.join(MATCH_COLUMNS)} (missing {missing})"
        )
    n = len(np.asarray(m["query_id"]))
    out = {}
    for c in MATCH_COLUMNS:
        col = np.asarray(m[c])
        if col.ndim != 1 or col.shape[0] != n:
            raise ParameterError(f"{name} column {c!r} has shape {col.shape}, expected ({n},)")
        out[c] = col
    out["query_id"] = _as_str(out["query_id"])
    out["track_id"] = _as_str(out["track_id"])
    out["rank"] = out["rank"].astype(np.int64)
    if n and out["rank"].min() < 1:
        raise ParameterError(f"{name} column 'rank' must start at 1, found {out['rank'].min()}")
    for c in ("confidence",) + _SCORES:
        out[c] = out[c].astype(np.float64)
    for c in OPTIONAL_COLUMNS:
        if c in m:
            out[c] = _as_str(m[c]) if c == "stage" else np.asarray(m[c], dtype=np.float64)
            if out[c].shape != (n,):
                raise ParameterError(f"{name} column {c!r} has shape {out[c].shape}, expected ({n},)")
    return out


def _matches_format(path: str) -> str:
    for ext in ("parquet", "csv", "zarr"):
        if path.rstrip("/").endswith("." + ext):
            return ext
    raise ParameterError(
        f"matches path {path} must end in .csv, .parquet or .zarr (a local path or an fsspec URL)"
    )


def _source(path: str, mode: str, storage_options: dict | None):
    """What pyarrow reads or writes: a local path as is, a remote one as an fsspec file object."""
    import contextlib

    from .store import filesystem, is_remote

    if not is_remote(path):
        return contextlib.nullcontext(path)
    fs, fpath = filesystem(path, storage_options)
    return fs.open(fpath, mode)


def read_matches(path: str | os.PathLike, *, storage_options: dict | None = None) -> dict[str, np.ndarray]:
    """Read a MATCHES table from ``.csv``, ``.parquet`` or a ``.zarr`` group, local or remote.

    Parameters
    ----------
    path : str
        Local path or fsspec URL (``s3://bucket/matches.parquet``).
    storage_options : dict, optional
        fsspec options for a remote path.

    Returns
    -------
    table : dict of str to np.ndarray [shape=(n,)]
        ``query_id``/``track_id`` as str, ``rank`` int64, scores float64.
    """
    from .store import filesystem

    path = os.fspath(path)
    fmt = _matches_format(path)
    fs, fpath = filesystem(path, storage_options)
    if not fs.exists(fpath):
        raise MsdmatchError(f"matches file {path} does not exist")
    if fmt == "zarr":
        from .store import _read_str, open_group

        g = open_group(path, storage_options=storage_options)
        table = {c: (np.asarray(_read_str(g, c)) if g[c].dtype.kind in "OTU" else g[c][:])
                 for c in g.attrs.get("columns", [])}
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        with _source(path, "rb", storage_options) as fh:
            # no threads: pyarrow 26 can abort at exit after a threaded read of a Python file object
            t = pq.read_table(fh, use_threads=isinstance(fh, str))
        table = {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}
    else:
        with _source(path, "rb", storage_options) as fh:
            table = _read_csv(fh, path)
    return _check_matches(table, os.path.basename(path.rstrip("/")))


def _read_csv(source, name: str | None = None) -> dict[str, np.ndarray]:
    import pyarrow.csv as pcsv

    opts = pcsv.ConvertOptions(column_types={"query_id": "string", "track_id": "string"})
    try:
        t = pcsv.read_csv(source, convert_options=opts,
                          read_options=pcsv.ReadOptions(use_threads=isinstance(source, str)))
    except Exception as e:  # pyarrow raises ArrowInvalid with a useful message
        raise MsdmatchError(f"cannot parse {name or source} as CSV: {e}") from None
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


def write_matches(table: Mapping, path: str | os.PathLike, *, storage_options: dict | None = None) -> None:
    """Write a MATCHES table (columns in contract order) to ``.csv``, ``.parquet`` or ``.zarr``.

    ``path`` is a local path or an fsspec URL; a ``.zarr`` group gets one
    array per column and the column list in its ``columns`` attribute.
    """
    import pyarrow as pa

    path = os.fspath(path)
    fmt = _matches_format(path)
    t = _check_matches(table)
    cols = [c for c in MATCH_COLUMNS + OPTIONAL_COLUMNS if c in t]
    if fmt == "zarr":
        from .store import _str_array, open_group

        g = open_group(path, mode="w", storage_options=storage_options)
        for c in cols:
            if t[c].dtype.kind == "U":
                _str_array(g, c, t[c].tolist())
            else:
                g.create_array(c, shape=t[c].shape, dtype=t[c].dtype,
                               chunks=(max(1, min(len(t[c]), 1 << 20)),))[:] = t[c]
        g.attrs.update({"kind": "msdmatch-matches", "columns": cols})
        return
    arrow = pa.table({c: t[c] for c in cols})
    with _source(path, "wb", storage_options) as fh:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(arrow, fh)
        else:
            import pyarrow.csv as pcsv

            pcsv.write_csv(arrow, fh)


def read_truth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read TRUTH.csv (columns ``query_id, track_id``) as str arrays."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MsdmatchError(f"truth file {path} does not exist")
    table = _read_csv(path)
    name = os.path.basename(path)
    if "query_id" not in table or "track_id" not in table:
        raise MsdmatchError(f"{name} has columns {list(table)}; expected query_id,track_id")
    return {"query_id": _as_str(table["query_id"]), "track_id": _as_str(table["track_id"])}


# ----------------------------------------------------------------------------- metrics


def _true_rank(m: dict, truth_map: dict[str, str], queries: np.ndarray) -> dict[str, np.ndarray]:
    """Per query: final rank of the true track and its rank by each single score."""
    is_true = np.array([truth_map.get(q) == t for q, t in zip(m["query_id"], m["track_id"], strict=True)],
                       dtype=bool)
    qpos = {q: i for i, q in enumerate(queries)}
    out = {"final": np.full(queries.size, np.inf)}
    scores = single_scores(m)
    for s in scores:
        out[s] = np.full(queries.size, np.inf)
    for q_idx in np.flatnonzero(is_true):
        i = qpos[m["query_id"][q_idx]]
        out["final"][i] = min(out["final"][i], m["rank"][q_idx])
    # rank by one score within the query's candidates (NaN last; ties counted against)
    by_query: dict[str, list[int]] = {}
    for r, q in enumerate(m["query_id"]):
        by_query.setdefault(q, []).append(r)
    for q, rows in by_query.items():
        if q not in qpos:
            continue
        rows_a = np.asarray(rows)
        hit = rows_a[is_true[rows_a]]
        if hit.size == 0:
            continue
        for s, col in scores.items():
            vals = np.where(np.isnan(col[rows_a]), np.inf, col[rows_a])
            tv = np.where(np.isnan(col[hit[0]]), np.inf, col[hit[0]])
            out[s][qpos[q]] = np.sum(vals <= tv)
    return out


def evaluate(
    matches: Mapping,
    truth: Mapping,
    *,
    stage_ranks: Mapping | None = None,
    n_bins: int = 10,
) -> dict:
    """Rank table, MRR, per-stage recall, calibration and single-score accuracy.

    Parameters
    ----------
    matches : mapping of column name to np.ndarray [shape=(n_rows,)]
        The MATCHES table.
    truth : mapping with ``query_id`` and ``track_id`` arrays [shape=(n_queries,)]
    stage_ranks : mapping or None
        ``query_id`` plus any of ``pse_rank``, ``dhs_rank``, ``screen_rank``,
        ``final_rank``: the true track's rank after each stage (NaN or absent
        = pruned; ``screen_rank`` is finite when it was among those verified).
    n_bins : int
        Bins of the reliability curve and the ECE.

    Returns
    -------
    metrics : dict
        ``n_queries``; ``top_1`` ... ``top_10000`` (fraction of queries with
        the true match at rank <= N); ``mrr``; ``ranks`` (per query, inf for
        misses); ``recall_pse``/``recall_dhs``/``recall_screen``/``recall_final`` when
        ``stage_ranks`` is given; ``ece`` and ``reliability`` of
        ``confidence``; ``top1_by_score``: each score of
        :func:`msdmatch.fusion.single_scores` present in the table, and
        ``fusion``; ``warnings`` (list of str).
    """
    m = _check_matches(matches)
    if "query_id" not in truth or "track_id" not in truth:
        raise ParameterError(f"truth has columns {sorted(truth)}; expected query_id,track_id")
    tq = _as_str(truth["query_id"])
    tt = _as_str(truth["track_id"])
    if tq.shape != tt.shape:
        raise ParameterError("truth query_id and track_id must have the same length")
    warnings: list[str] = []
    uq, cnt = np.unique(tq, return_counts=True)
    if (cnt > 1).any():
        raise ParameterError(
            f"truth lists {int((cnt > 1).sum())} queries more than once (e.g. {uq[cnt > 1][0]!r}); "
            "each query must have exactly one true track"
        )
    truth_map = dict(zip(tq.tolist(), tt.tolist(), strict=True))
    match_queries = set(m["query_id"].tolist())
    absent = [q for q in tq if q not in match_queries]
    if absent:
        warnings.append(
            f"{len(absent)} truth queries have no rows in matches (counted as misses), "
            f"e.g. {absent[:3]}"
        )
    extra = sorted(match_queries - set(truth_map))
    if extra:
        warnings.append(f"{len(extra)} queries in matches have no truth and are ignored, e.g. {extra[:3]}")
    nq = tq.size
    ranks = _true_rank(m, truth_map, tq)
    r = ranks["final"]
    metrics: dict = {"n_queries": int(nq)}
    for c in RANK_CUTOFFS:
        metrics[f"top_{c}"] = float(np.mean(r <= c)) if nq else float("nan")
    metrics["mrr"] = float(np.mean(np.where(np.isfinite(r), 1.0 / r, 0.0))) if nq else float("nan")
    metrics["ranks"] = {q: (float(x) if np.isfinite(x) else None) for q, x in zip(tq.tolist(), r, strict=True)}
    metrics["top1_by_score"] = {s: float(np.mean(ranks[s] <= 1)) if nq else float("nan")
                                for s in ranks if s != "final"}
    metrics["top1_by_score"]["fusion"] = metrics["top_1"]
    if stage_ranks is not None:
        sq = _as_str(stage_ranks["query_id"])
        pos = {q: i for i, q in enumerate(sq.tolist())}
        for stage in STAGES:
            key = f"{stage}_rank"
            if key not in stage_ranks:
                continue
            col = np.asarray(stage_ranks[key], dtype=np.float64)
            surv = [q in pos and np.isfinite(col[pos[q]]) and (stage != "final" or col[pos[q]] <= 1)
                    for q in tq]
            metrics[f"recall_{stage}"] = float(np.mean(surv)) if nq else float("nan")
    # calibration of the confidence on rows of truth queries
    known = np.isin(m["query_id"], tq)
    y = np.array([truth_map.get(q) == t for q, t in zip(m["query_id"][known], m["track_id"][known], strict=True)],
                 dtype=np.float64)
    conf = m["confidence"][known]
    ok = np.isfinite(conf)
    if ok.any():
        mid, frac, count = reliability_curve(conf[ok], y[ok], n_bins=n_bins)
        metrics["ece"] = expected_calibration_error(conf[ok], y[ok], n_bins=n_bins)
        metrics["reliability"] = {"bin_mid": mid.tolist(),
                                  "frac_pos": [None if np.isnan(f) else float(f) for f in frac],
                                  "count": count.tolist()}
    else:
        metrics["ece"] = float("nan")
    metrics["warnings"] = warnings
    return metrics


# ----------------------------------------------------------------------------- output


def rank_table(metrics: Mapping) -> str:
    """Markdown table of the rank cutoffs, MRR and the single-score accuracies."""
    lines = ["| metric | value |", "|---|---|"]
    lines.append(f"| queries | {metrics['n_queries']} |")
    for c in RANK_CUTOFFS:
        lines.append(f"| rank <= {c:,} | {metrics[f'top_{c}']:.4f} |")
    lines.append(f"| MRR | {metrics['mrr']:.4f} |")
    for stage in STAGES:
        if f"recall_{stage}" in metrics:
            lines.append(f"| recall after {stage} | {metrics[f'recall_{stage}']:.4f} |")
    for s, v in metrics.get("top1_by_score", {}).items():
        lines.append(f"| top-1 by {s} | {v:.4f} |")
    lines.append(f"| ECE of confidence | {metrics.get('ece', float('nan')):.4f} |")
    return "\n".join(lines) + "\n"


def write_report(metrics: Mapping, out_dir: str | os.PathLike) -> str:
    """Write ``metrics.json`` and ``rank_table.txt`` into ``out_dir``; return the table."""
    os.makedirs(out_dir, exist_ok=True)
    text = rank_table(metrics)
    with open(os.path.join(out_dir, "metrics.json"), "w") as fh:
        json.dump(metrics, fh, indent=2, default=float)
    with open(os.path.join(out_dir, "rank_table.txt"), "w") as fh:
        fh.write(text)
    return text


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rank_cdf(metrics: Mapping, path: str | os.PathLike) -> None:
    """Fraction of queries with true rank <= r against r (log x)."""
    plt = _pyplot()
    r = np.array([np.inf if v is None else v for v in metrics["ranks"].values()], dtype=float)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = np.unique(np.r_[1, r[np.isfinite(r)], max(RANK_CUTOFFS)])
    ax.step(xs, [np.mean(r <= x) if r.size else 0 for x in xs], where="post")
    ax.set_xscale("log")
    ax.set_xlabel("rank")
    ax.set_ylabel("fraction of queries")
    ax.set_ylim(0, 1.02)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def plot_distance_histograms(matches: Mapping, truth: Mapping, path: str | os.PathLike, *,
                             score: str = "pse_distance", bins: int = 40) -> None:
    """Histograms of ``score`` for matched and unmatched pairs (log x), as Fig. 1."""
    plt = _pyplot()
    m = _check_matches(matches)
    tm = dict(zip(_as_str(truth["query_id"]).tolist(), _as_str(truth["track_id"]).tolist(), strict=True))
    y = np.array([tm.get(q) == t for q, t in zip(m["query_id"], m["track_id"], strict=True)], dtype=bool)
    x = m[score]
    ok = np.isfinite(x) & (x > 0)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if ok.any():
        edges = np.geomspace(x[ok].min(), x[ok].max() * 1.0001, bins + 1)
        ax.hist(x[ok & ~y], bins=edges, alpha=0.6, density=True, label="unmatched")
        ax.hist(x[ok & y], bins=edges, alpha=0.6, density=True, label="matched")
        ax.legend()
    ax.set_xscale("log")
    ax.set_xlabel(score)
    ax.set_ylabel("density")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def plot_reliability(metrics: Mapping, path: str | os.PathLike) -> None:
    """Reliability diagram of the confidence column."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], ls="--", c="grey")
    rel = metrics.get("reliability")
    if rel:
        mid = np.asarray(rel["bin_mid"])
        frac = np.array([np.nan if f is None else f for f in rel["frac_pos"]])
        ax.plot(mid, frac, marker="o")
    ax.set_xlabel("confidence")
    ax.set_ylabel("fraction true matches")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
