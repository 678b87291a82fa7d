"""Fit the fusion model that turns the cascade's scores into a calibrated confidence.

Input is one or more MATCHES tables of validation queries (``msdmatch match``
with the models being calibrated), each with its truth.  For a confidence
that means the same when the recording is absent, the runs should be open
set (:mod:`msdmatch.evaluation.openset`): about half the queries matched against a
database without their recording, their truth rows with an empty
``track_id``.  The same query may appear in several runs (with and without
its recording); its rows are kept apart per run, and cross-validation folds
hold all of a query's runs together.

Only the verified rows (the top V of each query, the ones that get a
confidence) are used: label 1 where the candidate is one of the query's
valid tracks.  The threshold is picked on the cross-validated top-1
confidences: the smallest multiple of 0.01 at which at most
``target_false_accept`` of the no-match queries are accepted.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from msdmatch.errors import ParameterError

#: Share of no-match queries the shipped threshold may accept (high precision).
TARGET_FALSE_ACCEPT = 0.02
#: Thresholds whose cross-validated rates are recorded in the model's metrics.
OPERATING_POINTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def labelled_rows(matches: Mapping, truth: Mapping, *, run: int = 0) -> dict[str, np.ndarray]:
    """The verified rows of truth queries, labelled.

    Parameters
    ----------
    matches : mapping of str to np.ndarray [shape=(n,)]
        A MATCHES table (``stage`` marks the verified rows; else a finite
        ``verify_score`` does).
    truth : mapping with ``query_id``, ``track_id`` arrays
        Several rows per query allowed; an empty ``track_id`` = no match.
    run : int
        Tags the rows' ``group`` (``'<run>:<query_id>'``).

    Returns
    -------
    rows : dict of str to np.ndarray
        The MATCHES columns of the kept rows plus ``y`` (float 0/1),
        ``group`` (run and query), ``no_match`` (bool, the query's truth is
        empty).
    """
    from msdmatch.evaluation.openset import truth_sets

    t = truth_sets(np.asarray(truth["query_id"]).astype(str), np.asarray(truth["track_id"]).astype(str))
    q = np.asarray(matches["query_id"]).astype(str)
    sel = np.isin(q, list(t))
    if "stage" in matches:
        sel &= np.asarray(matches["stage"]).astype(str) == "verify"
    else:
        sel &= np.isfinite(np.asarray(matches["verify_score"], dtype=np.float64))
    rows = {k: np.asarray(v)[sel] for k, v in matches.items()}
    rows["query_id"] = q[sel]
    tr = np.asarray(rows["track_id"]).astype(str)
    rows["y"] = np.array([x in t[qq] for qq, x in zip(rows["query_id"], tr, strict=True)], dtype=np.float64)
    rows["no_match"] = np.array([not t[qq] for qq in rows["query_id"]], dtype=bool)
    rows["group"] = np.char.add(f"{run}:", rows["query_id"].astype(str))
    return rows


def _concat(parts: list[dict]) -> dict[str, np.ndarray]:
    keys = set.intersection(*(set(p) for p in parts))
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def top1_table(p: np.ndarray, rows: Mapping) -> dict[str, np.ndarray]:
    """Each group's top row by ``p`` (ties: the lower verify score, then the first row).

    Returns
    -------
    top : dict of str to np.ndarray [shape=(n_groups,)]
        ``group``, ``p`` (its confidence), ``correct`` (bool), ``no_match`` (bool).
    """
    g = np.asarray(rows["group"])
    ug, inv = np.unique(g, return_inverse=True)
    v = np.nan_to_num(np.asarray(rows["verify_score"], dtype=np.float64), nan=np.inf)
    order = np.lexsort((np.arange(len(p)), v, -np.nan_to_num(p, nan=-np.inf), inv))
    first = order[np.r_[True, inv[order][1:] != inv[order][:-1]]]
    return {"group": ug, "p": np.asarray(p)[first], "correct": np.asarray(rows["y"])[first] > 0,
            "no_match": np.asarray(rows["no_match"])[first]}


def pick_threshold(p_top: np.ndarray, no_match: np.ndarray, *,
                   target: float = TARGET_FALSE_ACCEPT) -> float:
    """Smallest multiple of 0.01 (>= 0.01) at which at most ``target`` of the no-match queries are accepted.

    Parameters
    ----------
    p_top : np.ndarray [shape=(n_queries,)]
        Top-1 confidence per query.
    no_match : np.ndarray [shape=(n_queries,), dtype=bool]

    Returns
    -------
    threshold : float (1.0 if no grid point qualifies)
    """
    neg = np.nan_to_num(np.asarray(p_top, dtype=np.float64)[np.asarray(no_match, bool)], nan=0.0)
    if neg.size == 0:
        raise ParameterError("no query without a match: open-set calibration needs queries whose "
                             "recording was removed from the database (see msdmatch.evaluation.openset)")
    for t in np.round(np.arange(1, 100) / 100, 2):
        if np.mean(neg >= t) <= target:
            return float(t)
    return 1.0


def fit_from_matches(matches, truth, *, l2: float = 1.0, folds: int = 5, seed: int = 0,
                     names: tuple[str, ...] | None = None, target_false_accept: float = TARGET_FALSE_ACCEPT,
                     verify_veto: float | None = None):
    """Fit :class:`msdmatch.kernels.fusion.FusionModel` on verified candidates, with its threshold.

    Parameters
    ----------
    matches : MATCHES table (dict of np.ndarray) or a list of them (runs)
        With ``stage`` (as written by ``msdmatch match``).
    truth : dict with ``query_id`` and ``track_id``, or a list of them (one per run)
        Several rows per query allowed; an empty ``track_id`` = no match exists.
    folds : int
        Queries are split into this many folds (by ``seed``) to estimate the
        fusion on queries it was not fitted on; < 2 skips it (and keeps the
        default threshold).
    names : tuple of str, optional
        Features (default :data:`msdmatch.kernels.fusion.FEATURE_NAMES`).
    target_false_accept : float
        The threshold accepts at most this share of the no-match queries
        (cross-validated); needs open-set runs.
    verify_veto : float, optional
        Confidence 0 where ``verify_score`` reaches it (kept in the model and
        applied to the cross-validated confidences the threshold is picked on).

    Returns
    -------
    model : FusionModel
        ``metrics`` of the fit (top-1 over all query runs, log-loss, ECE on
        the fitted rows) and, with ``folds``, the cross-validated ``cv_*``
        figures (``cv_top1`` over the query runs that have a match;
        :func:`cv_metrics`) beside ``top1_<score>`` of each single score (all query runs);
        ``threshold``, ``false_accept_rate`` and ``true_accept_rate`` from
        the cross-validated top-1 confidences when the runs have no-match queries.
    """
    from dataclasses import replace

    from msdmatch.kernels.fusion import FEATURE_NAMES, features_for, fit_fusion, single_scores, top1_by_query

    names = tuple(names or FEATURE_NAMES)
    if verify_veto is not None and "verify_score" not in names:
        raise ParameterError(f"verify_veto needs the verify_score feature; the features are {list(names)}")
    runs_m = list(matches) if isinstance(matches, (list, tuple)) else [matches]
    runs_t = list(truth) if isinstance(truth, (list, tuple)) else [truth] * len(runs_m)
    if len(runs_t) != len(runs_m):
        raise ParameterError(f"{len(runs_m)} MATCHES tables but {len(runs_t)} truth tables; give one "
                             "truth for all or one per MATCHES")
    rows = _concat([labelled_rows(m, t, run=i) for i, (m, t) in enumerate(zip(runs_m, runs_t))])
    if not len(rows["y"]):
        raise ParameterError("no verified rows of truth queries in MATCHES; run `msdmatch match` "
                             "on the validation queries first")
    y = rows["y"]
    if y.sum() == 0 or y.sum() == len(y):
        raise ParameterError(f"need both true and false candidates to calibrate; got {int(y.sum())} "
                             f"true of {len(y)}")
    X = features_for(rows, groups=rows["group"], names=names)
    model = replace(fit_fusion(X, y, groups=rows["group"], l2=l2, names=names), verify_veto=verify_veto)
    if folds < 2:
        return model
    p = cv_proba(X, y, rows["query_id"], l2=l2, folds=folds, seed=seed, names=names, verify_veto=verify_veto)
    ok = ~np.isnan(p)
    top = top1_table(p, rows)
    fields: dict = {}
    has = ~top["no_match"]
    cv = {"cv_folds": folds, "cv_top1": float(np.mean(top["correct"][has])) if has.any() else float("nan")}
    cv.update(cv_metrics(p, rows))
    if top["no_match"].any():
        t = pick_threshold(top["p"], top["no_match"], target=target_false_accept)
        d = decision_rates(top, t)
        fields = {"threshold": t, "false_accept_rate": d["false_accept_rate"],
                  "true_accept_rate": d["true_accept_rate"]}
        cv["target_false_accept"] = target_false_accept
        cv["operating_points"] = [{"threshold": tt, **decision_rates(top, tt)} for tt in OPERATING_POINTS]
    cv.update({f"top1_{k}": top1_by_query(np.nan_to_num(v[ok], nan=np.inf), y[ok], rows["group"][ok])
               for k, v in single_scores(rows).items()})
    cv["runs"] = len(runs_m)
    return type(model)(**{**model.__dict__, **fields, "metrics": {**model.metrics, **cv}})


def cv_proba(X: np.ndarray, y: np.ndarray, queries: np.ndarray, *, l2: float = 1.0, folds: int = 5,
             seed: int = 0, names: tuple[str, ...] | None = None,
             verify_veto: float | None = None) -> np.ndarray:
    """Each row's probability from a model fitted on the other folds (folds by query id).

    Returns
    -------
    p : np.ndarray [shape=(n,)]
        NaN where a fold could not be fitted.
    """
    from dataclasses import replace

    from msdmatch.kernels.fusion import FEATURE_NAMES, fit_fusion, predict_proba

    uq, inv = np.unique(np.asarray(queries), return_inverse=True)
    fold = np.random.default_rng(seed).integers(0, folds, uq.size)[inv]
    p = np.full(len(y), np.nan)
    for f in range(folds):
        tr, te = fold != f, fold == f
        if te.any() and 0 < y[tr].sum() < tr.sum():
            m = fit_fusion(X[tr], y[tr], l2=l2, names=tuple(names or FEATURE_NAMES))
            p[te] = predict_proba(replace(m, verify_veto=verify_veto), X[te])
    return p


def decision_rates(top: Mapping, threshold: float) -> dict:
    """Rates of accepting each query's top-1 at ``threshold`` (see :func:`msdmatch.evaluation.metrics.decision_metrics`)."""
    from msdmatch.evaluation.metrics import decision_metrics

    m = decision_metrics(top["p"], top["correct"], top["no_match"], threshold=threshold)
    return {k: m[k] for k in ("false_accept_rate", "true_accept_rate", "precision", "recall")}


def cv_metrics(p: np.ndarray, rows: Mapping) -> dict:
    """Cross-validated figures of row probabilities ``p``: row ECE, and the top-1's AUC and ECE.

    Returns
    -------
    metrics : dict
        ``cv_ece`` (all verified rows), ``cv_top1_auc`` (correct top-1
        against the rest, by the top-1 confidence), ``cv_top1_ece``,
        ``cv_queries``, ``cv_no_match_queries``.
    """
    from msdmatch.evaluation.metrics import decision_metrics
    from msdmatch.kernels.fusion import expected_calibration_error

    ok = ~np.isnan(p)
    top = top1_table(np.where(ok, p, 0.0), rows)
    d = decision_metrics(top["p"], top["correct"], top["no_match"], threshold=0.5)
    return {"cv_ece": expected_calibration_error(p[ok], rows["y"][ok]), "cv_top1_auc": d["auc"],
            "cv_top1_ece": d["top1_ece"], "cv_queries": int(len(top["p"])),
            "cv_no_match_queries": int(top["no_match"].sum())}


def rescore(matches: Mapping, model) -> dict[str, np.ndarray]:
    """Recompute ``confidence`` of the verified rows with ``model`` and re-rank them, as ``match`` would.

    Parameters
    ----------
    matches : MATCHES table (dict of np.ndarray) with ``stage``
    model : FusionModel

    Returns
    -------
    table : dict of np.ndarray
        A copy; verified rows of each query re-ordered by the new confidence
        (ties: lower verify score) and given ranks 1..V; other rows keep
        their ranks and order after them.
    """
    from msdmatch.kernels.fusion import features_for, predict_proba

    t = {k: np.array(v, copy=True) for k, v in matches.items()}
    if "stage" not in t:
        raise ParameterError("MATCHES lacks the 'stage' column; rescoring needs `msdmatch match` output")
    ver = np.asarray(t["stage"]).astype(str) == "verify"
    q = np.asarray(t["query_id"]).astype(str)
    conf = np.asarray(t["confidence"], dtype=np.float64).copy()
    if ver.any():
        sub = {k: np.asarray(v)[ver] for k, v in t.items()}
        conf[ver] = predict_proba(model, features_for(sub, groups=q[ver], names=model.feature_names))
    t["confidence"] = conf
    v = np.nan_to_num(np.asarray(t["verify_score"], dtype=np.float64), nan=np.inf)
    rank = np.asarray(t["rank"], dtype=np.int64)
    # per query: verified rows by (-confidence, verify score), then the rest by old rank
    _, inv = np.unique(q, return_inverse=True)
    key2 = np.where(ver, -np.nan_to_num(conf, nan=-np.inf), np.inf)
    order = np.lexsort((rank, np.where(ver, v, 0.0), key2, ~ver, inv))
    out = {k: np.asarray(val)[order] for k, val in t.items()}
    inv_o = inv[order]
    start = np.r_[True, inv_o[1:] != inv_o[:-1]]
    idx = np.arange(len(order))
    first = np.maximum.accumulate(np.where(start, idx, 0))
    out["rank"] = (idx - first + 1).astype(np.int64)
    return out


def _read_truth_rows(path: str, split: str) -> dict[str, np.ndarray]:
    import csv

    from msdmatch.evaluation.metrics import read_truth

    with open(path, encoding="utf-8", errors="replace") as fh:
        header = next(csv.reader(fh), [])
    truth = read_truth(path, keep_split=split if "split" in header else None)
    return truth


def _is_fusion_file(path: str) -> bool:
    """True for a JSON file that a fusion model was saved to."""
    import json

    try:
        with open(path) as fh:
            d = json.load(fh)
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and {"format_version", "feature_names"} <= set(d)


def calibrate_files(matches_paths: str | Sequence[str], truth_paths: str | Sequence[str], *,
                    split: str = "valid", out: str, target_false_accept: float = TARGET_FALSE_ACCEPT,
                    verify_veto: float | None = None):
    """Fit on MATCHES files and their truth; write the model to ``out``.

    Parameters
    ----------
    matches_paths : str or sequence of str
        One MATCHES per run (e.g. the open-set runs ``a`` and ``b``).
    truth_paths : str or sequence of str
        One truth for all runs, or one per run: a ``truth.csv`` (an empty
        ``track_id`` = no match) or a ``split.csv`` (then only rows of
        ``split`` are used).
    verify_veto : float, optional
        As in :func:`fit_from_matches`.
    """
    from msdmatch.evaluation.metrics import read_matches
    from msdmatch.io.outputs import check_out_file

    # checked before any work: a fusion model msdmatch wrote may be refitted in place, nothing else
    check_out_file(out, suffixes=(".json",), ours=_is_fusion_file, overwrite=True, what="fusion model")
    mp = [matches_paths] if isinstance(matches_paths, str) else list(matches_paths)
    tp = [truth_paths] if isinstance(truth_paths, str) else list(truth_paths)
    if len(tp) not in (1, len(mp)):
        raise ParameterError(f"{len(mp)} MATCHES but {len(tp)} --truth files; give one --truth for all "
                             "or one per MATCHES, in the same order")
    truths = [_read_truth_rows(p, split) for p in tp]
    if len(truths) == 1:
        truths = truths * len(mp)
    model = fit_from_matches([read_matches(p) for p in mp], truths, target_false_accept=target_false_accept,
                             verify_veto=verify_veto)
    model.save(out)
    return model
