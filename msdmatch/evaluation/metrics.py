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
* TRUTH has the columns ``query_id, track_id``, one row per valid track: a
  query may have several (duplicate previews of one recording; it is found
  at the best rank of any of them), and a row with an empty ``track_id``
  means that no match exists (open set).
* A query whose true tracks are not in its candidate list, or which has no
  rows at all, has rank infinity.  Rank metrics (``top_N``, ``mrr``) are
  over the queries that have a match.
* Decision metrics (:func:`decision_metrics`) look at each query's top row
  (rank 1): it is *correct* when its track is valid for the query, and
  *accepted* when its ``matched`` flag is set or, without that column or
  with an explicit threshold, when its confidence reaches the threshold.
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
from msdmatch.kernels.fusion import expected_calibration_error, reliability_curve, single_scores

__all__ = [
    "MATCH_COLUMNS",
    "RANK_CUTOFFS",
    "decision_metrics",
    "evaluate",
    "json_safe",
    "read_matches",
    "read_truth",
    "write_matches",
    "write_report",
    "plot_rank_cdf",
    "plot_distance_histograms",
    "plot_reliability",
    "plot_roc",
]

MATCH_COLUMNS = ("query_id", "rank", "track_id", "confidence", "verify_score", "dhs_score",
                 "pse_distance")
#: Written after MATCH_COLUMNS when present; other tools' tables may lack them.
OPTIONAL_COLUMNS = ("dhs_matrix_mean", "dhs_hub", "verify_std_score", "verify_dhs_score", "verify_high_score",
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

    from msdmatch.io.store import filesystem, is_remote

    if not is_remote(path):
        return contextlib.nullcontext(path)
    fs, fpath = filesystem(path, storage_options)
    return fs.open(fpath, mode)


def read_matches(path: str | os.PathLike, *, storage_options: dict | None = None) -> dict[str, np.ndarray]:
    """Read MATCHES in any form (:func:`msdmatch.io.matches_table.read_matches`)."""
    from msdmatch.io.matches_table import read_matches as read

    return read(path, storage_options=storage_options)


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
    """Write a whole MATCHES table (:func:`msdmatch.io.matches_table.write_matches`)."""
    from msdmatch.io.matches_table import write_matches as write

    write(table, path, storage_options=storage_options)


def read_truth(path: str | os.PathLike, *, keep_split: str | None = None) -> dict[str, np.ndarray]:
    """Read TRUTH.csv (columns ``query_id, track_id``) as str arrays.

    Parameters
    ----------
    path : str
        A CSV with a header; one row per (query, valid track); an empty
        ``track_id`` means the query has no match.
    keep_split : str, optional
        With a ``split`` column, keep only the rows of this split.

    Returns
    -------
    truth : dict with ``query_id`` and ``track_id`` [shape=(n_rows,), str]

    Raises
    ------
    ParameterError
        The file is missing, not UTF-8, empty, or lacks a column.
    """
    import csv

    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise ParameterError(f"truth file {path} does not exist")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            cols = list(reader.fieldnames or [])
    except UnicodeDecodeError as e:
        raise ParameterError(f"truth file {path} is not UTF-8 text ({e.reason} at byte {e.start}); "
                             "save it as UTF-8") from None
    except csv.Error as e:
        raise ParameterError(f"cannot parse truth file {path} as CSV: {e}") from None
    if not cols:
        raise ParameterError(f"truth file {path} is empty; expected a header query_id,track_id and "
                             "one row per (query, valid track)")
    if "query_id" not in cols or "track_id" not in cols:
        raise ParameterError(f"{name} has columns {cols}; expected query_id,track_id")
    if keep_split is not None and "split" in cols:
        rows = [r for r in rows if r.get("split") == keep_split]
    rows = [r for r in rows if (r.get("query_id") or "").strip()]
    if not rows:
        raise ParameterError(f"truth file {path} has no query rows"
                             + (f" of split {keep_split!r}" if keep_split is not None and "split" in cols else ""))
    return {"query_id": np.array([r["query_id"].strip() for r in rows], dtype=str),
            "track_id": np.array([(r.get("track_id") or "").strip() for r in rows], dtype=str)}


# ----------------------------------------------------------------------------- metrics


def _truth_sets(truth: Mapping) -> dict[str, set[str]]:
    from msdmatch.evaluation.openset import truth_sets

    if "query_id" not in truth or "track_id" not in truth:
        raise ParameterError(f"truth has columns {sorted(truth)}; expected query_id,track_id")
    tq, tt = _as_str(truth["query_id"]), _as_str(truth["track_id"])
    if tq.shape != tt.shape:
        raise ParameterError("truth query_id and track_id must have the same length")
    return truth_sets(tq.tolist(), tt.tolist())


def _is_true(m: dict, sets: Mapping[str, set[str]]) -> np.ndarray:
    """Per MATCHES row: is its track valid for its query."""
    empty: set[str] = set()
    return np.array([t in sets.get(q, empty) for q, t in zip(m["query_id"], m["track_id"], strict=True)],
                    dtype=bool)


def _true_rank(m: dict, is_true: np.ndarray, queries: np.ndarray) -> dict[str, np.ndarray]:
    """Per query: best final rank of a valid track and its best rank by each single score."""
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
            tv = np.min(np.where(np.isnan(col[hit]), np.inf, col[hit]))
            out[s][qpos[q]] = np.sum(vals <= tv)
    return out


def _auc(score: np.ndarray, pos: np.ndarray) -> float:
    """Probability that a positive scores higher than a negative (ties count half)."""
    s = np.nan_to_num(np.asarray(score, dtype=np.float64), nan=-np.inf)
    pos = np.asarray(pos, bool)
    if pos.all() or not pos.any():
        return float("nan")
    from scipy.stats import rankdata

    r = rankdata(s)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _roc(score: np.ndarray, pos: np.ndarray) -> dict[str, list[float]]:
    """ROC points (one per distinct score, from the highest), with (0, 0) first."""
    s = np.nan_to_num(np.asarray(score, dtype=np.float64), nan=-np.inf)
    pos = np.asarray(pos, bool)
    ts = np.unique(s)[::-1]
    n1, n0 = max(int(pos.sum()), 1), max(int((~pos).sum()), 1)
    tpr = [0.0] + [float(np.sum(pos & (s >= t)) / n1) for t in ts]
    fpr = [0.0] + [float(np.sum(~pos & (s >= t)) / n0) for t in ts]
    return {"threshold": [None] + [float(t) if np.isfinite(t) else None for t in ts], "fpr": fpr, "tpr": tpr}


def decision_metrics(top_conf: np.ndarray, correct: np.ndarray, no_match: np.ndarray, *,
                     threshold: float = 0.5, accepted: np.ndarray | None = None, n_bins: int = 10) -> dict:
    """How well the top-1 confidence decides "this is the query's recording".

    Parameters
    ----------
    top_conf : np.ndarray [shape=(n_queries,)]
        Confidence of each query's top row (NaN: the query has no scored
        row; never accepted).
    correct : np.ndarray [shape=(n_queries,), dtype=bool]
        The top row's track is valid for the query.
    no_match : np.ndarray [shape=(n_queries,), dtype=bool]
        No valid track exists (empty truth).
    threshold : float
        Accept when ``top_conf >= threshold`` ...
    accepted : np.ndarray [shape=(n_queries,), dtype=bool], optional
        ... unless the decisions are given (the ``matched`` column).
    n_bins : int
        Bins of the top-1 reliability curve.

    Returns
    -------
    metrics : dict
        ``threshold``; ``false_accept_rate`` (accepted among no-match
        queries), ``true_accept_rate`` (accepted among queries whose top-1
        is correct), ``wrong_accept_rate`` (accepted among queries that have
        a match but a wrong top-1), ``precision`` (correct among accepted),
        ``recall`` (accepted and correct among queries that have a match),
        the counts behind them; ``auc`` and ``roc`` of the top-1 confidence
        separating correct top-1s from the rest; ``top1_ece`` and
        ``top1_reliability`` (``bin_mid``, ``frac_pos``, ``mean_conf``,
        ``count``).  Rates with an empty denominator are NaN.
    """
    c = np.asarray(top_conf, dtype=np.float64).ravel()
    ok_c = np.asarray(correct, bool).ravel()
    nm = np.asarray(no_match, bool).ravel()
    if not (c.shape == ok_c.shape == nm.shape):
        raise ParameterError(f"top_conf, correct and no_match must have one value per query, got "
                             f"{c.shape}, {ok_c.shape}, {nm.shape}")
    if (ok_c & nm).any():
        raise ParameterError("a query cannot have a correct top-1 and no match")
    acc = (np.nan_to_num(c, nan=-np.inf) >= threshold) if accepted is None else np.asarray(accepted, bool).ravel()
    has = ~nm
    wrong = has & ~ok_c

    def rate(num, den):
        return float(num.sum() / den.sum()) if den.sum() else float("nan")

    out = {
        "threshold": float(threshold) if accepted is None else None,
        "queries": int(c.size), "no_match_queries": int(nm.sum()),
        "correct_top1_queries": int(ok_c.sum()), "wrong_top1_queries": int(wrong.sum()),
        "accepted": int(acc.sum()),
        "false_accept_rate": rate(acc & nm, nm), "true_accept_rate": rate(acc & ok_c, ok_c),
        "wrong_accept_rate": rate(acc & wrong, wrong),
        "precision": rate(acc & ok_c, acc), "recall": rate(acc & ok_c, has),
        "auc": _auc(c, ok_c), "roc": _roc(c, ok_c),
    }
    fin = np.isfinite(c)
    if fin.any():
        mid, frac, count = reliability_curve(np.clip(c[fin], 0, 1), ok_c[fin], n_bins=n_bins)
        b = np.clip(np.floor(np.clip(c[fin], 0, 1) * n_bins).astype(int), 0, n_bins - 1)
        mean_conf = np.bincount(b, weights=c[fin], minlength=n_bins) / np.maximum(count, 1)
        out["top1_ece"] = expected_calibration_error(np.clip(c[fin], 0, 1), ok_c[fin], n_bins=n_bins)
        out["top1_reliability"] = {"bin_mid": mid.tolist(), "frac_pos": frac.tolist(),
                                   "mean_conf": [float(x) if n else float("nan")
                                                 for x, n in zip(mean_conf, count, strict=True)],
                                   "count": count.tolist()}
    else:
        out["top1_ece"] = float("nan")
    return out


def _top_rows(m: dict, is_true: np.ndarray, queries: np.ndarray, *, by: str | None = None) -> dict:
    """Per query: its top row's confidence, correctness and ``matched`` flag.

    ``by=None``: the row of rank 1.  ``by='verify_score'``: the verified row
    with the lowest verify score (the thesis's ranking), with the thesis's
    confidence ``clip(2(1 - s), 0, 1)`` (or the ``thesis_confidence`` column).
    """
    from msdmatch.kernels.dtw import dtw_confidence

    n = queries.size
    qpos = {q: i for i, q in enumerate(queries)}
    conf, corr = np.full(n, np.nan), np.zeros(n, bool)
    matched = np.zeros(n, bool)
    best = np.full(n, np.inf)
    key = m["rank"].astype(np.float64) if by is None else np.asarray(m[by], dtype=np.float64)
    if by is None:
        value = m["confidence"]
    elif "thesis_confidence" in m:
        value = np.asarray(m["thesis_confidence"], dtype=np.float64)
    else:
        value = dtw_confidence(np.nan_to_num(key, nan=np.inf))
    has_matched = "matched" in m
    for r in range(key.size):
        i = qpos.get(m["query_id"][r])
        if i is None or not np.isfinite(key[r]) or key[r] >= best[i]:
            continue
        best[i] = key[r]
        conf[i], corr[i] = value[r], is_true[r]
        if has_matched:
            matched[i] = bool(m["matched"][r])
    return {"conf": conf, "correct": corr, "matched": matched if has_matched else None}


def evaluate(
    matches: Mapping,
    truth: Mapping,
    *,
    stage_ranks: Mapping | None = None,
    threshold: float | None = None,
    n_bins: int = 10,
) -> dict:
    """Rank table, MRR, per-stage recall, calibration, open-set decisions and single-score accuracy.

    Parameters
    ----------
    matches : mapping of column name to np.ndarray [shape=(n_rows,)]
        The MATCHES table; ``matched`` (bool, top rows) and
        ``thesis_confidence`` are used when present.
    truth : mapping with ``query_id`` and ``track_id`` arrays [shape=(n_truth_rows,)]
        One row per (query, valid track); an empty ``track_id``: no match exists.
    stage_ranks : mapping or None
        ``query_id`` plus any of ``pse_rank``, ``dhs_rank``, ``screen_rank``,
        ``final_rank``: a valid track's best rank after each stage (NaN or absent
        = pruned; ``screen_rank`` is finite when it was among those verified).
    threshold : float or None
        Accept a top-1 whose confidence reaches it; None: the ``matched``
        column if there is one, else 0.5.
    n_bins : int
        Bins of the reliability curves and the ECEs.

    Returns
    -------
    metrics : dict
        ``n_queries``, ``n_with_match``, ``n_no_match``; ``top_1`` ...
        ``top_10000`` (fraction of the queries with a match that have a
        valid track at rank <= N); ``mrr``; ``ranks`` (per query with a
        match, None for misses); ``recall_pse``/``recall_dhs``/``recall_screen``/``recall_final``
        when ``stage_ranks`` is given; ``ece`` and ``reliability`` of
        ``confidence`` over all scored rows; ``decision`` (the fused
        confidence's :func:`decision_metrics` at the threshold),
        ``thesis_decision`` (the same for the thesis's top-1 by verify score
        and its c >= 0.5), ``matched_decision`` (of the ``matched`` column,
        when present); ``top1_by_score``: each score of
        :func:`msdmatch.kernels.fusion.single_scores` present in the table, and
        ``fusion``; ``warnings`` (list of str).
    """
    m = _check_matches(matches)
    for c in ("matched", "thesis_confidence"):
        if c in matches:
            col = np.asarray(matches[c])
            if col.shape != m["query_id"].shape:
                raise ParameterError(f"matches column {c!r} has shape {col.shape}, expected {m['query_id'].shape}")
            m[c] = (np.isin(col.astype(str), ("True", "true", "1", "1.0")) if col.dtype.kind in "OUS"
                    else np.nan_to_num(col.astype(np.float64)) != 0) if c == "matched" else col.astype(np.float64)
    sets = _truth_sets(truth)
    tq = np.array(sorted(sets), dtype=str) if sets else np.zeros(0, str)
    warnings: list[str] = []
    match_queries = set(m["query_id"].tolist())
    absent = [q for q in tq.tolist() if q not in match_queries]
    if absent:
        warnings.append(
            f"{len(absent)} truth queries have no rows in matches (counted as misses), "
            f"e.g. {absent[:3]}"
        )
    extra = sorted(match_queries - set(sets))
    if extra:
        warnings.append(f"{len(extra)} queries in matches have no truth and are ignored, e.g. {extra[:3]}")
    is_true = _is_true(m, sets)
    has = np.array([bool(sets[q]) for q in tq.tolist()], dtype=bool)
    nq, nh = int(tq.size), int(has.sum())
    ranks = _true_rank(m, is_true, tq)
    r = ranks["final"][has]
    metrics: dict = {"n_queries": nq, "n_with_match": nh, "n_no_match": nq - nh}
    for c in RANK_CUTOFFS:
        metrics[f"top_{c}"] = float(np.mean(r <= c)) if nh else float("nan")
    metrics["mrr"] = float(np.mean(np.where(np.isfinite(r), 1.0 / r, 0.0))) if nh else float("nan")
    metrics["ranks"] = {q: (float(x) if np.isfinite(x) else None)
                        for q, x, h in zip(tq.tolist(), ranks["final"], has, strict=True) if h}
    metrics["top1_by_score"] = {s: float(np.mean(ranks[s][has] <= 1)) if nh else float("nan")
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
                    for q in tq[has]]
            metrics[f"recall_{stage}"] = float(np.mean(surv)) if nh else float("nan")
    # calibration of the confidence on the scored rows of truth queries
    known = np.isin(m["query_id"], tq)
    y = is_true[known].astype(np.float64)
    conf = m["confidence"][known]
    ok = np.isfinite(conf)
    if ok.any():
        mid, frac, count = reliability_curve(conf[ok], y[ok], n_bins=n_bins)
        metrics["ece"] = expected_calibration_error(conf[ok], y[ok], n_bins=n_bins)
        metrics["reliability"] = {"bin_mid": mid.tolist(), "frac_pos": frac.tolist(), "count": count.tolist()}
    else:
        metrics["ece"] = float("nan")
    # open-set decisions on each query's top-1
    top = _top_rows(m, is_true, tq)
    use_matched = threshold is None and top["matched"] is not None
    metrics["decision"] = decision_metrics(
        top["conf"], top["correct"], ~has, threshold=0.5 if threshold is None else threshold,
        accepted=top["matched"] if use_matched else None, n_bins=n_bins)
    if use_matched:  # the ROC and reliability are of the confidence; the rates of `matched`
        metrics["decision"]["threshold"] = None
    if top["matched"] is not None:
        metrics["matched_decision"] = {k: v for k, v in decision_metrics(
            top["conf"], top["correct"], ~has, accepted=top["matched"]).items()
            if k not in ("roc", "top1_reliability")}
    thesis = _top_rows(m, is_true, tq, by="verify_score")
    metrics["thesis_decision"] = decision_metrics(thesis["conf"], thesis["correct"], ~has, threshold=0.5,
                                                  n_bins=n_bins)
    metrics["warnings"] = warnings
    return metrics


# ----------------------------------------------------------------------------- output


def json_safe(x):
    """``x`` with NaN and infinities as None and numpy scalars and arrays as Python values (for JSON)."""
    if isinstance(x, Mapping):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else None
    return x


def _fmt(x, spec: str = ".4f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def rank_table(metrics: Mapping) -> str:
    """Markdown table of the rank cutoffs, MRR, single-score accuracies and open-set decisions."""
    lines = ["| metric | value |", "|---|---|"]
    lines.append(f"| queries | {metrics['n_queries']} |")
    if metrics.get("n_no_match"):
        lines.append(f"| queries with no match in the database | {metrics['n_no_match']} |")
    for c in RANK_CUTOFFS:
        lines.append(f"| rank <= {c:,} | {_fmt(metrics[f'top_{c}'])} |")
    lines.append(f"| MRR | {_fmt(metrics['mrr'])} |")
    for stage in STAGES:
        if f"recall_{stage}" in metrics:
            lines.append(f"| recall after {stage} | {_fmt(metrics[f'recall_{stage}'])} |")
    for s, v in metrics.get("top1_by_score", {}).items():
        lines.append(f"| top-1 by {s} | {_fmt(v)} |")
    lines.append(f"| ECE of confidence (all scored rows) | {_fmt(metrics.get('ece', float('nan')))} |")
    d, t = metrics.get("decision"), metrics.get("thesis_decision")
    if d and t:
        how = "`matched`" if d.get("threshold") is None else f"confidence >= {d['threshold']:g}"
        lines.append(f"| **top-1 decisions** | {how} (thesis: its top-1 by verify score, c >= 0.5) |")
        for k, label in (("false_accept_rate", "false accepts / no-match queries"),
                         ("true_accept_rate", "true accepts / queries with a correct top-1"),
                         ("wrong_accept_rate", "accepted / queries with a match but a wrong top-1"),
                         ("precision", "precision (correct / accepted)"),
                         ("recall", "recall (accepted correct / queries with a match)"),
                         ("auc", "ROC AUC of the top-1 confidence"),
                         ("top1_ece", "ECE of the top-1 confidence")):
            lines.append(f"| {label} | {_fmt(d.get(k))} (thesis {_fmt(t.get(k))}) |")
    md = metrics.get("matched_decision")
    if md and d and d.get("threshold") is not None:
        lines.append(f"| `matched` column: precision / recall | {_fmt(md['precision'])} / {_fmt(md['recall'])} |")
    return "\n".join(lines) + "\n"


def write_report(metrics: Mapping, out_dir: str | os.PathLike) -> str:
    """Write ``metrics.json`` (strict JSON: NaN as null) and ``rank_table.txt`` into ``out_dir``; return the table."""
    os.makedirs(out_dir, exist_ok=True)
    text = rank_table(metrics)
    with open(os.path.join(out_dir, "metrics.json"), "w") as fh:
        json.dump(json_safe(metrics), fh, indent=2, allow_nan=False)
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
    y = _is_true(m, _truth_sets(truth))
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
    """Reliability diagram of each query's top-1 confidence, with the queries per bin.

    Uses ``metrics['decision']['top1_reliability']`` (from :func:`evaluate`),
    or the all-rows ``metrics['reliability']`` when there is none.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], ls="--", c="grey")
    d = metrics.get("decision") or {}
    rel = d.get("top1_reliability") or metrics.get("reliability")
    what = "top-1 confidence per query" if d.get("top1_reliability") else "confidence (all scored rows)"
    ece = d.get("top1_ece") if d.get("top1_reliability") else metrics.get("ece")
    if rel:
        mid = np.asarray(rel["bin_mid"], dtype=float)
        frac = np.array([np.nan if f is None else f for f in rel["frac_pos"]], dtype=float)
        count = np.asarray(rel["count"])
        width = 1.0 / max(len(mid), 1)
        ax.bar(mid, np.nan_to_num(frac), width=width * 0.9, alpha=0.4, edgecolor="k")
        ax.plot(mid, frac, marker="o")
        for x, f, n in zip(mid, frac, count, strict=True):
            ax.annotate(f"n={int(n)}", (x, (0 if np.isnan(f) else f) + 0.02), ha="center", fontsize=7)
    ax.set_xlabel(what)
    ax.set_ylabel("fraction correct")
    ax.set_title(f"ECE {_fmt(ece, '.3f')}", fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def plot_roc(metrics: Mapping, path: str | os.PathLike) -> None:
    """ROC of the top-1 confidence (correct top-1 against the rest), beside the thesis's c."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], ls="--", c="grey")
    for key, label in (("decision", "fused confidence"), ("thesis_decision", "thesis c")):
        d = metrics.get(key) or {}
        if d.get("roc"):
            ax.plot(d["roc"]["fpr"], d["roc"]["tpr"], drawstyle="steps-post",
                    label=f"{label} (AUC {_fmt(d.get('auc'), '.3f')})")
    ax.set_xlabel("accepted among queries without a correct top-1")
    ax.set_ylabel("accepted among queries with a correct top-1")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
